"""Saving full-tuned reward models whose input and output embeddings are tied (Qwen2.5-0.5B/1.5B/3B, the tiny
model): LLaMA-Factory 0.9.5's ``PairwiseTrainer._save`` drops shared tensors by ``id()``, but ``state_dict()``
returns a new tensor object per key, so nothing is dropped and safetensors refuses the shared storage (and
transformers 5 no longer offers ``save_safetensors: false``). Shared tensors are found by storage here; of each
group the tie source is kept (``model.embed_tokens.weight``) and the tie targets the model declares
(``lm_head.weight``) are dropped, which ``save_pretrained`` and ``from_pretrained`` expect of a tied model.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Any


def tied_targets(model: Any) -> set[str]:
    """Names the model re-creates by tying (``_tied_weights_keys``: a dict in transformers 5, a list before)."""
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys.keys() if isinstance(keys, dict) else keys)


def drop_shared_tensors(state_dict: dict[str, Any], targets: set[str]) -> dict[str, Any]:
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, tensor in state_dict.items():
        if hasattr(tensor, "untyped_storage"):
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            groups[key].append(name)
    dropped = set()
    for names in groups.values():
        if len(names) < 2:
            continue
        sources = sorted(name for name in names if not any(name.endswith(target) for target in targets))
        keep = sources[0] if sources else sorted(names)[0]
        dropped.update(name for name in names if name != keep)
    return {name: tensor for name, tensor in state_dict.items() if name not in dropped}


def save_without_shared_tensors(save: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``PairwiseTrainer._save(self, output_dir=None, state_dict=None)``."""
    if getattr(save, "sfmed_lf_wrapped", False):
        return save

    @functools.wraps(save)
    def wrapper(self: Any, output_dir: str | None = None, state_dict: dict | None = None) -> Any:
        model = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            state_dict = model.state_dict()
        inner = getattr(model, "pretrained_model", model)
        return save(self, output_dir, drop_shared_tensors(state_dict, tied_targets(inner)))

    wrapper.sfmed_lf_wrapped = True  # type: ignore[attr-defined]
    return wrapper
