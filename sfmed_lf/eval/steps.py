"""The ``sfmed eval`` steps (SF-Med §4.2-4.5): convert, generate, rouge, judge, mcq, report (``all`` runs the last
five in order; judge only with a judge_url)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmed_lf.eval.config import EvalConfig
from sfmed_lf.steps import Declared, Stage, Step, StepConfig, option


@dataclass
class ConvertItemsConfig(StepConfig):
    name: str = option(help="Raw schema or registered corpus, the names of `sfmed data convert` (e.g. cmexam).")
    input: str = option(help="The benchmark's published file.")
    output: str = option(help="Evaluation items (.jsonl) to write (and OUTPUT.report.json).")
    dataset: str | None = option(None, help="Name of the benchmark in the reports (default: the input's stem).")
    skip_invalid: bool = option(False, help="Count bad rows in the report and go on, instead of stopping.")


class Convert(Step[ConvertItemsConfig]):
    name, config, yaml, arguments = "convert", ConvertItemsConfig, False, ("name", "input", "output")
    help = "a benchmark's published file -> evaluation items (JSONL)"

    def run(self, config: ConvertItemsConfig) -> list[Path]:
        from sfmed_lf.eval.convert import write_items

        return write_items(config.name, config.input, config.output, config.dataset, config.skip_invalid)

    def declared(self, config: ConvertItemsConfig) -> Declared:
        return Declared(outputs=[config.output, f"{config.output}.report.json"], reads=[config.input])


def _declared(config: EvalConfig, *names: str) -> Declared:
    return Declared(outputs=[os.path.join(config.output_dir, name) for name in names])


class Generate(Step[EvalConfig]):
    name, config = "generate", EvalConfig
    help = "answers of the candidate and the baseline to every item (resumable)"

    def run(self, config: EvalConfig) -> list[Path]:
        from sfmed_lf.eval.compare import GenerateStep

        return GenerateStep().run(config)

    def declared(self, config: EvalConfig) -> Declared:
        declared = _declared(config, "answers")
        declared.resumable = [os.path.join(config.output_dir, "answers")]  # an endpoint keeps its model name
        return declared


class Rouge(Step[EvalConfig]):
    name, config = "rouge", EvalConfig
    help = "Rouge-L F against the reference; win/tie/loss per dataset"

    def run(self, config: EvalConfig) -> list[Path]:
        from sfmed_lf.eval.compare import RougeStep

        return [RougeStep().run(config)]

    def declared(self, config: EvalConfig) -> Declared:
        return _declared(config, "rouge.json")


class Judge(Step[EvalConfig]):
    name, config = "judge", EvalConfig
    help = "reference-guided 1-10 scores from a judge endpoint; win/tie/loss"

    def run(self, config: EvalConfig) -> list[Path]:
        from sfmed_lf.eval.compare import JudgeStep

        return [JudgeStep().run(config)]

    def declared(self, config: EvalConfig) -> Declared:
        return _declared(config, "judge.json")


class Mcq(Step[EvalConfig]):
    name, config = "mcq", EvalConfig
    help = "option extraction and multiple-choice accuracy"

    def run(self, config: EvalConfig) -> list[Path]:
        from sfmed_lf.eval.compare import McqStep

        return [McqStep().run(config)]

    def declared(self, config: EvalConfig) -> Declared:
        return _declared(config, "mcq.json")


class Report(Step[EvalConfig]):
    name, config = "report", EvalConfig
    help = "report.md (tables as the paper's), report.json, report.png"

    def run(self, config: EvalConfig) -> list[Path]:
        from sfmed_lf.eval.report import build_report

        return build_report(config)

    def declared(self, config: EvalConfig) -> Declared:
        return _declared(config, "report.md", "report.json")


def _skip(step: str, config: Any) -> str | None:
    return "no judge_url" if step == "judge" and not config.judge_url else None


STAGE = Stage(
    "eval",
    "compare two models: Rouge-L, judge scores, multiple choice",
    [Convert(), Generate(), Rouge(), Judge(), Mcq(), Report()],
    sequence=("generate", "rouge", "judge", "mcq", "report"),
    skip_in_sequence=_skip,
)
