"""``sfmed``: the SF-Med steps that are not ``llamafactory-cli train``, built from the step registry
(:mod:`sfmed_lf.steps`). ``sfmed STAGE STEP -h`` (``sfmed tiny-model -h``) lists every option of a step with its
type, default and help."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sfmed_lf.config_files import ConfigError, build_config, load_config
from sfmed_lf.errors import DataError, EndpointError, ProblemsFound
from sfmed_lf.steps import (
    STAGES,
    TOP_LEVEL_STEPS,
    Step,
    add_argument_step,
    argument_values,
    load_stage,
    load_top_level_step,
    options_help,
)


def _add_step(commands: Any, step: Step[Any]) -> None:
    parser = commands.add_parser(
        step.name, help=step.help, description=step.help, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if step.yaml:
        _add_yaml_step(parser, step.config, f"the {step.name} step")
    else:
        add_argument_step(parser, step)


def _add_yaml_step(parser: argparse.ArgumentParser, config_class: type, help_text: str) -> None:
    parser.add_argument("config", nargs="?", help=f"LF-style YAML of {help_text}")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="options overriding the YAML")
    parser.epilog = f"options ({config_class.__module__}.{config_class.__name__}):\n{options_help(config_class)}"


def _add_recipe_commands(commands: Any) -> None:
    recipe = commands.add_parser("recipe", help="every stage of a recipe from one file: plan, run (resumable), status")
    recipe_steps = recipe.add_subparsers(dest="step", required=True)
    for step, help_text in (
        ("plan", "print every command in order (endpoints, launch settings) and check the recipe"),
        ("run", "run the stages not yet done; a re-run skips finished stages and re-runs changed ones"),
        ("status", "where a run stands: each stage done, changed, unfinished, running or not run"),
    ):
        step_parser = recipe_steps.add_parser(step, help=help_text)
        step_parser.add_argument("recipe", help="recipe YAML (examples/yaml/sfmed_recipe.yaml)")
        step_parser.add_argument("overrides", nargs="*", metavar="VAR=value", help="recipe vars, or launch.NAME=value")
        if step == "run":
            step_parser.add_argument("--force", action="append", default=[], metavar="STAGE", help="run even if done")
            step_parser.add_argument("--quiet", action="store_true", help="stage output to the logs only")
            step_parser.add_argument(
                "--node-rank", type=int, default=0, help="r > 0: follow node 0's run, joining its training stages"
            )


def _recipe(args: argparse.Namespace) -> int:
    from sfmed_lf.recipe.runner import Runner, plan, status
    from sfmed_lf.recipe.spec import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.step == "plan":
        return plan(recipe, sys.stdout)
    if args.step == "status":
        return status(recipe, sys.stdout)
    runner = Runner(recipe, sys.stdout, echo=not args.quiet)
    return runner.follow(args.node_rank) if args.node_rank else runner.run(tuple(args.force))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfmed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in TOP_LEVEL_STEPS:
        _add_step(commands, load_top_level_step(command))
    _add_recipe_commands(commands)
    for command, (_, stage_help) in STAGES.items():
        stage_parser = commands.add_parser(command, help=stage_help)
        steps = stage_parser.add_subparsers(dest="step", required=True)
        stage = load_stage(command)
        for step in stage.steps:
            _add_step(steps, step)
        if stage.sequence:
            all_parser = steps.add_parser(
                "all",
                help=f"every step in order: {', '.join(stage.sequence)}",
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            _add_yaml_step(all_parser, stage.step(stage.sequence[0]).config, "every step")
    return parser


def _config(step: Step[Any], args: argparse.Namespace) -> Any:
    if step.yaml:
        return load_config(step.config, args.config, args.overrides)
    return build_config(step.config, argument_values(step, args), "command line")


def _run_step(prefix: str, step: Step[Any], config: Any) -> None:
    from sfmed_lf.utils.io import inputs_protected

    with inputs_protected():
        written = step.run(config)
    for path in written:
        print(f"{prefix}: wrote {path}")


def run(args: argparse.Namespace) -> int:
    if args.command in TOP_LEVEL_STEPS:
        step = load_top_level_step(args.command)
        _run_step(f"sfmed {args.command}", step, _config(step, args))
        return 0
    if args.command == "recipe":
        return _recipe(args)
    stage = load_stage(args.command)
    if args.step == "all":
        config = load_config(stage.step(stage.sequence[0]).config, args.config, args.overrides)
        for name in stage.sequence:
            reason = stage.skip_in_sequence(name, config) if stage.skip_in_sequence else None
            if reason:
                print(f"sfmed {args.command} all: {name} skipped ({reason})", file=sys.stderr)
                continue
            _run_step(f"sfmed {args.command} {name}", stage.step(name), config)
        return 0
    step = stage.step(args.step)
    _run_step(f"sfmed {args.command} {step.name}", step, _config(step, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # `sfmed STAGE STEP key=value` without a YAML: the first positional is an override, not a file.
    config = getattr(args, "config", None)
    if isinstance(config, str) and "=" in config and not config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [config, *args.overrides], None
    where = " ".join(part for part in (args.command, getattr(args, "step", None)) if part)
    try:
        return run(args)
    except (ConfigError, DataError, EndpointError) as error:
        print(f"sfmed {where}: {error}", file=sys.stderr)
        return 2
    except ProblemsFound as error:  # a check step printed what it found
        print(f"sfmed {where}: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a disk or permission problem: name the file, no traceback
        name = f" {error.filename}" if error.filename else ""
        print(f"sfmed {where}:{name} {error.strerror or error}", file=sys.stderr)
        return 2


def documented_steps() -> dict[str, dict[str, str]]:
    """stage -> step -> the option help text (for the tests and the README)."""
    return {command: {step.name: options_help(step.config) for step in load_stage(command).steps} for command in STAGES}


if __name__ == "__main__":
    sys.exit(main())
