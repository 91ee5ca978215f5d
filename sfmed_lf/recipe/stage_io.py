"""What each step reads and writes, from its effective config (the YAML with the stage's overrides and the step's
defaults): the paths checked after it ends and counted as produced, the datasets it registers, the train YAMLs it
writes, and the resumable state removed when the stage must start over with other inputs.

What a step reads is found generically (:func:`read_values`: every text value of its config except the keys that
name outputs; datasets by name through ``dataset_dir``), so options added to a step are covered without this table.
What it writes is declared here per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sfmed_lf.config_files import ConfigError, load_config, parse_overrides
from sfmed_lf.formats.dataset_names import DIVERSIFIED_SUFFIX, PAIRS_DATASET
from sfmed_lf.recipe.spec import RecipeError, Stage

# keys whose values a step writes, never reads
OUTPUT_KEYS = frozenset({"output_dir", "register_in", "logging_dir", "export_dir", "tokenized_path", "cache_dir"})
# keys naming datasets by dataset_info.json name (or, for some steps, by file)
DATASET_KEYS = ("dataset", "eval_dataset", "datasets", "medical", "general")
LF_DEFAULT_DATASET_DIR = "data"  # LLaMA-Factory's DataArguments default


# The preference steps share one config; each reads only its part of it, so that (say) another flip fraction
# re-runs the selection but not the sampling. Options not listed do not change what a step writes (connections).
PREF_STEP_OPTIONS: dict[str, tuple[str, ...]] = {
    "sample": (
        "prompts",
        "prompt_format",
        "max_prompts",
        "policy_url",
        "policy_model",
        "policy_path",
        "policy_backend",
        "template",
        "num_responses",
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
    ),
    "judge": ("judges", "min_votes", "judge_max_tokens"),
    "train-rms": ("rm_yaml", "rm_overrides", "num_reward_models", "data_seed_base", "gpus", "gpus_per_model"),
    "score": ("num_reward_models", "template", "score_batch_size", "cutoff_len"),
    "select": ("num_reward_models", "flip_fraction", "drop_fraction", "flip_below", "drop_above", "dataset_name"),
}
PREF_CONNECTION_OPTIONS = ("output_dir", "register_in", "concurrency", "api_key", "request_timeout_s", "max_retries")


@dataclass
class StepIO:
    config: dict[str, Any]  # the effective options; {} for argument steps
    config_file: str | None  # the YAML the step reads
    options: dict[str, Any] | None = None  # the options that decide what it writes (default: all of config)
    reads: list[str] = field(default_factory=list)  # explicit inputs (argument steps; earlier steps' files)
    data_files: list[str] = field(default_factory=list)  # dataset files named by path (must exist or be produced)
    datasets: list[tuple[str, str]] = field(default_factory=list)  # (dataset_dir, name) read
    outputs: list[str] = field(default_factory=list)  # files or directories written
    datasets_written: list[tuple[str, str, str]] = field(default_factory=list)  # (dataset_dir, name, file)
    configs_written: dict[str, dict[str, Any]] = field(default_factory=dict)  # train YAMLs it writes
    stale: list[str] = field(default_factory=list)  # removed before starting over with other inputs (globs)

    @property
    def deciding(self) -> dict[str, Any]:
        return self.config if self.options is None else self.options

    def read_paths(self) -> list[str]:
        """Every text value the step reads (candidate paths; hub ids and plain words included) and explicit reads."""
        return [*self.reads, *self.data_files, *read_values(self.deciding)]


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


def _join(directory: str, *names: str) -> str:
    return os.path.normpath(os.path.join(directory, *names))


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


def _step_config(cls: type, path: str, overrides: list[str], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The step's config class built from the YAML and overrides (validated as the step would); as a mapping."""
    if os.path.normpath(path) in known and not Path(path).is_file():  # an earlier stage writes it: its declaration
        values = {**known[os.path.normpath(path)], **parse_overrides(overrides)}
        instance = load_config(cls, None, [f"{key}={_override_text(value)}" for key, value in values.items()])
    else:
        instance = load_config(cls, path, overrides)
    return dataclasses.asdict(instance)


def _argument_step(args: tuple[str, ...], positional: tuple[str, ...], flags: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sfmed " + " ".join(args[:2]), add_help=False, exit_on_error=False)
    for name in positional:
        parser.add_argument(name)
    for flag in flags:
        if flag == "--skip-invalid":
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag)
    try:
        return parser.parse_args(list(args[2:]))
    except (argparse.ArgumentError, SystemExit) as error:
        raise RecipeError(f"`sfmed {' '.join(args)}`: {error}") from None


def _train(config: dict[str, Any], config_file: str) -> StepIO:
    dataset_dir = str(config.get("dataset_dir", LF_DEFAULT_DATASET_DIR))
    names = [*_names(config.get("dataset")), *_names(config.get("eval_dataset"))]
    io = StepIO(config, config_file, datasets=[(dataset_dir, name) for name in names])
    if config.get("output_dir"):
        io.outputs = [str(config["output_dir"])]
        io.stale = [_join(str(config["output_dir"]), "checkpoint-*")]
    return io


def _pref(step: str, config: dict[str, Any], config_file: str) -> StepIO:
    from sfmed_lf.preference.sample import RESPONSES

    out = str(config["output_dir"])
    pairs = _join(out, "pairs.jsonl")
    steps = ("sample", "judge", "train-rms", "score", "select") if step == "all" else (step,)
    options = {key: config[key] for name in steps for key in PREF_STEP_OPTIONS[name]}
    io = StepIO(config, config_file, options=options)
    produced: list[str] = []
    for name in steps:
        if name == "sample":
            io.outputs.append(_join(out, RESPONSES))
            io.stale += [_join(out, RESPONSES), _join(out, f"{RESPONSES}.provenance.json")]
        elif name == "judge":
            io.reads.append(_join(out, RESPONSES))
            io.outputs += [pairs, _join(out, "judge_report.json"), _join(out, "dataset_info.json")]
            io.datasets_written.append((out, PAIRS_DATASET, pairs))
        elif name == "train-rms":
            io.datasets.append((out, PAIRS_DATASET))
            io.outputs += [_join(out, "ensemble.json"), _join(out, "rms")]
            io.stale += [_join(out, "ensemble.json"), _join(out, "rms")]
        elif name == "score":
            io.datasets.append((out, PAIRS_DATASET))
            io.reads += [_join(out, "rms", f"rm_{i}") for i in range(int(config["num_reward_models"]))]
            io.outputs.append(_join(out, "scores.jsonl"))
            io.stale += [_join(out, "scores.jsonl"), _join(out, "scores.jsonl.provenance.json")]
        else:
            io.datasets.append((out, PAIRS_DATASET))
            io.reads.append(_join(out, "scores.jsonl"))
            selected = _join(out, "selected.jsonl")
            io.outputs += [selected, _join(out, "audit.jsonl"), _join(out, "selection_report.json")]
            io.datasets_written.append((out, str(config["dataset_name"]), selected))
            if config.get("register_in"):
                registry_dir = os.path.dirname(str(config["register_in"])) or "."
                io.datasets_written.append((registry_dir, str(config["dataset_name"]), selected))
        produced += io.outputs
    # within `pref all`, what one step writes is not an input of the stage
    io.reads = [path for path in io.reads if path not in produced]
    io.datasets = [ref for ref in io.datasets if ref not in [(d, n) for d, n, _ in io.datasets_written]]
    return io


def stage_io(stage: Stage, known_configs: dict[str, dict[str, Any]] | None = None) -> StepIO:
    """The declared reads and writes of ``stage``; ``known_configs`` are YAMLs earlier stages will write."""
    known = {os.path.normpath(k): v for k, v in (known_configs or {}).items()}
    overrides = [f"{key}={_override_text(value)}" for key, value in stage.overrides.items()]
    step = stage.step
    try:
        if step == ("train",):
            config = {**_read_yaml(stage.args[0], known), **parse_overrides(overrides)}
            return _train(config, stage.args[0])
        if step == ("data", "convert"):
            args = _argument_step(stage.args, ("name", "input", "output"), ("--stage", "--form", "--skip-invalid"))
            return StepIO({}, None, reads=[args.input], outputs=[args.output, f"{args.output}.report.json"])
        if step == ("eval", "convert"):
            args = _argument_step(stage.args, ("format", "input", "output"), ("--dataset", "--skip-invalid"))
            return StepIO({}, None, reads=[args.input], outputs=[args.output])
        config_file = stage.config
        if config_file is None and step != ("tiny-model",):
            raise RecipeError(f"stage {stage.name}: `sfmed {' '.join(step)}` needs its YAML config.")
        return _sfmed_step(stage, step, config_file, overrides, known)
    except ConfigError as error:
        raise RecipeError(f"stage {stage.name} (line {stage.line}): {error}") from None


def _sfmed_step(
    stage: Stage, step: tuple[str, ...], config_file: str | None, overrides: list[str], known: dict[str, Any]
) -> StepIO:
    if step == ("tiny-model",):
        from sfmed_lf.tiny_model import TinyModelConfig

        if config_file is None:
            config = dataclasses.asdict(load_config(TinyModelConfig, None, overrides))
        else:
            config = _step_config(TinyModelConfig, config_file, overrides, known)
        return StepIO(config, config_file, outputs=[str(config["output_dir"])])
    assert config_file is not None
    if step[0] == "data":
        from sfmed_lf.data_prep import config as data_config

        if step[1] == "dedup":
            config = _step_config(data_config.DedupConfig, config_file, overrides, known)
            out = str(config["output_dir"])
            kept = [_join(out, os.path.basename(path)) for path in config["datasets"]]
            return StepIO(
                config,
                config_file,
                data_files=list(config["datasets"]),
                outputs=[*kept, _join(out, "dedup_report.json"), _join(out, "removed.jsonl")],
            )
        if step[1] == "mix":
            config = _step_config(data_config.MixConfig, config_file, overrides, known)
            out, dataset_dir = str(config["output_dir"]), str(config["dataset_dir"])
            names = [*config["medical"], *config["general"]]
            io = StepIO(config, config_file, datasets=[(dataset_dir, name) for name in names])
            io.outputs = [_join(out, "mix_report.json"), _join(out, "mix_report.md")]
            if config.get("train_yaml"):
                mix_yaml = _join(out, "pt_mix.yaml")
                io.outputs.append(mix_yaml)
                train = _read_yaml(str(config["train_yaml"]), known)
                options = {
                    "dataset": ",".join(names),
                    "dataset_dir": dataset_dir,
                    "mix_strategy": config["mix_strategy"],
                }
                io.configs_written[mix_yaml] = {**train, **options}
            return io
        if step[1] == "diversify":
            config = _step_config(data_config.DiversifyConfig, config_file, overrides, known)
            out = str(config["output_dir"])
            return StepIO(
                config,
                config_file,
                outputs=[_join(out, "instructions.jsonl"), _join(out, "diversify_report.json")],
                stale=[out],
            )
        if step[1] == "attach-system":
            config = _step_config(data_config.AttachConfig, config_file, overrides, known)
            out, dataset_dir = str(config["output_dir"]), str(config["dataset_dir"])
            io = StepIO(config, config_file, datasets=[(dataset_dir, name) for name in config["datasets"]])
            for name in config["datasets"]:
                target = _join(out, f"{name}{DIVERSIFIED_SUFFIX}.jsonl")
                io.outputs.append(target)
                io.datasets_written.append((out, f"{name}{DIVERSIFIED_SUFFIX}", target))
            io.outputs += [_join(out, "dataset_info.json"), _join(out, "attach_report.json")]
            return io
    if step[0] == "pref" and len(step) == 2:
        from sfmed_lf.preference.config import PreferenceConfig

        return _pref(step[1], _step_config(PreferenceConfig, config_file, overrides, known), config_file)
    if step[0] == "eval" and len(step) == 2:
        from sfmed_lf.eval.config import EvalConfig

        config = _step_config(EvalConfig, config_file, overrides, known)
        out = str(config["output_dir"])
        outputs = [_join(out, name) for name in ("report.md", "report.json")] if step[1] in ("all", "report") else [out]
        return StepIO(config, config_file, outputs=outputs, stale=[_join(out, "answers")])
    if step == ("privacy", "audit"):
        from sfmed_lf.privacy.config import AuditConfig

        config = _step_config(AuditConfig, config_file, overrides, known)
        out = str(config["output_dir"])
        results = _join(out, "audit_results.jsonl")
        return StepIO(
            config,
            config_file,
            outputs=[_join(out, "audit_report.json"), _join(out, "high_risk.jsonl")],
            stale=[results, f"{results}.provenance.json"],
        )
    if step == ("privacy", "build-db"):
        from sfmed_lf.privacy.config import DatabaseConfig

        config = _step_config(DatabaseConfig, config_file, overrides, known)
        return StepIO(config, config_file, outputs=[str(config["output_dir"])])
    raise RecipeError(
        f"stage {stage.name} (line {stage.line}): the runner does not know what `sfmed {' '.join(step)}` reads and "
        "writes; declare it in sfmed_lf/recipe/stage_io.py."
    )


def _override_text(value: Any) -> str:
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
