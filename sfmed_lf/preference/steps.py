"""The ``sfmed pref`` steps (SF-Med §3.3): sample, judge, train-rms, score, select (``all`` runs them in order),
and rule-judge (rule-based judges behind the OpenAI API)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.steps import Stage, Step, StepConfig, option


class Sample(Step[PreferenceConfig]):
    name, config = "sample", PreferenceConfig
    help = "k responses per prompt from the SFT model (endpoint or in process)"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.sample import sample_responses

        return sample_responses(config)


class Judge(Step[PreferenceConfig]):
    name, config = "judge", PreferenceConfig
    help = "judges vote on each pair, both orders; majority gives chosen/rejected"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.judge import judge_pairs

        return judge_pairs(config)


class TrainRewardModels(Step[PreferenceConfig]):
    name, config = "train-rms", PreferenceConfig
    help = "K reward models through llamafactory-cli (stage rm), one data order each"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.ensemble import train_reward_models

        return train_reward_models(config)


class Score(Step[PreferenceConfig]):
    name, config = "score", PreferenceConfig
    help = "every pair scored by every reward model, full precision, keyed by the pair's content"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.scoring import score_pairs

        return score_pairs(config)


class Select(Step[PreferenceConfig]):
    name, config = "select", PreferenceConfig
    help = "mean strength; flip the weakest, drop the strongest; write the DPO dataset"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.select import select_pairs

        return select_pairs(config)


@dataclass
class RuleJudgeConfig(StepConfig):
    host: str = option("127.0.0.1", help="Address to listen on.")
    port: int = option(8100, help="Port to listen on.")


class RuleJudge(Step[RuleJudgeConfig]):
    name, config, yaml = "rule-judge", RuleJudgeConfig, False
    help = "serve rule-based judges (terms, length, clean) behind the OpenAI API, until interrupted"

    def run(self, config: RuleJudgeConfig) -> list[Path]:
        from sfmed_lf.preference.rule_judge import rule_judge_server

        server = rule_judge_server(config.host, config.port)
        print(f"sfmed pref rule-judge: serving terms, length, clean at {server.base_url}", flush=True)
        server.serve_forever()
        return []


STAGE = Stage(
    "pref",
    "preference pairs: sample, judge, reward ensemble, flip/drop",
    [Sample(), Judge(), TrainRewardModels(), Score(), Select(), RuleJudge()],
    sequence=("sample", "judge", "train-rms", "score", "select"),
)
