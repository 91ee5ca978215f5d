"""What a stage reads and writes, from its step's effective config (the YAML with the stage's overrides and the
step's defaults) and the step's own declaration (:meth:`sfmed_lf.steps.Step.declared`, in the step registry).

What a step reads is found generically (:func:`read_values`: every text value of the options that decide its
outputs, except the keys that name outputs; datasets by name through ``dataset_dir``), so an option added to a
step is an input without anyone listing it. A ``llamafactory-cli train`` stage writes its ``output_dir`` and reads
its ``dataset``/``eval_dataset``; every other stage is a step of the registry: ``sfmed STAGE STEP`` (:data:`STAGES`)
or ``sfmed NAME`` (:data:`TOP_LEVEL_STEPS`, e.g. ``tiny-model``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sfmed_lf.config_files import ConfigError, build_config, load_config, parse_overrides
from sfmed_lf.recipe.spec import RecipeError, Stage
from sfmed_lf.steps import (
    STAGES,
    TOP_LEVEL_STEPS,
    Declared,
    Step,
    load_stage,
    load_top_level_step,
    parse_argument_step,
)

# keys whose values a step writes, never reads
OUTPUT_KEYS = frozenset(
    {"output_dir", "register_in", "logging_dir", "export_dir", "tokenized_path", "cache_dir", "sfmed_privacy_log"}
)
# keys naming datasets by dataset_info.json name (read through dataset_dir, not as paths)
DATASET_KEYS = ("dataset", "eval_dataset", "datasets", "medical", "general", "pairs_dataset")
LF_DEFAULT_DATASET_DIR = "data"  # LLaMA-Factory's DataArguments default


@dataclass
class StepIO:
    config: dict[str, Any]  # the effective options; for argument steps, their arguments
    config_file: str | None  # the YAML the step reads
    declared: Declared = field(default_factory=Declared)

    @property
    def options(self) -> dict[str, Any]:
        """The options that decide what the step writes."""
        names = self.declared.options
        return self.config if names is None else {key: self.config[key] for key in names}

    @property
    def outputs(self) -> list[str]:
        return self.declared.outputs

    @property
    def datasets(self) -> list[tuple[str, str]]:
        return self.declared.datasets_read

    @property
    def datasets_written(self) -> list[tuple[str, str, str]]:
        return self.declared.datasets

    @property
    def configs_written(self) -> dict[str, dict[str, Any]]:
        return self.declared.train_configs

    @property
    def stale(self) -> list[str]:
        return self.declared.resumable

    @property
    def reads(self) -> list[str]:
        return self.declared.reads

    def read_paths(self) -> list[str]:
        """Every text value the step reads (candidate paths; hub ids and plain words included) and explicit reads."""
        own = {os.path.normpath(path) for path in self.outputs}  # an argument step's OUTPUT is an option too
        values = [value for value in read_values(self.options) if os.path.normpath(value) not in own]
        return [*self.reads, *(value for value in values if value not in self.reads)]


def read_values(config: dict[str, Any]) -> list[str]:
    """Text values of a config outside output and dataset-name keys (URLs left out), in order, once each."""
    seen: dict[str, None] = {}

    def walk(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            if "://" not in value and value.strip():
                yield value
        elif isinstance(value, list | tuple):
            for item in value:
                yield from walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in OUTPUT_KEYS:
                    yield from walk(item)

    for key, value in config.items():
        if key in OUTPUT_KEYS or key in DATASET_KEYS or key == "dataset_dir":
            continue
        for text in walk(value):
            seen.setdefault(text, None)
    return list(seen)


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return [str(name) for name in value]


def _read_yaml(path: str, known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The YAML on disk, or as an earlier stage declares it will write it."""
    normalised = os.path.normpath(path)
    if normalised in known and not Path(path).is_file():
        return dict(known[normalised])
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read YAML ({error}).") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value.")
    return loaded


def _as_mapping(config: Any) -> dict[str, Any]:
    return {
        item.name: _plain(getattr(config, item.name))
        for item in dataclasses.fields(config)
        if item.init and not item.metadata.get("internal")
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _yaml_step_config(cls: type, path: str | None, overrides: list[str], known: dict[str, dict[str, Any]]) -> Any:
    """The step's config built from the YAML (or an earlier stage's declaration of it) and the overrides."""
    if path is not None and os.path.normpath(path) in known and not Path(path).is_file():
        values = {**known[os.path.normpath(path)], **parse_overrides(overrides)}
        return build_config(cls, values, path)
    return load_config(cls, path, overrides)


def _sequence(step_path: tuple[str, ...]) -> tuple[Step[Any], list[Step[Any]]]:
    """The step a stage's config is read for, and the steps it runs (several for ``sfmed STAGE all``)."""
    if len(step_path) == 1 and step_path[0] in TOP_LEVEL_STEPS:
        step = load_top_level_step(step_path[0])
        return step, [step]
    if len(step_path) != 2 or step_path[0] not in STAGES:
        raise RecipeError(
            f"`sfmed {' '.join(step_path)}` is not a step of the registry (sfmed_lf/steps.py: "
            f"{', '.join(STAGES)}; {', '.join(TOP_LEVEL_STEPS)}; or a train stage)."
        )
    command, step_name = step_path
    stage = load_stage(command)
    if step_name == "all" and stage.sequence:
        return stage.step(stage.sequence[0]), [stage.step(name) for name in stage.sequence]
    try:
        step = stage.step(step_name)
    except StopIteration:
        raise RecipeError(f"`sfmed {command}` has no step {step_name!r}.") from None
    return step, [step]


def _combined(command: str, steps: list[Step[Any]], config: Any) -> Declared:
    """The declaration of ``sfmed STAGE all``: what its steps write, and what they read that none of them writes."""
    if len(steps) == 1:
        return steps[0].declared(config)
    stage = load_stage(command)
    parts = [
        step.declared(config)
        for step in steps
        if not (stage.skip_in_sequence and stage.skip_in_sequence(step.name, config))
    ]
    if len(parts) == 1:
        return parts[0]
    combined = Declared(options=None if any(part.options is None for part in parts) else ())
    for part in parts:
        combined.outputs += [path for path in part.outputs if path not in combined.outputs]
        combined.datasets += part.datasets
        combined.train_configs.update(part.train_configs)
        combined.resumable += part.resumable
        if combined.options is not None and part.options is not None:
            combined.options += tuple(name for name in part.options if name not in combined.options)
    written = {(os.path.normpath(d), n) for d, n, _ in combined.datasets}
    for part in parts:
        combined.reads += [path for path in part.reads if path not in combined.outputs and path not in combined.reads]
        combined.datasets_read += [
            ref for ref in part.datasets_read if (os.path.normpath(ref[0]), ref[1]) not in written
        ]
    return combined


def stage_io(stage: Stage, known_configs: dict[str, dict[str, Any]] | None = None) -> StepIO:
    """The declared reads and writes of ``stage``; ``known_configs`` are YAMLs earlier stages will write."""
    known = {os.path.normpath(k): v for k, v in (known_configs or {}).items()}
    overrides = [f"{key}={override_text(value)}" for key, value in stage.overrides.items()]
    step_path = stage.step
    try:
        if step_path == ("train",):
            config = {**_read_yaml(stage.args[0], known), **parse_overrides(overrides)}
            dataset_dir = str(config.get("dataset_dir", LF_DEFAULT_DATASET_DIR))
            names = [*_names(config.get("dataset")), *_names(config.get("eval_dataset"))]
            declared = Declared(datasets_read=[(dataset_dir, name) for name in names])
            if config.get("output_dir"):
                declared.outputs = [str(config["output_dir"])]
                declared.resumable = [os.path.join(str(config["output_dir"]), "checkpoint-*")]  # LF never clears them
            return StepIO(config, stage.args[0], declared)
        step, steps = _sequence(step_path)
        if step.yaml:
            config = _yaml_step_config(step.config, stage.config, overrides, known)
        else:
            config = parse_argument_step(step, list(stage.args[len(step_path) :]), f"sfmed {' '.join(step_path)}")
        return StepIO(_as_mapping(config), stage.config, _combined(step_path[0], steps, config))
    except ConfigError as error:  # RecipeError too
        raise RecipeError(f"stage {stage.name} (line {stage.line}): {error}") from None


def override_text(value: Any) -> str:
    """``value`` as the text of a key=value override that YAML reads back as ``value`` (lists and mappings as
    JSON, which YAML reads too)."""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and "\n" not in value:
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)
