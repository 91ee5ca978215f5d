"""The recipe checked before anything runs, from the steps' declared outputs (:mod:`.stage_io`):

- every dataset a stage names is written by an earlier stage, or registered with its file present (an error
  otherwise, naming the step that would write it);
- every path a stage reads that some stage writes is written by an earlier one (an error otherwise);
- a path no stage writes is an external input: it must exist where the recipe runs (a warning here: raw corpora
  and hub models live elsewhere). Text that is not a path (a hub id, a template name) is left alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmed_lf.produced_datasets import REMOTE_KEYS, producer_of
from sfmed_lf.recipe.spec import Recipe
from sfmed_lf.recipe.stage_io import StepIO, stage_io

PATH_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".txt", ".csv", ".parquet", ".safetensors", ".bin", ".npz")


@dataclass
class CheckResult:
    ios: list[StepIO]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # external inputs not found here
    # (stage, dataset_dir, name, the earlier stage that writes it or None for data already here)
    dataset_sources: list[tuple[str, str, str, str | None]] = field(default_factory=list)


def _key(path: str) -> str:
    return os.path.abspath(path)


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith(PATH_SUFFIXES) or value.count("/") >= 2


class _Producers:
    """Which stage writes each path (a file, a directory, or a directory holding written files)."""

    def __init__(self, ios: list[StepIO]) -> None:
        self.paths: list[tuple[str, int]] = [(_key(path), index) for index, io in enumerate(ios) for path in io.outputs]
        self.datasets: dict[tuple[str, str], tuple[int, str]] = {}
        for index, io in enumerate(ios):
            for dataset_dir, name, file in io.datasets_written:
                self.datasets.setdefault((_key(dataset_dir), name), (index, file))

    def of_path(self, path: str) -> list[int]:
        target = _key(path)
        return sorted(
            {
                index
                for output, index in self.paths
                if target == output or target.startswith(output + os.sep) or output.startswith(target + os.sep)
            }
        )


def check_recipe(recipe: Recipe) -> CheckResult:
    ios: list[StepIO] = []
    known_configs: dict[str, dict[str, Any]] = {}
    for stage in recipe.stages:
        io = stage_io(stage, known_configs)
        ios.append(io)
        known_configs.update(io.configs_written)
    result = CheckResult(ios)
    producers = _Producers(ios)
    names = [stage.name for stage in recipe.stages]

    def check_path(index: int, value: str, what: str, strict: bool) -> None:
        if value in (".", "..") or "\n" in value:
            return
        # a directory's digest is the files directly in it: a later stage writing there changes this stage's inputs
        # after every run, so the recipe would never be done
        for output, owner in producers.paths:
            if owner > index and os.path.dirname(output) == _key(value):
                problem = (
                    f"stage {names[owner]}: writes {output} into {value}, which stage {names[index]} reads; "
                    f"{names[index]} would count as changed after every run: write it elsewhere."
                )
                if problem not in result.errors:
                    result.errors.append(problem)
        owners = producers.of_path(value)
        if any(owner < index for owner in owners):
            return
        stage = names[index]
        if owners:
            result.errors.append(
                f"stage {stage}: {what} {value} is written by stage {names[owners[0]]}, which runs later."
            )
        elif Path(value).exists():
            return
        elif strict:
            result.errors.append(f"stage {stage}: {what} {value} does not exist and no stage of the recipe writes it.")
        elif looks_like_path(value):
            result.warnings.append(f"stage {stage}: {what} {value} (external input) is not here.")

    for index, (stage, io) in enumerate(zip(recipe.stages, ios, strict=True)):
        if io.config_file:
            check_path(index, io.config_file, "its config", strict=True)
        for value in io.read_paths():
            check_path(index, value, "input", strict=False)
        for dataset_dir, name in io.datasets:
            problem, source = _dataset_problem(index, dataset_dir, name, producers, names, check_path)
            result.dataset_sources.append((stage.name, dataset_dir, name, source))
            if problem:
                hint = producer_of(name)
                result.errors.append(
                    f"stage {stage.name}: dataset {name} ({dataset_dir}) {problem}" + (f"; {hint}." if hint else ".")
                )
    return result


def _dataset_problem(
    index: int, dataset_dir: str, name: str, producers: _Producers, names: list[str], check_path: Any
) -> tuple[str | None, str | None]:
    """(what is wrong or None, the stage that writes the dataset or None)."""
    written = producers.datasets.get((_key(dataset_dir), name))
    if written is not None:
        if written[0] < index:
            return None, names[written[0]]
        return f"is written by stage {names[written[0]]}, which runs later", None
    info_path = Path(dataset_dir) / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or name not in info:
        return "is written by no earlier stage and not registered in " + str(info_path), None
    entry = info[name]
    if not isinstance(entry, dict) or any(key in entry for key in REMOTE_KEYS) or "file_name" not in entry:
        return None, None
    data_file = os.path.normpath(os.path.join(dataset_dir, str(entry["file_name"])))
    check_path(index, data_file, f"dataset {name}'s file", True)
    owners = [owner for owner in producers.of_path(data_file) if owner < index]
    return None, names[owners[-1]] if owners else None
