"""The ``sfmed pref`` steps (SF-Med §3.3): sample, judge, train-rms, score, select (``all`` runs them in order),
and rule-judge (rule-based judges behind the OpenAI API)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sfmed_lf.formats.dataset_names import PAIRS_DATASET
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.steps import Declared, Stage, Step, StepConfig, option

# The steps share one config and each reads only its part of it, so that (say) another flip fraction re-runs the
# selection but not the sampling; CONNECTION_OPTIONS change no step's outputs.
STEP_OPTIONS: dict[str, tuple[str, ...]] = {
    "sample": (
        "datasets",
        "dataset_dir",
        "max_prompts",
        "policy_url",
        "policy_model",
        "model_name_or_path",
        "template",
        "infer_backend",
        "policy_batch_size",
        "num_responses",
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
    ),
    "judge": ("judges", "min_votes", "judge_max_new_tokens"),
    "train-rms": (
        "pairs_dataset",
        "dataset_dir",
        "rm_yaml",
        "rm_overrides",
        "num_reward_models",
        "data_seed_base",
        "gpus",
        "gpus_per_model",
    ),
    "score": (
        "pairs_dataset",
        "dataset_dir",
        "num_reward_models",
        "template",
        "score_batch_size",
        "heldout_dataset",
        "heldout_dataset_dir",
        "cutoff_len",
    ),
    "select": (
        "pairs_dataset",
        "dataset_dir",
        "num_reward_models",
        "flip_fraction",
        "drop_fraction",
        "flip_below",
        "drop_above",
        "dataset_name",
    ),
}
CONNECTION_OPTIONS = ("output_dir", "register_in", "concurrency", "api_key", "request_timeout_s", "max_retries")


def _pairs(config: PreferenceConfig) -> tuple[str, str]:
    """(dataset_dir, name) of the pairs train-rms, score and select read (as config.pairs_source, unchecked)."""
    return (config.dataset_dir, config.pairs_dataset) if config.pairs_dataset else (config.output_dir, PAIRS_DATASET)


def _file(config: PreferenceConfig, name: str) -> str:
    return os.path.join(config.output_dir, name)


class Sample(Step[PreferenceConfig]):
    name, config = "sample", PreferenceConfig
    help = "k responses per prompt from the SFT model (endpoint or in process)"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.sample import sample_responses

        return sample_responses(config)

    def declared(self, config: PreferenceConfig) -> Declared:
        from sfmed_lf.preference.sample import RESPONSES

        declared = super().declared(config)
        declared.outputs = [_file(config, RESPONSES)]
        # an endpoint's answers are keyed by its model name, which a retrained policy keeps
        declared.resumable = [_file(config, RESPONSES), _file(config, f"{RESPONSES}.provenance.json")]
        declared.options = STEP_OPTIONS[self.name]
        return declared


class Judge(Step[PreferenceConfig]):
    name, config = "judge", PreferenceConfig
    help = "judges vote on each pair, both orders; majority gives chosen/rejected"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.judge import judge_pairs

        return judge_pairs(config)

    def declared(self, config: PreferenceConfig) -> Declared:
        from sfmed_lf.preference.sample import RESPONSES

        pairs = _file(config, "pairs.jsonl")
        return Declared(
            outputs=[pairs, _file(config, "judge_report.json"), _file(config, "dataset_info.json")],
            datasets=[(config.output_dir, PAIRS_DATASET, pairs)],
            reads=[_file(config, RESPONSES)],
            options=STEP_OPTIONS[self.name],
        )


class TrainRewardModels(Step[PreferenceConfig]):
    name, config = "train-rms", PreferenceConfig
    help = "K reward models through llamafactory-cli (stage rm), one data order each"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.ensemble import train_reward_models

        return train_reward_models(config)

    def declared(self, config: PreferenceConfig) -> Declared:
        written = [_file(config, "ensemble.json"), _file(config, "rms")]
        return Declared(
            outputs=written, datasets_read=[_pairs(config)], resumable=written, options=STEP_OPTIONS[self.name]
        )


class Score(Step[PreferenceConfig]):
    name, config = "score", PreferenceConfig
    help = "every pair scored by every reward model, full precision, keyed by the pair's content"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.scoring import score_pairs

        return score_pairs(config)

    def declared(self, config: PreferenceConfig) -> Declared:
        scores = _file(config, "scores.jsonl")
        return Declared(
            outputs=[scores],
            datasets_read=[_pairs(config)],
            reads=[_file(config, os.path.join("rms", f"rm_{i}")) for i in range(config.num_reward_models)],
            resumable=[scores, f"{scores}.provenance.json"],  # refuses reward models retrained since
            options=STEP_OPTIONS[self.name],
        )


class Select(Step[PreferenceConfig]):
    name, config = "select", PreferenceConfig
    help = "mean strength; flip the weakest, drop the strongest; write the DPO dataset"

    def run(self, config: PreferenceConfig) -> list[Path]:
        from sfmed_lf.preference.dpo_dataset import select_pairs

        return select_pairs(config)

    def declared(self, config: PreferenceConfig) -> Declared:
        selected = _file(config, "selected.jsonl")
        declared = Declared(
            outputs=[selected, _file(config, "audit.jsonl"), _file(config, "selection_report.json")],
            datasets=[(config.output_dir, config.dataset_name, selected)],
            datasets_read=[_pairs(config)],
            reads=[_file(config, "scores.jsonl")],
            options=STEP_OPTIONS[self.name],
        )
        if config.register_in:
            declared.datasets.append((os.path.dirname(config.register_in) or ".", config.dataset_name, selected))
        return declared


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
