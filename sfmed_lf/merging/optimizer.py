"""AdamW with online model merging (OnDARE / OnTIES), see ``sparsify.py`` for the equations.

Per parameter and step:
  1. Adam moments and the bias-corrected update delta, computed exactly as ``torch.optim.AdamW`` does;
  2. decoupled weight decay theta *= 1 - lr * wd, as AdamW (the learning-rate schedule only scales delta);
  3. delta' = sparsify(delta) with a fresh mask (OnDARE) or top-p by magnitude (OnTIES);
  4. theta += (1 - alpha) * delta' + alpha * tau', where tau' is the sparsified task vector built once; OnTIES
     first drops the entries of delta' and tau' whose sign disagrees with the elected sign.

With p = 1 and alpha = 0, OnDARE is AdamW. Persistent memory beyond AdamW's moments is only the kept entries of
tau' (see ``sparse_delta.py``). tau' is built lazily at a parameter's first step, unless a resumed optimizer state
already holds it, and the source checkpoints are released once every parameter has it.

Every parameter group carries ``param_names`` (PyTorch's own key for named parameters): names key the random
masks and locate tau in the checkpoints. When a sharded optimizer (DeepSpeed ZeRO) replaces the parameters by flat
partitions, :meth:`OnlineMergingAdamW.register_layouts` tells which parameter slices each partition holds
(``layout.py``); masks, top-p selection and tau then work per slice, keyed by the full parameter's name and offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig
from sfmed_lf.merging.layout import Segment, whole_parameter
from sfmed_lf.merging.sparse_delta import SparseDelta
from sfmed_lf.merging.sparsify import elect_signs, sparsify_
from sfmed_lf.merging.task_vector import TaskVectorSource


def update_stream(step: int) -> str:
    return f"update-{step}"


def merge_update_(
    flat_param: torch.Tensor,
    flat_update: torch.Tensor,
    tau: SparseDelta,
    config: OnlineMergingConfig,
    *,
    segments: list[Segment],
    step: int,
) -> None:
    """theta += (1 - alpha) * sparsify(delta) + alpha * tau' on a flat tensor; ``flat_update`` is consumed.

    Each segment (a slice of one parameter) is sparsified on its own; entries outside every segment (alignment
    padding of sharded partitions) carry no gradient and are left as they are."""
    for segment in segments:
        update_slice = flat_update[segment.start : segment.start + segment.length]
        sparsify_(update_slice, config, name=segment.name, stream=update_stream(step), offset=segment.param_offset)
    tau_positions, tau_values = tau.positions(), tau.values
    if config.method is MergeMethod.ONTIES and tau.nnz:
        update_at_tau = flat_update[tau_positions].to(tau_values.dtype)
        elected = elect_signs(tau_values, update_at_tau)
        flat_update.index_fill_(0, tau_positions[update_at_tau * elected < 0], 0)
        tau_agrees = tau_values * elected > 0
        tau_positions, tau_values = tau_positions[tau_agrees], tau_values[tau_agrees]
    flat_param.add_(flat_update, alpha=1.0 - config.alpha)
    if config.alpha and tau_values.numel():
        flat_param.index_add_(0, tau_positions, tau_values.to(flat_param.dtype), alpha=config.alpha)


class OnlineMergingAdamW(Optimizer):
    """AdamW whose updates are sparsified and merged with tau' at every step (OnDARE / OnTIES)."""

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        config: OnlineMergingConfig,
        task_vector_source: TaskVectorSource | None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid AdamW hyper-parameters lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        for index, group in enumerate(self.param_groups):
            names = group.get("param_names")
            if names is None or len(names) != len(group["params"]):
                raise ValueError(f"param group {index} needs `param_names` aligned with its `params`.")
        self.config = config
        self._task_vector_source = task_vector_source
        self._segments: dict[int, list[Segment]] = {
            id(param): whole_parameter(name, param)
            for group in self.param_groups
            for param, name in zip(group["params"], group["param_names"], strict=True)
        }
        self._tau_pending = set(self._segments)
        self._layout_resolver: Callable[[], dict[int, list[Segment]]] | None = None

    def register_layouts(self, layouts: dict[int, list[Segment]]) -> None:
        """Declare the tensors a sharded optimizer steps instead of the parameters: id(tensor) -> its segments."""
        self._segments = dict(layouts)
        built = {id(p) for p, state in self.state.items() if SparseDelta.STATE_KEYS[0] in state}
        self._tau_pending = set(layouts) - built

    def set_layout_resolver(self, resolver: Callable[[], dict[int, list[Segment]]]) -> None:
        """Layouts that only exist once training starts (DeepSpeed builds its partitions after the optimizer):
        ``resolver`` is called at the first step that meets an unknown tensor."""
        self._layout_resolver = resolver

    def _segments_for(self, param: torch.Tensor) -> list[Segment]:
        if id(param) not in self._segments and self._layout_resolver is not None:
            self.register_layouts(self._layout_resolver())
            self._layout_resolver = None
        try:
            return self._segments[id(param)]
        except KeyError:
            raise RuntimeError(
                f"online merging: the optimizer is stepping a tensor of shape {tuple(param.shape)} whose parameter "
                "layout is unknown; a sharded optimizer must call register_layouts() first."
            ) from None

    def _task_vector(self, param: torch.Tensor, segments: list[Segment], state: dict[str, Any]) -> SparseDelta:
        if SparseDelta.STATE_KEYS[0] not in state:
            if self._task_vector_source is None:
                names = ", ".join(sorted({segment.name for segment in segments}))
                raise RuntimeError(f"online merging: no task vector for {names} and no source to build it from.")
            positions, values = [], []
            for segment in segments:
                part = self._task_vector_source.sparse_slice(
                    segment.name,
                    self.config,
                    offset=segment.param_offset,
                    numel=segment.length,
                    device=param.device,
                    dtype=param.dtype,
                )
                positions.append(part.positions() + segment.start)
                values.append(part.values)
            no_entries = torch.empty(0, device=param.device)
            tau = SparseDelta.from_positions(
                param.numel(),
                torch.cat(positions) if positions else no_entries.long(),
                torch.cat(values) if values else no_entries.to(param.dtype),
            )
            state.update(tau.to_state())
        self._tau_pending.discard(id(param))
        return SparseDelta.from_state(state, param.numel())

    def _release_source_when_done(self) -> None:
        if not self._tau_pending and self._task_vector_source is not None:
            self._task_vector_source.close()
            self._task_vector_source = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("OnlineMergingAdamW does not support sparse gradients.")
                state = self.state[param]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                segments = self._segments_for(param)
                tau = self._task_vector(param, segments, state)
                state["step"] += 1
                step = int(state["step"].item())
                update = self._adam_update(param.grad, state, step, lr, beta1, beta2, eps)
                if weight_decay:
                    param.mul_(1.0 - lr * weight_decay)
                merge_update_(param.view(-1), update.view(-1), tau, self.config, segments=segments, step=step)
        self._release_source_when_done()
        return loss

    @staticmethod
    def _adam_update(
        grad: torch.Tensor, state: dict[str, Any], step: int, lr: float, beta1: float, beta2: float, eps: float
    ) -> torch.Tensor:
        """AdamW's step, as torch.optim.AdamW computes it, returned instead of applied."""
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        return torch.mul(exp_avg, -lr / bias_correction1).div_(denom)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch casts every state tensor of a float parameter to its dtype; tau's positions must stay integers
        (float32 would also round chunk offsets above 2**24), so they are put back from the saved dict."""
        saved_ids = [param_id for group in state_dict["param_groups"] for param_id in group["params"]]
        current = [param for group in self.param_groups for param in group["params"]]
        super().load_state_dict(state_dict)
        for param_id, param in zip(saved_ids, current, strict=True):
            saved = state_dict["state"].get(param_id, {})
            for key in SparseDelta.INTEGER_STATE_KEYS:
                if key in saved:
                    self.state[param][key] = saved[key].to(device=param.device)

    def persistent_merge_bytes(self) -> int:
        """Bytes held for tau' on this rank (what online merging keeps beyond AdamW's state)."""
        return sum(
            state[key].numel() * state[key].element_size()
            for state in self.state.values()
            for key in SparseDelta.STATE_KEYS
            if key in state
        )

    def merged_numel(self) -> int:
        """Elements this rank's optimizer updates (all trainable parameters, or this rank's partitions)."""
        return sum(state["exp_avg"].numel() for state in self.state.values() if "exp_avg" in state)
