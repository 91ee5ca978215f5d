"""``sfmed``: the SF-Med steps that are not ``llamafactory-cli train``, each reading an LF-style YAML file."""

from __future__ import annotations

import argparse
import sys

from sfmed_lf.config_files import ConfigError, load_config


def _tiny_model(args: argparse.Namespace) -> int:
    from sfmed_lf.tiny_model import TinyModelConfig, build_tiny_model

    config = load_config(TinyModelConfig, args.config, args.overrides)
    print(f"tiny SF-Med model written to {build_tiny_model(config.output_dir, config)}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from sfmed_lf.doctor import run_doctor

    return run_doctor()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfmed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="versions, and whether each LLaMA-Factory hook is active")
    doctor.set_defaults(run=_doctor)

    tiny = commands.add_parser("tiny-model", help="build the embedded tiny Qwen2 model and tokenizer (offline)")
    tiny.add_argument("config", nargs="?", help="YAML with output_dir and model sizes (all optional)")
    tiny.add_argument("overrides", nargs="*", metavar="key=value", help="options overriding the YAML")
    tiny.set_defaults(run=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    # `sfmed tiny-model key=value` without a YAML: the first positional is an override, not a file.
    if getattr(args, "config", None) and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [args.config, *args.overrides], None
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"sfmed {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
