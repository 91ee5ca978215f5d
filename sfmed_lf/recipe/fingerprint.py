"""Content digests of what a stage reads, and the stage's fingerprint: its definition plus those digests.

A file is its SHA-256 (:func:`sfmed_lf.utils.provenance.file_digest`, which remembers the digests of large files
per path, size and modification time so that a 15 GB checkpoint is read once; the value is always the content's).
A directory is the digests of the files directly in it (a model's weights, config and tokenizer; the checkpoints
of a training run and other subdirectories are not what a later stage reads), less the run statistics a training
writes beside the model (:data:`RUN_STATISTICS`: runtimes, throughput, a dated logging directory), which differ
between two runs that train the same weights. A dataset named through
``dataset_dir`` is its dataset_info.json entry and the digests of its files. Paths that do not exist (hub ids,
plain words) are not inputs; the stage definition records them as text.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from sfmed_lf.recipe.spec import PLACEMENT_KEYS, Recipe, Stage
from sfmed_lf.recipe.stage_io import OUTPUT_KEYS, StepIO, read_values
from sfmed_lf.utils.provenance import file_digest

MISSING = "missing"
# written by transformers' Trainer / LLaMA-Factory at the end of a training; their losses follow from the weights
RUN_STATISTICS = frozenset(
    {
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        "trainer_state.json",
        "trainer_log.jsonl",
        "training_args.bin",
    }
)


def path_digest(path: str | os.PathLike[str]) -> str | dict[str, str] | None:
    target = Path(path)
    if target.is_file():
        return file_digest(target)
    if target.is_dir():
        return {
            child.name: file_digest(child)
            for child in sorted(target.iterdir())
            if child.is_file() and child.name not in RUN_STATISTICS
        }
    return None


def dataset_digest(dataset_dir: str, name: str) -> dict[str, Any]:
    info_path = Path(dataset_dir) / "dataset_info.json"
    try:
        entry = json.loads(info_path.read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        entry = None
    if not isinstance(entry, dict):
        return {"entry": MISSING}
    digest: dict[str, Any] = {"entry": entry}
    if "file_name" in entry:
        root = Path(dataset_dir) / str(entry["file_name"])
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        digest["files"] = {os.fspath(p): file_digest(p) if p.is_file() else MISSING for p in files}
    return digest


def _is_candidate(value: str) -> bool:
    return value not in (".", "..", "/") and len(value) < 4096 and "\n" not in value


def _nested_inputs(value: str) -> dict[str, Any]:
    """The digests of the existing paths a YAML config names (outputs aside); {} for anything else."""
    if not value.endswith((".yaml", ".yml")) or not Path(value).is_file():
        return {}
    try:
        nested = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    digests: dict[str, Any] = {}
    for inner in read_values(nested) if isinstance(nested, dict) else ():
        if _is_candidate(inner) and inner not in digests and (found := path_digest(inner)) is not None:
            digests[inner] = found
    return digests


def stage_inputs(io: StepIO) -> dict[str, Any]:
    """The options that decide the stage's outputs, and the digests of every existing path and every dataset it
    reads."""
    outputs = {os.path.normpath(path) for path in io.outputs}
    digests: dict[str, Any] = {"options": io.options}  # the config's values, not its bytes (comments do not count)
    for value in io.read_paths():
        if not _is_candidate(value) or os.path.normpath(value) in outputs or value in digests:
            continue
        digest = path_digest(value)
        if digest is None:
            continue
        digests[value] = digest
        for inner, found in _nested_inputs(value).items():  # a config naming more inputs (rm_yaml)
            digests.setdefault(inner, found)
    for dataset_dir, name in io.datasets:
        digests[f"dataset {name} ({dataset_dir})"] = dataset_digest(dataset_dir, name)
    return digests


def endpoint_inputs(recipe: Recipe, stage: Stage) -> dict[str, Any]:
    """The digests of what the stage's endpoints serve: every existing path in a serve command, and the paths a
    YAML among them names (a model directory, a guard's database), also as ``key=value`` overrides (output keys
    aside). A stage that asks a served model must rerun when that model changes, though its own options name only
    a URL."""
    digests: dict[str, Any] = {}
    for name in stage.endpoints:
        for argument in recipe.endpoints[name].serve or ():
            key, _, token = argument.rpartition("=") if not Path(argument).exists() else ("", "", argument)
            if key in OUTPUT_KEYS or not _is_candidate(token) or (digest := path_digest(token)) is None:
                continue
            digests[f"served {token}"] = digest
            for inner, found in _nested_inputs(token).items():
                digests[f"served {inner}"] = found
    return digests


def stage_definition(recipe: Recipe, stage: Stage) -> dict[str, Any]:
    """What decides a stage's outputs besides its inputs' content: the command (endpoint URLs as references, not
    ports), the overrides, the launch settings that change computation, and the endpoints' definitions."""
    return {
        "kind": stage.kind,
        "args": list(stage.args),
        "set": stage.overrides,
        "launch": {key: value for key, value in stage.launch.items() if key not in PLACEMENT_KEYS},
        "env": stage.env,
        "endpoints": {name: recipe.endpoints[name].definition() for name in stage.endpoints},
    }


def fingerprint(definition: dict[str, Any], inputs: dict[str, Any]) -> str:
    text = json.dumps({"definition": definition, "inputs": inputs}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def changed_inputs(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two ``stage_inputs``: option names and input paths."""
    changed = []
    for key in sorted(recorded.keys() | current.keys()):
        before, now = recorded.get(key), current.get(key)
        if before == now:
            continue
        if key == "options" and isinstance(before, dict) and isinstance(now, dict):
            changed += [
                f"option {name}" for name in sorted(before.keys() | now.keys()) if before.get(name) != now.get(name)
            ]
        else:
            changed.append(key)
    return changed
