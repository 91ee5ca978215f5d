"""One shape for every ``sfmed`` step, and the registry the command line is built from.

A step is a config dataclass whose fields carry their help text (:func:`option`) and a :class:`Step` whose
``run(config)`` returns the paths it wrote. A stage (``data``, ``pref``, ``eval``, ``privacy``, …) is a module that
defines ``STAGE = Stage(...)`` with its steps; :data:`STAGES` maps each ``sfmed`` subcommand to that module, so a
new stage package adds one line here and nothing else. A step that is a command of its own (``sfmed tiny-model``,
``sfmed doctor``) is a module defining ``STEP``, listed in :data:`TOP_LEVEL_STEPS`; it has the same shape, and
``sfmed NAME -h`` lists its options as ``sfmed STAGE STEP -h`` does. The command line (``sfmed_lf/cli.py``) and the
recipe (``sfmed_lf/recipe/stage_io.py``) know the steps through these two registries only.

Two kinds of step:

- **YAML steps** (``yaml = True``): ``sfmed STAGE STEP CONFIG.yaml [key=value ...]``, LF-style: a flat mapping of
  option -> value, validated against the config class; ``-h`` lists every option with its type, default and help.
- **Argument steps** (``yaml = False``; ``arguments`` names the positional fields):
  ``sfmed data convert NAME INPUT OUTPUT --stage sft``; every other field is a ``--flag``.

One YAML vocabulary across stages: ``model_name_or_path`` + ``template`` for a local model; ``<role>_url`` +
``<role>_model`` for an OpenAI-compatible endpoint (``generator_``, ``policy_``, ``judge_``, ``candidate_``,
``baseline_``); ``max_new_tokens``; ``datasets`` = dataset_info.json names with ``dataset_dir``; ``output_dir``. A
config class lists the keys it no longer takes in ``renamed_options`` (old -> new), and an old key is refused with a
message naming the new one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from sfmed_lf.config_files import ConfigError, build_config, field_type_name

STAGES: dict[str, tuple[str, str]] = {
    # subcommand: (module defining STAGE, one-line help)
    "data": ("sfmed_lf.data_prep.steps", "SFT and pre-training data: convert, check, dedup, diversify, attach, mix"),
    "pref": ("sfmed_lf.preference.steps", "preference pairs: sample, judge, reward ensemble, flip/drop"),
    "eval": ("sfmed_lf.eval.steps", "compare two models: Rouge-L, judge scores, multiple choice"),
    "privacy": ("sfmed_lf.privacy.steps", "memorization audit and the high-risk database of the guard"),
    "world": ("sfmed_lf.world.steps", "the generated medical world of SF-Med-Tiny: datasets, judge, measures, report"),
}
TOP_LEVEL_STEPS: dict[str, str] = {
    # `sfmed NAME ...`: the module defining STEP (its help is the step's)
    "tiny-model": "sfmed_lf.tiny_model",
    "doctor": "sfmed_lf.doctor",
}


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING) -> Any:
    """A config field with its help text (shown by ``sfmed STAGE STEP -h``)."""
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class StepConfig:
    """Base of every step's options."""

    renamed_options: ClassVar[dict[str, str]] = {}  # old key -> the key that replaced it (or why it is gone)

    def unused_options(self) -> dict[str, str]:
        """Options that do nothing with this config's other settings -> why. Given with a value other than their
        default, they are refused (:func:`sfmed_lf.config_files.build_config`): a setting that silently does nothing
        is a mistake its user cannot see."""
        return {}


C = TypeVar("C", bound=StepConfig)


@dataclass
class Declared:
    """What a step writes, and what it reads besides the paths in its options, as its config tells before it runs.
    ``sfmed recipe`` checks a recipe with it (each dataset a stage reads is written by an earlier one), verifies a
    stage's outputs before recording it finished, and starts a stage over from it when its inputs changed."""

    outputs: list[str] = field(default_factory=list)  # files and directories it writes
    datasets: list[tuple[str, str, str]] = field(default_factory=list)  # (dataset_dir, name, file) it registers
    train_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # LF train YAMLs it writes (known part)
    reads: list[str] = field(default_factory=list)  # files it reads that no option names (an earlier step's)
    datasets_read: list[tuple[str, str]] = field(default_factory=list)  # (dataset_dir, name) it reads
    resumable: list[str] = field(default_factory=list)  # its resumable state (globs): not resumed with other inputs
    options: tuple[str, ...] | None = None  # the options that decide what it writes (None: every option)


class Step(Generic[C]):
    name: ClassVar[str]
    help: ClassVar[str]
    config: ClassVar[type]
    yaml: ClassVar[bool] = True  # a YAML step (CONFIG.yaml key=value ...) or an argument step (positionals, --flags)
    arguments: ClassVar[tuple[str, ...]] = ()  # the positional fields of an argument step

    def run(self, config: C) -> list[Path]:
        raise NotImplementedError

    def declared(self, config: C) -> Declared:
        """Default: it writes ``output_dir`` and reads ``datasets`` of ``dataset_dir`` (the one YAML vocabulary)."""
        output_dir = getattr(config, "output_dir", None)
        dataset_dir = str(getattr(config, "dataset_dir", "."))
        names = getattr(config, "datasets", None) or []
        return Declared(
            outputs=[str(output_dir)] if output_dir else [],
            datasets_read=[(dataset_dir, str(name)) for name in ([names] if isinstance(names, str) else names)],
        )


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    steps: Sequence[Step[Any]]
    # an extra subcommand that runs several steps in order ("all"), skipping those whose config says so
    sequence: tuple[str, ...] = ()
    skip_in_sequence: Callable[[str, Any], str | None] | None = None

    def step(self, name: str) -> Step[Any]:
        return next(step for step in self.steps if step.name == name)


def load_stage(command: str) -> Stage:
    module, _ = STAGES[command]
    return importlib.import_module(module).STAGE


def load_top_level_step(command: str) -> Step[Any]:
    return importlib.import_module(TOP_LEVEL_STEPS[command]).STEP


def scalar_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse type, choices) of a field's annotation; ``X | None`` reads as X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    return annotation, None


def add_argument_step(parser: argparse.ArgumentParser, step: Step[Any]) -> None:
    """The positionals (``step.arguments``) and ``--flags`` of an argument step."""
    hints = typing.get_type_hints(step.config)
    for item in dataclasses.fields(step.config):
        if not item.init or item.metadata.get("internal"):
            continue
        help_text = item.metadata.get("help", "")
        kind, choices = scalar_type(hints[item.name])
        if item.name in step.arguments:
            parser.add_argument(item.name, help=help_text, type=kind, choices=choices)
        elif kind is bool:
            action = argparse.BooleanOptionalAction if item.default else "store_true"
            parser.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name, action=action, help=help_text)
        else:
            default = None if item.default is dataclasses.MISSING else item.default
            shown = f"{help_text} (default: {default!r})" if default is not None else help_text
            parser.add_argument(
                f"--{item.name.replace('_', '-')}", dest=item.name, type=kind, choices=choices, help=shown
            )


def argument_values(step: Step[Any], args: argparse.Namespace) -> dict[str, Any]:
    names = [item.name for item in dataclasses.fields(step.config) if item.init and not item.metadata.get("internal")]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def parse_argument_step(step: Step[Any], argv: list[str], prog: str) -> Any:
    """The config of an argument step from its command line (``NAME INPUT OUTPUT --stage sft``)."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False, exit_on_error=False)
    add_argument_step(parser, step)
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as error:
        raise ConfigError(f"{prog}: {error or 'invalid arguments'}") from None
    return build_config(step.config, argument_values(step, args), prog)


def options_help(config_class: type) -> str:
    """Every option of a config class: name, type, default (or "required") and help, one block per option."""
    hints = typing.get_type_hints(config_class)
    blocks = []
    for item in dataclasses.fields(config_class):
        if not item.init or item.metadata.get("internal"):
            continue
        if item.default is not MISSING:
            default = f"default: {item.default!r}"
        elif item.default_factory is not MISSING:
            default = f"default: {item.default_factory()!r}"
        else:
            default = "required"
        help_text = item.metadata.get("help", "")
        blocks.append(
            f"  {item.name} ({field_type_name(hints.get(item.name, item.type))}; {default})\n      {help_text}"
        )
    return "\n".join(blocks)


def undocumented_options(config_class: type) -> list[str]:
    fields = dataclasses.fields(config_class)
    return [
        item.name
        for item in fields
        if item.init and not item.metadata.get("internal") and not item.metadata.get("help")
    ]
