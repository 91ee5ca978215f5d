"""AdamW with online model merging (OnDARE / OnTIES), see ``sparsify.py`` for the equations.

Per step and parameter group:
  1. Adam's moments of all parameters at once (foreach kernels), as ``torch.optim.AdamW`` computes them;
  2. decoupled weight decay theta *= 1 - lr * wd, as AdamW (the learning-rate schedule only scales delta);
then per parameter, with delta = -lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) the AdamW update of this step:
  3. the positions delta' keeps: a fresh keyed Bernoulli(p) mask (OnDARE), where delta is then computed at the kept
     positions only, or exactly the top-p of |delta| (OnTIES), which needs delta densely;
  4. OnTIES: where tau' and delta' both have entries, the sign of tau' + delta' is elected and the entries of either
     that disagree are dropped;
  5. theta += (1 - alpha) * delta' + alpha * tau', as two scatter-adds of kept entries.
With p = 1 the step is dense and uses AdamW's own arithmetic: p = 1, alpha = 0 is ``torch.optim.AdamW`` bit for bit.

Persistent memory beyond AdamW's moments is only the kept entries of tau' (``sparse_delta.py``), built lazily at a
parameter's first step from the two checkpoints, which are released once every parameter has its tau'. tau' is not
part of the optimizer's state dict: it is a pure function of the checkpoints, the seed and the layout, rebuilt after a
resume, so the state dict holds exactly AdamW's tensors, shaped like the parameters, which every checkpointing path
(torch, DeepSpeed, FSDP1 ``optim_state_dict``, ``torch.distributed.checkpoint``) handles as it handles AdamW's.

Every parameter group carries ``param_names`` (PyTorch's own key for named parameters): names key the random masks
and locate tau in the checkpoints. Sharded training hands the optimizer slices of parameters instead (``layout.py``):
DTensor parameters (FSDP2) describe their slice themselves; other layouts (DeepSpeed ZeRO, FSDP1) are declared with
:meth:`OnlineMergingAdamW.register_layouts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from sfmed_lf.merging import kernels
from sfmed_lf.merging.arrays import Array, Ops, ops_for
from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig, Rescale
from sfmed_lf.merging.layout import Segment, checkpoint_name, dtensor_segments, whole_parameter
from sfmed_lf.merging.sparse_delta import SparseDelta
from sfmed_lf.merging.sparsify import (
    DenseMagnitudes,
    TopK,
    candidate_bound,
    elect_signs,
    keep_count,
    kept_positions,
    rescale_factor,
    top_k,
)
from sfmed_lf.merging.task_vector import TaskVectorSource


def update_stream(step: int) -> str:
    return f"update-{step}"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (FSDP2), the tensor itself otherwise."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "to_local") and hasattr(tensor, "placements")


class Scratch:
    """Reusable dense buffers, one per (dtype, device), for the duration of a step: a fresh allocation per parameter
    would page-fault its memory in again every time."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buffer = self._buffers.get((dtype, device))
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[dtype, device] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel]

    def like(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.take(tensor.numel(), tensor.dtype, tensor.device)


def adam_denominator(
    exp_avg_sq: torch.Tensor, bias_correction2_sqrt: float, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """sqrt(v) / sqrt(bc2) + eps, in the order torch.optim.AdamW computes it."""
    return torch.sqrt(exp_avg_sq, out=out).div_(bias_correction2_sqrt).add_(eps)


def merge_adam_step_(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    tau: SparseDelta,
    config: OnlineMergingConfig,
    *,
    segments: list[Segment],
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    scratch: Scratch | None = None,
) -> None:
    """theta += (1 - alpha) * delta' + alpha * tau' on flat tensors, from Adam's moments already updated for ``step``.

    Each segment (a slice of one parameter) is sparsified on its own; entries outside every segment (alignment
    padding of sharded partitions) carry no gradient and are left as they are."""
    beta1, beta2 = betas
    step_size = lr / (1.0 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    scratch = scratch or Scratch()
    if config.keep_prob >= 1.0:
        _merge_dense_(param, exp_avg, exp_avg_sq, tau, config, step_size, bias_correction2_sqrt, eps, scratch)
        return
    ops = ops_for(param)
    param_values = ops.view(param)
    merge = _SparseMerge(ops, param_values, exp_avg, exp_avg_sq, config, step_size, bias_correction2_sqrt, eps, scratch)
    bases, counts, low_positions, tau_values = tau.arrays(ops)
    # OnDARE's fused path needs no positions of tau' (it adds tau' from its chunked form)
    fused_ondare = merge.fused and config.method is MergeMethod.ONDARE
    tau_positions = None if fused_ondare else tau.positions(ops)
    for segment in segments:
        merge.add_segment(segment, update_stream(step), tau_positions, tau_values)
    if not config.alpha or merge.tau_added:
        return
    if fused_ondare:
        kernels.add_chunked_(param_values, bases, counts, low_positions, tau_values, config.alpha)
        return
    tau_update = merge.drop_tau_losers_(tau_values * config.alpha)
    ops.add_at_(param_values, tau_positions, ops.astype(tau_update, param_values))


def _merge_dense_(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    tau: SparseDelta,
    config: OnlineMergingConfig,
    step_size: float,
    bias_correction2_sqrt: float,
    eps: float,
    scratch: Scratch,
) -> None:
    """p = 1: nothing is dropped, delta is AdamW's own (addcdiv); OnTIES still elects signs against tau'."""
    tau_positions, tau_values = tau.positions(), tau.values
    denominator = adam_denominator(exp_avg_sq, bias_correction2_sqrt, eps, out=scratch.like(exp_avg_sq))
    if config.method is MergeMethod.ONTIES and tau.nnz:
        update_at_tau = exp_avg[tau_positions] / denominator[tau_positions] * -step_size
        update_disagrees, tau_agrees = _disagreements(tau_values, update_at_tau)
        denominator.index_fill_(0, tau_positions[update_disagrees], math.inf)  # m / inf drops the entry exactly
        tau_positions, tau_values = tau_positions[tau_agrees], tau_values[tau_agrees]
    param.addcdiv_(exp_avg, denominator, value=-step_size * (1.0 - config.alpha))
    if config.alpha and tau_values.numel():
        param.scatter_add_(0, tau_positions, (tau_values * config.alpha).to(param.dtype))


class _SparseMerge:
    """theta += (1 - alpha) * delta' with delta' = rescale * sparsify(delta), segment by segment, on an ``ops``
    backend (``arrays.py``); for OnTIES, also the sign election against tau': entries of delta' that lose it are
    dropped, those of tau' are marked (tau' is added afterwards, by the caller).

    On CPU numpy views (float32/float64), |delta|, the selection above a bound and OnDARE's update are fused loops
    (``kernels.py``); elsewhere (CUDA, half precision) they are torch operations."""

    def __init__(
        self,
        ops: Ops,
        param: Array,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        config: OnlineMergingConfig,
        step_size: float,
        bias_correction2_sqrt: float,
        eps: float,
        scratch: Scratch,
    ) -> None:
        self.ops, self.param, self.config, self.device = ops, param, config, exp_avg.device
        self.exp_avg, self.exp_avg_sq = ops.view(exp_avg), ops.view(exp_avg_sq)
        self.step_size, self.bias_correction2_sqrt, self.eps = step_size, bias_correction2_sqrt, eps
        self.onties = config.method is MergeMethod.ONTIES
        self.rescale = config.applied_rescale
        # fused loops on CPU numpy views; the L1 rescale (norms of every kept entry before the election) stays unfused
        self.fused = ops.name == "numpy" and self.rescale is not Rescale.L1
        self.magnitudes = self.above_mask = None
        if self.onties or self.rescale is Rescale.L1:  # |delta| * bc1 / lr densely, to rank or to sum
            self.magnitudes = ops.view(scratch.like(exp_avg_sq))
            ops.sqrt(self.exp_avg_sq, out=self.magnitudes)  # AdamW's arithmetic, as in adam_denominator
            if self.fused:
                kernels.magnitudes_from_roots_(self.exp_avg, self.magnitudes, bias_correction2_sqrt, eps)
            else:
                self.magnitudes /= bias_correction2_sqrt
                self.magnitudes += eps
                ops.divide(self.exp_avg, self.magnitudes, out=self.magnitudes)
                ops.abs_(self.magnitudes)
                self.above_mask = ops.view(scratch.take(exp_avg.numel(), torch.bool, exp_avg.device))
        self.tau_losers: list[Array] = []
        self.tau_added = False  # the fused OnTIES path adds tau' segment by segment

    def _segment_magnitudes(self, segment: Segment) -> DenseMagnitudes:
        window = slice(segment.start, segment.start + segment.length)
        return DenseMagnitudes(self.ops, self.magnitudes[window], None if self.fused else self.above_mask[window])

    def add_segment(self, segment: Segment, stream: str, tau_positions: Array, tau_values: Array) -> None:
        ops, alpha = self.ops, self.config.alpha
        if self.onties and self.fused:
            self._add_onties_fused(segment, tau_positions, tau_values)
            return
        if self.onties:
            magnitudes = self._segment_magnitudes(segment)
            selection = top_k(magnitudes, keep_count(segment.length, self.config.keep_prob))
            positions = selection.positions + segment.start if segment.start else selection.positions
            kept_magnitudes = selection.values
        else:
            mask = kept_positions(
                self.config,
                numel=segment.length,
                name=segment.name,
                stream=stream,
                offset=segment.param_offset,
                param_numel=segment.param_numel,
                device=self.device,
            )
            if self.fused:  # OnDARE with a rescale that needs no norms: one fused pass
                factor = -self.step_size * rescale_factor(self.config, None, None) * (1.0 - alpha)
                kernels.add_update_at_(
                    self.param,
                    self.exp_avg,
                    self.exp_avg_sq,
                    ops.view(mask),
                    segment.start,
                    self.bias_correction2_sqrt,
                    self.eps,
                    factor,
                )
                return
            positions = ops.view(mask) + segment.start if segment.start else ops.view(mask)
            kept_magnitudes = None if self.magnitudes is None else ops.take(self.magnitudes, positions)
        scale = rescale_factor(self.config, *self._l1_norms(segment, kept_magnitudes))
        factor = -self.step_size * scale * (1.0 - alpha)  # (1 - alpha) * delta' = factor * m / (sqrt(v) ...)
        if kept_magnitudes is None:  # OnDARE: delta at the kept positions only
            denominator = ops.sqrt(ops.take(self.exp_avg_sq, positions))
            denominator /= self.bias_correction2_sqrt
            denominator += self.eps
            values = ops.take(self.exp_avg, positions)
            values /= denominator
        else:
            if self.onties and len(tau_positions):
                self._elect(segment, selection, magnitudes, kept_magnitudes, scale, tau_positions, tau_values)
            values = ops.copysign(kept_magnitudes, ops.take(self.exp_avg, positions))
        values *= factor
        ops.add_at_(self.param, positions, ops.astype(values, self.param))

    def _add_onties_fused(self, segment: Segment, tau_positions: Array, tau_values: Array) -> None:
        """The steps of the OnTIES branch of :meth:`add_segment`, then tau' on this segment, in one fused call."""
        start, end = segment.start, segment.start + segment.length
        window = slice(start, end)
        magnitudes = self.magnitudes[window]
        k = keep_count(segment.length, self.config.keep_prob)
        low, high = self.ops.index_range(tau_positions, start, end)
        scale = rescale_factor(self.config, None, None)
        kernels.merge_onties_(
            magnitudes,
            self.exp_avg[window],
            self.param[window],
            k,
            candidate_bound(DenseMagnitudes(self.ops, magnitudes), k),
            tau_positions[low:high] - start,
            tau_values[low:high],
            vote_factor=-self.step_size * scale,
            update_factor=-self.step_size * scale * (1.0 - self.config.alpha),
            alpha=self.config.alpha,
        )
        self.tau_added = True

    def _l1_norms(self, segment: Segment, kept_magnitudes: Array | None) -> tuple[float | None, float | None]:
        if self.rescale is not Rescale.L1:
            return None, None
        dense = self.magnitudes[segment.start : segment.start + segment.length]
        return self.ops.sum64(dense), self.ops.sum64(kept_magnitudes)

    def _elect(
        self,
        segment: Segment,
        selection: TopK,
        magnitudes: DenseMagnitudes,
        kept_magnitudes: Array,
        scale: float,
        tau_positions: Array,
        tau_values: Array,
    ) -> None:
        """TIES where tau' and delta' both have entries in this segment (elsewhere the one present wins): zero the
        kept magnitudes of the delta' entries that lose the election, and remember the tau' entries that lose it."""
        ops = self.ops
        low, high = ops.index_range(tau_positions, segment.start, segment.start + segment.length)
        if low == high:
            return
        at = tau_positions[low:high]
        relative = at - segment.start if segment.start else at
        magnitudes_at = magnitudes.at(relative)
        both = ops.flatnonzero(selection.contains(relative, magnitudes_at))
        if not len(both):
            return
        update = ops.copysign(ops.take(magnitudes_at, both), ops.take(self.exp_avg, ops.take(at, both)))
        update *= -self.step_size * scale
        update_disagrees, tau_agrees = _disagreements(ops.take(tau_values[low:high], both), update)
        losers = ops.take(ops.take(relative, both), ops.flatnonzero(update_disagrees))
        kept_magnitudes[ops.searchsorted(selection.positions, losers)] = 0
        self.tau_losers.append(both[~tau_agrees] + low)

    def drop_tau_losers_(self, tau_values: Array) -> Array:
        """``tau_values`` (a copy) with the entries that lost an election zeroed."""
        if self.tau_losers:
            tau_values[self.ops.concat(self.tau_losers)] = 0
        return tau_values


def _disagreements(tau_values: Array, update_at_tau: Array) -> tuple[Array, Array]:
    """TIES at tau's entries: (update entries whose sign loses the election, tau entries whose sign wins it).
    Where only one of the two has an entry (the other is 0), its own sign wins."""
    elected = elect_signs(tau_values, update_at_tau)
    return update_at_tau * elected < 0, tau_values * elected > 0


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
        self._task_vectors: dict[torch.Tensor, SparseDelta] = {}
        self._segments: dict[int, list[Segment]] = {
            id(param): whole_parameter(name, param)
            for group in self.param_groups
            for param, name in zip(group["params"], group["param_names"], strict=True)
            if not _is_dtensor(param)
        }
        # Whole parameters as far as the optimizer knows; checked against the checkpoint's size when tau is built.
        self._assumed_whole = set(self._segments)
        self._registered: set[int] = set()
        self._layout_resolver: Callable[[], dict[int, list[Segment]]] | None = None

    def register_layouts(self, layouts: dict[int, list[Segment]]) -> None:
        """Declare the tensors a sharded optimizer steps instead of the parameters: id(tensor) -> its segments."""
        self._segments = {
            key: sorted(
                (Segment(checkpoint_name(s.name), s.start, s.length, s.param_offset, s.param_numel) for s in segments),
                key=lambda segment: segment.start,
            )
            for key, segments in layouts.items()
        }
        self._registered = set(layouts)
        self._assumed_whole = set()

    def set_layout_resolver(self, resolver: Callable[[], dict[int, list[Segment]]]) -> None:
        """Layouts that only exist once training starts (DeepSpeed builds its partitions after the optimizer):
        ``resolver`` is called at the first step that meets an unknown tensor."""
        self._layout_resolver = resolver

    def _segments_for(self, param: torch.Tensor, name: str | None) -> list[Segment]:
        segments = self._segments.get(id(param))
        if segments is None and name is not None and _is_dtensor(param):
            segments = self._segments[id(param)] = dtensor_segments(name, param)
        if segments is None and self._layout_resolver is not None:
            self.register_layouts(self._layout_resolver())
            self._layout_resolver = None
            segments = self._segments.get(id(param))
        if segments is None:
            raise RuntimeError(
                f"online merging: the optimizer is stepping a tensor of shape {tuple(param.shape)} whose parameter "
                "layout is unknown; a sharded optimizer must call register_layouts() first."
            )
        return segments

    def _task_vector(self, param: torch.Tensor, local: torch.Tensor, segments: list[Segment]) -> SparseDelta:
        tau = self._task_vectors.get(param)
        if tau is not None:
            return tau
        names = ", ".join(sorted({segment.name for segment in segments}))
        if self._task_vector_source is None:
            raise RuntimeError(f"online merging: no task vector for {names} and no source to build it from.")
        assumed_whole = id(param) in self._assumed_whole
        if assumed_whole and (expected := self._task_vector_source.numel(segments[0].name)) != local.numel():
            raise RuntimeError(
                f"online merging: parameter {names} has {local.numel()} elements in the optimizer but {expected} in "
                "theta_sft: a wrapper (FSDP?) hands the optimizer shards without declaring where they lie "
                "(register_layouts, or DTensor parameters). Masks and tau would be misplaced; refusing to guess."
            )
        positions, values = [], []
        for segment in segments:
            part = self._task_vector_source.sparse_slice(
                segment.name,
                self.config,
                offset=segment.param_offset,
                numel=segment.length,
                device=local.device,
                dtype=local.dtype,
            )
            positions.append(part.positions() + segment.start)
            values.append(part.values)
        no_entries = torch.empty(0, device=local.device)
        tau = self._task_vectors[param] = SparseDelta.from_positions(
            local.numel(),
            torch.cat(positions) if positions else no_entries.long(),
            torch.cat(values) if values else no_entries.to(local.dtype),
        )
        return tau

    def _release_source_when_done(self) -> None:
        """Close the checkpoints once every tensor has its tau': every registered partition (DeepSpeed steps one
        group at a time, showing the optimizer a single group) and every tensor of the current groups."""
        if self._task_vector_source is None:
            return
        built = {id(tensor) for tensor in self._task_vectors}
        if not self._registered <= built:
            return
        if all(
            id(param) in built or not _local(param).numel() for group in self.param_groups for param in group["params"]
        ):
            self._task_vector_source.close()
            self._task_vector_source = None

    def _state_for(self, param: torch.Tensor) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _is_state_initialization(self) -> bool:
        """torch.distributed.checkpoint's ``set_state_dict`` creates a fresh optimizer's state with one step at lr 0
        and all-zero gradients (``_init_optim_state``); tau' is added whatever the learning rate, so that step must
        create the state and leave the weights alone."""
        if self.state or any(float(group["lr"]) != 0.0 for group in self.param_groups):
            return False
        grads = [param.grad for group in self.param_groups for param in group["params"] if param.grad is not None]
        return bool(grads) and not any(bool(_local(grad).any()) for grad in grads)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._is_state_initialization():
            for group in self.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        self._state_for(param)
            return loss
        scratch = Scratch()
        for group in self.param_groups:
            self._step_group(group, scratch)
        self._release_source_when_done()
        return loss

    def _step_group(self, group: dict[str, Any], scratch: Scratch) -> None:
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        lr = float(lr)
        stepped = []
        # A sharded optimizer (DeepSpeed) replaces the group's parameters by flat partitions, whose layouts are
        # registered; the names then no longer line up, and are only needed for DTensor parameters (FSDP2).
        names = (
            group["param_names"] if len(group["param_names"]) == len(group["params"]) else [None] * len(group["params"])
        )
        for param, name in zip(group["params"], names, strict=True):
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("OnlineMergingAdamW does not support sparse gradients.")
            local = _local(param)
            if local.numel():  # a shard may hold no element of a parameter
                stepped.append((param, name, local, _local(param.grad), self._state_for(param)))
        if not stepped:
            return
        locals_ = [local for _, _, local, _, _ in stepped]
        grads = [grad for _, _, _, grad, _ in stepped]
        exp_avgs = [_local(state["exp_avg"]) for *_, state in stepped]
        exp_avg_sqs = [_local(state["exp_avg_sq"]) for *_, state in stepped]
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        if weight_decay:
            torch._foreach_mul_(locals_, 1.0 - lr * weight_decay)
        step_counts = [state["step"] for *_, state in stepped]
        torch._foreach_add_(step_counts, 1.0)
        for (param, name, local, _, state), exp_avg, exp_avg_sq in zip(stepped, exp_avgs, exp_avg_sqs, strict=True):
            segments = self._segments_for(param, name)
            merge_adam_step_(
                local.view(-1),
                exp_avg.view(-1),
                exp_avg_sq.view(-1),
                self._task_vector(param, local, segments),
                self.config,
                segments=segments,
                step=int(state["step"].item()),
                lr=lr,
                betas=(beta1, beta2),
                eps=eps,
                scratch=scratch,
            )

    def persistent_merge_bytes(self) -> int:
        """Bytes held for tau' on this rank (what online merging keeps beyond AdamW's state)."""
        return sum(tau.nbytes() for tau in self._task_vectors.values())

    def merged_numel(self) -> int:
        """Elements this rank's optimizer updates (all trainable parameters, or this rank's partitions)."""
        return sum(_local(state["exp_avg"]).numel() for state in self.state.values() if "exp_avg" in state)
