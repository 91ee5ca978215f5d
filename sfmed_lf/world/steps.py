"""The ``sfmed world`` steps: the generated medical world of SF-Med-Tiny (docs/world.md) — its datasets, the
knowledge-base judge behind the OpenAI API, likelihood measures, the guarded server asked for the invented records,
and the demo's report of every stage's effect."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sfmed_lf.steps import Declared, Stage, Step, StepConfig, option
from sfmed_lf.world.generate import WorldConfig
from sfmed_lf.world.measure import MeasureConfig
from sfmed_lf.world.report import ReportConfig


class Generate(Step[WorldConfig]):
    name, config = "generate", WorldConfig
    help = "knowledge base -> CPT/SFT/eval/preference/privacy datasets, registered in output_dir/dataset_info.json"

    def run(self, config: WorldConfig) -> list[Path]:
        from sfmed_lf.world.generate import generate_world

        return generate_world(config)

    def declared(self, config: WorldConfig) -> Declared:
        from sfmed_lf.world.generate import DATASETS

        declared = super().declared(config)
        declared.datasets = [(config.output_dir, name, file) for name, (file, _) in DATASETS.items()]
        return declared


@dataclass
class JudgeConfig(StepConfig):
    world: str = option(help="A directory written by `sfmed world generate` (its kb.json).")
    host: str = option("127.0.0.1", help="Address to listen on.")
    port: int = option(8100, help="Port to listen on.")


class Judge(Step[JudgeConfig]):
    name, config, yaml, arguments = "judge", JudgeConfig, False, ("world",)
    help = "serve the knowledge-base judge (kb-facts, kb-safety, kb-conduct) behind the OpenAI API, until interrupted"

    def run(self, config: JudgeConfig) -> list[Path]:
        from sfmed_lf.world.judge import JUDGE_MODELS, world_judge_server

        server = world_judge_server(config.world, config.host, config.port)
        print(f"sfmed world judge: serving {', '.join(JUDGE_MODELS)} at {server.base_url}", flush=True)
        server.serve_forever()
        return []


class Measure(Step[MeasureConfig]):
    name, config = "measure", MeasureConfig
    help = "preferred-answer rate on held-out pairs and general-domain loss, by likelihood"

    def run(self, config: MeasureConfig) -> list[Path]:
        from sfmed_lf.world.measure import run_measure

        return run_measure(config)

    def declared(self, config: MeasureConfig) -> Declared:
        declared = super().declared(config)
        declared.datasets_read = [
            (config.dataset_dir, name) for name in (config.pairs_dataset, config.general_dataset) if name
        ]
        return declared


@dataclass
class AskRecordsConfig(StepConfig):
    world: str = option(help="A directory written by `sfmed world generate`.")
    url: str = option(help="OpenAI-compatible base URL of the served model, e.g. http://127.0.0.1:8000/v1.")
    output: str = option(help="JSON file to write (answers and counts).")
    model: str = option("sfmed", help="The served model's name.")
    ask: str = option(
        "requests",
        help="requests: the world's record requests as chat turns; prefixes: the start of each record's text alone "
        "(for a server with LLaMA-Factory's `empty` template: a completion endpoint).",
    )

    def __post_init__(self) -> None:
        from sfmed_lf.world.records import ASK_MODES

        if self.ask not in ASK_MODES:
            raise ValueError(f"ask must be one of {', '.join(ASK_MODES)}, not {self.ask!r}.")


class AskRecords(Step[AskRecordsConfig]):
    name, config, yaml, arguments = "ask-records", AskRecordsConfig, False, ("world", "url", "output")
    help = "ask a served model for the invented patients' records (planted and control)"

    def run(self, config: AskRecordsConfig) -> list[Path]:
        from sfmed_lf.world.records import ask_records

        return [ask_records(config.world, config.url, config.output, config.model, ask=config.ask)]

    def declared(self, config: AskRecordsConfig) -> Declared:
        return Declared(outputs=[os.fspath(config.output)])


class Report(Step[ReportConfig]):
    name, config = "report", ReportConfig
    help = "every stage's effect from the demo's outputs: report.md and report.png"

    def run(self, config: ReportConfig) -> list[Path]:
        from sfmed_lf.world.report import build_report

        return build_report(config)


STAGE = Stage(
    "world",
    "the generated medical world of SF-Med-Tiny: datasets, knowledge-base judge, measures, report",
    [Generate(), Judge(), Measure(), AskRecords(), Report()],
)
