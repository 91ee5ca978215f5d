"""SF-Med's dropout rate (§4.1: "a dropout rate of 0.1") as the option ``sfmed_dropout``.

The rate goes into the model config's dropout fields before LLaMA-Factory builds a model for training, so every
module reads it when it is constructed. Which fields a model honours depends on its architecture: Qwen2, Qwen2-MoE,
Qwen3 and Qwen3-MoE in transformers 5.6 have one, ``attention_dropout`` (dropout on the attention probabilities,
applied in train mode by the eager, SDPA and flash-attention paths alike); their hidden states and MLPs have no
dropout. An architecture not in :data:`DROPOUT_FIELDS` is refused rather than trained without the rate asked for.

The attention modules keep the rate they were built with; the config object is set back to the checkpoint's values
right after construction, so the saved checkpoint (and the next stage that loads it, or inference) does not inherit
a training-time regularisation it did not ask for.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

# model_type -> the config fields its modeling code reads as dropout rates (transformers 5.6)
DROPOUT_FIELDS: dict[str, tuple[str, ...]] = {
    "qwen2": ("attention_dropout",),
    "qwen2_moe": ("attention_dropout",),
    "qwen3": ("attention_dropout",),
    "qwen3_moe": ("attention_dropout",),
}

# (rate, [(config, field, checkpoint value), ...]) while a training model is being loaded
_REQUEST: ContextVar[tuple[float, list[tuple[Any, str, Any]]] | None] = ContextVar("sfmed_dropout", default=None)


def dropout_fields(config: Any, source: str) -> tuple[str, ...]:
    model_type = getattr(config, "model_type", None)
    if model_type not in DROPOUT_FIELDS:
        raise ValueError(
            f"sfmed_dropout: the dropout fields of model type {model_type!r} ({source}) are not known; sfmed_dropout "
            f"sets them for {', '.join(DROPOUT_FIELDS)}. Remove sfmed_dropout, or set the model's own dropout "
            "options in its config.json."
        )
    return DROPOUT_FIELDS[model_type]


def set_dropout(config: Any, rate: float, source: str) -> list[tuple[Any, str, Any]]:
    """Set ``rate`` in every dropout field of ``config``; returns (config, field, previous value) for each."""
    changed = []
    for name in dropout_fields(config, source):
        changed.append((config, name, getattr(config, name)))
        setattr(config, name, rate)
    return changed


def wrap_load_model(load_model: Callable[..., Any], log: Callable[[str], None]) -> Callable[..., Any]:
    """``load_model(tokenizer, model_args, finetuning_args, is_trainable, add_valuehead)`` that builds a trainable
    model with ``finetuning_args.sfmed_dropout`` in its config (through :func:`wrap_patch_config`)."""
    if getattr(load_model, "sfmed_lf_wrapped", False):
        return load_model
    signature = inspect.signature(load_model)

    @functools.wraps(load_model)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        rate = getattr(bound.arguments["finetuning_args"], "sfmed_dropout", None)
        if rate is None or not bound.arguments["is_trainable"]:
            return load_model(*args, **kwargs)
        changed: list[tuple[Any, str, Any]] = []
        token = _REQUEST.set((rate, changed))
        try:
            model = load_model(*args, **kwargs)
        finally:
            _REQUEST.reset(token)
        if not changed:
            raise RuntimeError("sfmed_dropout: LLaMA-Factory built the model without its patch_config step.")
        # the modules keep the rate; the configs the model holds (from_pretrained copies ours) and saves get the
        # checkpoint's values back
        configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
        for _, name, previous in changed:
            for config in configs.values():
                if hasattr(config, name):
                    setattr(config, name, previous)
        fields = ", ".join(f"{name} = {rate} (checkpoint: {previous})" for _, name, previous in changed)
        log(f"sfmed_dropout: {fields} in the model being trained; its saved config keeps the checkpoint's values.")
        return model

    wrapper.sfmed_lf_wrapped = True  # type: ignore[attr-defined]
    return wrapper


def wrap_patch_config(patch_config: Callable[..., Any]) -> Callable[..., Any]:
    """``patch_config(config, tokenizer, model_args, ...)`` that also sets the requested dropout rate."""
    if getattr(patch_config, "sfmed_lf_wrapped", False):
        return patch_config

    @functools.wraps(patch_config)
    def wrapper(config: Any, *args: Any, **kwargs: Any) -> Any:
        result = patch_config(config, *args, **kwargs)
        request = _REQUEST.get()
        if request is not None:
            model_args = args[1] if len(args) > 1 else kwargs.get("model_args")
            request[1].extend(set_dropout(config, request[0], getattr(model_args, "model_name_or_path", "model")))
        return result

    wrapper.sfmed_lf_wrapped = True  # type: ignore[attr-defined]
    return wrapper
