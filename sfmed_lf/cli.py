"""``sfmed``: the SF-Med steps that are not ``llamafactory-cli train``, each reading an LF-style YAML file."""

from __future__ import annotations

import argparse
import sys

from sfmed_lf.config_files import ConfigError, load_config
from sfmed_lf.errors import DataError, EndpointError


def _tiny_model(args: argparse.Namespace) -> int:
    from sfmed_lf.tiny_model import TinyModelConfig, build_tiny_model

    config = load_config(TinyModelConfig, args.config, args.overrides)
    print(f"tiny SF-Med model written to {build_tiny_model(config.output_dir, config)}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from sfmed_lf.doctor import run_doctor

    return run_doctor()


EVAL_STEPS = ("generate", "rouge", "judge", "mcq", "report")


def _eval(args: argparse.Namespace) -> int:
    from sfmed_lf.eval import steps
    from sfmed_lf.eval.config import EvalConfig
    from sfmed_lf.eval.report import build_report

    config = load_config(EvalConfig, args.config, args.overrides)
    runners = {
        "generate": steps.GenerateStep().run,
        "rouge": steps.RougeStep().run,
        "judge": steps.JudgeStep().run,
        "mcq": steps.McqStep().run,
        "report": build_report,
    }
    for step in EVAL_STEPS if args.step == "all" else (args.step,):
        if step == "judge" and args.step == "all" and not config.judge_endpoint:
            print("sfmed eval all: judge skipped (no judge_endpoint)", file=sys.stderr)
            continue
        written = runners[step](config)
        for path in written if isinstance(written, list) else [written]:
            print(f"sfmed eval {step}: wrote {path}")
    return 0


def _eval_convert(args: argparse.Namespace) -> int:
    from sfmed_lf.eval.convert import write_items

    for path in write_items(args.format, args.input, args.output, args.dataset, args.skip_invalid):
        print(f"sfmed eval convert: wrote {path}")
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from sfmed_lf.privacy.config import AuditConfig, DatabaseConfig

    if args.step == "audit":
        from sfmed_lf.privacy.audit import run_audit

        written = run_audit(load_config(AuditConfig, args.config, args.overrides))
    else:
        from sfmed_lf.privacy.database import build_database

        written = build_database(load_config(DatabaseConfig, args.config, args.overrides))
    for path in written:
        print(f"sfmed privacy {args.step}: wrote {path}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from sfmed_lf.data_prep import config as data_config

    if args.step == "dedup":
        from sfmed_lf.data_prep.dedup import run_dedup

        written = run_dedup(load_config(data_config.DedupConfig, args.config, args.overrides))
    elif args.step == "mix":
        from sfmed_lf.data_prep.mix import run_mix

        written = run_mix(load_config(data_config.MixConfig, args.config, args.overrides))
    elif args.step == "diversify":
        from sfmed_lf.data_prep.diversify import DiversifyStep

        written = DiversifyStep(load_config(data_config.DiversifyConfig, args.config, args.overrides)).run()
    else:
        from sfmed_lf.data_prep.attach import attach_system_prompts

        written = attach_system_prompts(load_config(data_config.AttachConfig, args.config, args.overrides))
    for path in written:
        print(f"sfmed data {args.step}: wrote {path}")
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from sfmed_lf.data_prep.convert import convert_corpus, report_path

    report = convert_corpus(args.name, args.input, args.output, args.stage, args.form, args.skip_invalid)
    print(
        f"sfmed data convert: {report['written']} of {report['rows_read']} rows -> {args.output} ({report['form']}); "
        f"{report['skipped_invalid']} invalid skipped, {sum(report['excluded_by_dataset'].values())} excluded by "
        f"the dataset; report {report_path(args.output)}"
    )
    return 0


def _data_registry(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sfmed_lf.data_prep.registry import merged_dataset_info
    from sfmed_lf.formats.corpora import CORPORA
    from sfmed_lf.utils.io import atomic_write_text

    for corpus in CORPORA:
        entries = ", ".join(corpus.entry_name(stage) for stage in corpus.stages)
        print(f"{corpus.title:32} {corpus.source:48} {corpus.raw_schema:16} {entries}")
    path = Path(args.dataset_info)
    current = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    merged = merged_dataset_info(current)
    if args.write:
        atomic_write_text(path, json.dumps(merged, ensure_ascii=False, indent=2) + "\n")
        print(f"sfmed data registry: wrote {len(merged)} entries to {path}")
    elif merged != current:
        print(f"sfmed data registry: {path} differs from the registry; run with --write", file=sys.stderr)
        return 1
    return 0


PREF_STEPS = ("sample", "judge", "train-rms", "score", "select")


def _pref(args: argparse.Namespace) -> int:
    from sfmed_lf.preference.config import PreferenceConfig
    from sfmed_lf.preference.ensemble import train_reward_models
    from sfmed_lf.preference.judge import judge_pairs
    from sfmed_lf.preference.sample import sample_responses
    from sfmed_lf.preference.scoring import score_pairs
    from sfmed_lf.preference.select import select_pairs

    config = load_config(PreferenceConfig, args.config, args.overrides)
    runners = {
        "sample": sample_responses,
        "judge": judge_pairs,
        "train-rms": train_reward_models,
        "score": score_pairs,
        "select": select_pairs,
    }
    for step in PREF_STEPS if args.step == "all" else (args.step,):
        for path in runners[step](config):
            print(f"sfmed pref {step}: wrote {path}")
    return 0


def _rule_judge(args: argparse.Namespace) -> int:
    from sfmed_lf.preference.rule_judge import rule_judge_server

    server = rule_judge_server(args.host, args.port)
    print(f"sfmed pref rule-judge: serving terms, length, clean at {server.base_url}", flush=True)
    server.serve_forever()
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("config", help=help_text)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="options overriding the YAML")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfmed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="versions, and whether each LLaMA-Factory hook is active")
    doctor.set_defaults(run=_doctor)

    tiny = commands.add_parser("tiny-model", help="build the embedded tiny Qwen2 model and tokenizer (offline)")
    tiny.add_argument("config", nargs="?", help="YAML with output_dir and model sizes (all optional)")
    tiny.add_argument("overrides", nargs="*", metavar="key=value", help="options overriding the YAML")
    tiny.set_defaults(run=_tiny_model)

    evaluation = commands.add_parser("eval", help="compare two models: Rouge-L, judge scores, multiple choice")
    eval_steps = evaluation.add_subparsers(dest="step", required=True)
    convert = eval_steps.add_parser("convert", help="a benchmark's published file -> evaluation items (JSONL)")
    convert.add_argument("format", help="raw schema or registered corpus (as `sfmed data convert`), e.g. cmexam")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument("--dataset", help="name in the report (default: the input file's stem)")
    convert.add_argument("--skip-invalid", action="store_true", help="count bad rows in the report, go on")
    convert.set_defaults(run=_eval_convert)
    for step in (*EVAL_STEPS, "all"):
        parser_step = eval_steps.add_parser(step, help="every step in order" if step == "all" else f"the {step} step")
        _add_config_arguments(parser_step, "LF-style YAML (sfmed_lf.eval.config.EvalConfig)")
        parser_step.set_defaults(run=_eval)

    privacy = commands.add_parser("privacy", help="memorization audit and the high-risk database of the guard")
    privacy_steps = privacy.add_subparsers(dest="step", required=True)
    audit = privacy_steps.add_parser("audit", help="greedy continuation of training records; Rouge-L vs the label")
    _add_config_arguments(audit, "LF-style YAML (sfmed_lf.privacy.config.AuditConfig)")
    database = privacy_steps.add_parser("build-db", help="embeddings of the memorized records, with secure answers")
    _add_config_arguments(database, "LF-style YAML (sfmed_lf.privacy.config.DatabaseConfig)")
    for step_parser in (audit, database):
        step_parser.set_defaults(run=_privacy)

    data = commands.add_parser("data", help="SFT and pre-training data preparation")
    data_steps = data.add_subparsers(dest="step", required=True)
    dedup = data_steps.add_parser("dedup", help="MinHash-LSH near-duplicate removal, per dataset then across all")
    _add_config_arguments(dedup, "LF-style YAML (sfmed_lf.data_prep.config.DedupConfig)")
    dedup.set_defaults(run=_data)
    for step, help_text, config_class in (
        ("mix", "token counts and LF interleave_probs for the medical:general CPT mix", "MixConfig"),
        ("diversify", "new system instructions from a local generator (question/answer banks)", "DiversifyConfig"),
        ("attach-system", "diversified instructions as system prompts of SFT samples", "AttachConfig"),
    ):
        step_parser = data_steps.add_parser(step, help=help_text)
        _add_config_arguments(step_parser, f"LF-style YAML (sfmed_lf.data_prep.config.{config_class})")
        step_parser.set_defaults(run=_data)
    convert_data = data_steps.add_parser("convert", help="a corpus of Tables 1-2 from its raw schema to an LF file")
    convert_data.add_argument("name", help="registered corpus (sfmed data registry lists them) or raw schema name")
    convert_data.add_argument("input", help="the published file (a directory for cmedqa2 and plain-text corpora)")
    convert_data.add_argument("output", help="LLaMA-Factory .jsonl to write")
    convert_data.add_argument("--stage", choices=("pt", "sft"), help="for corpora registered for both stages")
    convert_data.add_argument("--form", choices=("pt", "alpaca", "sharegpt"), help="override the output form")
    convert_data.add_argument("--skip-invalid", action="store_true", help="count bad rows in the report, go on")
    convert_data.set_defaults(run=_data_convert)
    registry = data_steps.add_parser("registry", help="list the corpora; check or --write dataset_info.json")
    registry.add_argument("--dataset-info", default="dataset_info.json")
    registry.add_argument("--write", action="store_true", help="set the registry entries in the file")
    registry.set_defaults(run=_data_registry)

    preference = commands.add_parser("pref", help="preference pairs: sample, judge, reward ensemble, flip/drop")
    pref_steps = preference.add_subparsers(dest="step", required=True)
    for step, help_text in (
        ("sample", "k responses per prompt from the SFT model (endpoint or in process)"),
        ("judge", "three judges vote on each pair, both orders; majority gives chosen/rejected"),
        ("train-rms", "K reward models through llamafactory-cli (stage rm), one data order each"),
        ("score", "every pair scored by every reward model, full precision"),
        ("select", "mean strength; flip the weakest, drop the strongest; write the DPO dataset"),
        ("all", "every step in order"),
    ):
        step_parser = pref_steps.add_parser(step, help=help_text)
        _add_config_arguments(step_parser, "LF-style YAML (sfmed_lf.preference.config.PreferenceConfig)")
        step_parser.set_defaults(run=_pref)
    rule_judge = pref_steps.add_parser("rule-judge", help="serve rule-based judges (terms, length, clean), OpenAI API")
    rule_judge.add_argument("--host", default="127.0.0.1")
    rule_judge.add_argument("--port", type=int, default=8100)
    rule_judge.set_defaults(run=_rule_judge)
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
    except (ConfigError, DataError, EndpointError) as error:
        print(f"sfmed {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
