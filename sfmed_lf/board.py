"""LLaMA-Board additions: SF-Med model entries, the project's dataset_info.json, visible dataset errors.

- Model entries (``SF-Med-Tiny-Chat`` = the embedded tiny model at ``models/sfmed-tiny``, ``SF-Med-7B-Chat`` = the
  recipe's DPO output) whose default template is ``sfmed``; paths are relative to where the Board is started.
- Started from a directory that holds ``dataset_info.json`` but no ``data/dataset_info.json`` (this project's
  layout), the Board's dataset directory defaults to ``.`` instead of ``data``.
- A dataset_info.json that exists but cannot be read shows its path and the error under the Dataset dropdown
  (the dropdown's info line), instead of an unexplained empty list. Not a toast: the Board lists datasets on a
  non-queued event (``dataset.focus(..., queue=False)``), where Gradio prints ``gr.Warning`` to the console only.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sfmed_lf.templates import SINGLE_TURN_TEMPLATE

SFMED_MODELS = {
    "SF-Med-Tiny-Chat": "models/sfmed-tiny",
    "SF-Med-7B-Chat": "saves/sfmed-7b/dpo",
}
DATASET_INFO = "dataset_info.json"


def register_models(constants: ModuleType) -> str:
    constants.register_model_group(
        models={name: {constants.DownloadSource.DEFAULT: path} for name, path in SFMED_MODELS.items()},
        template=SINGLE_TURN_TEMPLATE,
    )
    return f"model entries {', '.join(SFMED_MODELS)} (template {SINGLE_TURN_TEMPLATE})"


def project_dataset_dir(default: str, cwd: Path | None = None) -> str:
    cwd = cwd or Path.cwd()
    if (cwd / DATASET_INFO).is_file() and not (cwd / default / DATASET_INFO).is_file():
        return "."
    return default


def broken_dataset_info_message(dataset_dir: str) -> str | None:
    """Why ``dataset_dir``'s dataset_info.json cannot be used, or None when it is fine or simply absent."""
    path = os.path.join(dataset_dir, DATASET_INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path} cannot be read: {error}"
    if not isinstance(content, dict):
        return f"{path} must hold a JSON object of dataset name -> definition, not {type(content).__name__}."
    return None


def with_visible_errors(list_datasets: Callable[..., Any], default_dir: str) -> Callable[..., Any]:
    """Wraps the Board's ``list_datasets(dataset_dir, [training_stage])`` event handler."""

    @functools.wraps(list_datasets)  # Gradio reads the wrapped signature to match the event's inputs
    def list_or_explain(dataset_dir: str | None = None, *args: Any, **kwargs: Any) -> Any:
        message = broken_dataset_info_message(dataset_dir if dataset_dir is not None else default_dir)
        if message is None:
            return list_datasets(dataset_dir, *args, **kwargs)
        import gradio as gr

        return gr.Dropdown(choices=[], value=[], info=f"⚠ {message}")

    list_or_explain.sfmed_lf_wrapped = True
    return list_or_explain


def patch_board_common(common: ModuleType) -> str:
    common.DEFAULT_DATA_DIR = project_dataset_dir(common.DEFAULT_DATA_DIR)
    return f"dataset dir default {common.DEFAULT_DATA_DIR!r}"


def patch_board_control(control: ModuleType) -> str:
    if not getattr(control.list_datasets, "sfmed_lf_wrapped", False):
        control.list_datasets = with_visible_errors(control.list_datasets, control.DEFAULT_DATA_DIR)
    return "a broken dataset_info.json is explained under the Dataset dropdown"
