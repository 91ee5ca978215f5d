"""Training stops before the model is loaded when a dataset its YAML names has not been produced yet, with a message
naming the ``sfmed`` step that produces it — never a silent fall-back to other data.

:func:`check_datasets_produced` runs in the SF-Med ``DataArguments`` validation (``sfmed_lf.hparams``), so it covers
``llamafactory-cli train``, torchrun workers and LLaMA-Board runs alike. For each name of ``dataset`` and
``eval_dataset`` it finds what LLaMA-Factory's loader would: ``dataset_dir``/dataset_info.json, the entry, and for
a local entry its ``file_name`` (relative to ``dataset_dir``); hub, script and cloud entries are LLaMA-Factory's to
fetch. A missing ``dataset_info.json``, entry or file stops training, naming the step when one writes it.

Which step writes which name follows the steps' naming (:func:`producer_of`): the corpora of
:mod:`sfmed_lf.formats.corpora` (``sfmed data convert``), ``<name>_diversified`` (``sfmed data attach-system``), the
judged pairs (``sfmed pref judge``) and the selected pairs (``sfmed pref select``).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from sfmed_lf.formats.dataset_names import DIVERSIFIED_SUFFIX, PAIRS_DATASET, SELECTED_DATASET

DATASET_INFO = "dataset_info.json"
# entry keys that make LLaMA-Factory fetch the data itself (parser.get_dataset_list)
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
RECIPE = "examples/yaml/sfmed_recipe.yaml"


def producer_of(name: str) -> str | None:
    """The ``sfmed`` step that writes dataset ``name``, as a sentence; None when no step of this package does."""
    from sfmed_lf.formats.corpora import CORPORA

    for corpus in CORPORA:
        for stage in corpus.stages:
            if name == corpus.entry_name(stage):
                stage_flag = f" --stage {stage}" if len(corpus.stages) > 1 else ""
                return (
                    f"`sfmed data convert {corpus.name} RAW {corpus.converted_file(stage)}{stage_flag}` writes it "
                    f"from the published {corpus.title} ({corpus.source}; `sfmed data registry` lists the sources)"
                )
    if name == PAIRS_DATASET:
        return "`sfmed pref judge` writes it (the judged pairs), e.g. `sfmed pref judge examples/yaml/sfmed_pref.yaml`"
    if name == SELECTED_DATASET:
        return (
            "`sfmed pref select` writes it (the judged pairs after the reward-ensemble flip/drop), e.g. "
            "`sfmed pref select examples/yaml/sfmed_pref.yaml`"
        )
    if name.endswith(DIVERSIFIED_SUFFIX):
        source = name.removesuffix(DIVERSIFIED_SUFFIX)
        return (
            f"`sfmed data attach-system` writes it (dataset {source} with the diversified system prompts, in its "
            "output_dir), e.g. `sfmed data attach-system examples/yaml/sfmed_attach_system.yaml`"
        )
    return None


def _not_produced(name: str, dataset_dir: str, problem: str, producer: str | None) -> ValueError:
    how = f" {producer}; `sfmed recipe run {RECIPE}` runs every step in order." if producer else ""
    return ValueError(
        f"dataset {name} (dataset_dir {dataset_dir}): {problem}.{how} Training stopped before loading the model."
    )


def missing_dataset(name: str, dataset_dir: str) -> ValueError | None:
    """Why LLaMA-Factory could not load dataset ``name`` from ``dataset_dir`` (None when it can)."""
    info_path = Path(dataset_dir) / DATASET_INFO
    if not info_path.is_file():
        return _not_produced(name, dataset_dir, f"{info_path} does not exist yet", producer_of(name))
    try:
        info: Any = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # LLaMA-Factory names the file and the parse error
    if not isinstance(info, dict):
        return None
    if name not in info:
        close = difflib.get_close_matches(name, list(info), n=3, cutoff=0.75)
        similar = f" (similar: {', '.join(close)})" if close else ""
        return _not_produced(name, dataset_dir, f"{info_path} has no entry {name!r}{similar}", producer_of(name))
    entry = info[name]
    if not isinstance(entry, dict) or any(key in entry for key in REMOTE_KEYS) or "file_name" not in entry:
        return None
    data_path = Path(dataset_dir) / str(entry["file_name"])
    if data_path.exists():
        return None
    return _not_produced(
        name, dataset_dir, f"{data_path} (its file_name in {info_path}) does not exist", producer_of(name)
    )


def check_datasets_produced(data_args: Any) -> None:
    """Raise for the first dataset of ``data_args`` that has not been produced (see the module docstring)."""
    dataset_dir = data_args.dataset_dir
    if not isinstance(dataset_dir, str) or dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return
    tokenized = getattr(data_args, "tokenized_path", None)
    if tokenized and os.path.isdir(tokenized):
        return  # LLaMA-Factory loads the tokenized data and reads no dataset
    for name in [*(data_args.dataset or []), *(data_args.eval_dataset or [])]:
        problem = missing_dataset(name, dataset_dir)
        if problem is not None:
            raise problem
