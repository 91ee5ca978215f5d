"""Options of the ``sfmed pref`` steps: one LF-style YAML for the whole preference stage (SF-Med §3.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmed_lf.config_files import ConfigError
from sfmed_lf.serving.chat_client import EndpointOptions

PROMPT_FORMATS = ("alpaca", "conversation")


@dataclass
class Judge:
    url: str  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1 (`vllm serve Qwen/Qwen2.5-72B-Instruct`)
    model: str


@dataclass
class PreferenceConfig(EndpointOptions):
    output_dir: str
    # prompts: an SFT file whose questions (with their history and system prompt) are answered anew
    prompts: str | None = None
    prompt_format: str = "alpaca"  # alpaca (instruction/input/history/system) or conversation (sharegpt-like)
    max_prompts: int | None = None
    # sample: the SFT model behind an endpoint, or loaded in process through LLaMA-Factory's ChatModel
    policy_url: str | None = None
    policy_model: str = "sfmed-sft"
    policy_path: str | None = None  # in-process path (no server): model directory
    policy_backend: str = "huggingface"  # LF ChatModel engine for the in-process path: huggingface or vllm
    template: str = "sfmed"
    num_responses: int = 2  # k; consecutive responses form the pairs (0,1), (2,3), ...
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 1
    # judge: three local judges (Qwen2.5-72B, Yi-1.5-34B, GLM-4-9B in the paper), each asked in both orders
    judges: list[Any] = field(default_factory=list)
    min_votes: int = 2  # consistent votes the winner needs (and more than the other answer)
    judge_max_tokens: int = 512
    concurrency: int = 8
    # train-rms: K reward models through `llamafactory-cli train` (stage rm), each with its own data order
    rm_yaml: str | None = None
    rm_overrides: list[str] = field(default_factory=list)  # key=value for every run, e.g. model_name_or_path=...
    num_reward_models: int = 10
    data_seed_base: int = 1000
    gpus: list[int] | None = None  # run the K trainings over these devices (None: one after another)
    gpus_per_model: int = 1
    # score
    score_batch_size: int = 8
    cutoff_len: int = 2048
    # select
    flip_fraction: float = 0.1
    drop_fraction: float = 0.1
    flip_below: float | None = None
    drop_above: float | None = None
    dataset_name: str = "sfmed_dpo_selected"
    register_in: str | None = None  # a dataset_info.json to add the selected dataset to (e.g. the project's)

    def __post_init__(self) -> None:
        if self.policy_backend not in ("huggingface", "vllm"):
            raise ValueError("policy_backend must be huggingface or vllm.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}.")
        if self.num_responses < 2 or self.num_responses % 2:
            raise ValueError("num_responses must be an even number >= 2 (responses are paired).")
        self.judges = [judge if isinstance(judge, Judge) else self._judge(judge) for judge in self.judges]
        if len({judge.model for judge in self.judges}) != len(self.judges):
            raise ValueError("judges: each judge must be a different model (votes and caches are keyed by model).")
        for name in ("flip_fraction", "drop_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1).")
        if self.flip_fraction + self.drop_fraction >= 1:
            raise ValueError("flip_fraction + drop_fraction must stay below 1.")
        for name in ("num_reward_models", "min_votes", "concurrency", "score_batch_size", "gpus_per_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")

    @staticmethod
    def _judge(value: Any) -> Judge:
        if not isinstance(value, dict) or set(value) != {"url", "model"}:
            raise ValueError(f"judges: each judge is a mapping with url and model, not {value!r}.")
        return Judge(**value)

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    def require(self, *names: str) -> None:
        missing = [name for name in names if getattr(self, name) in (None, [], "")]
        if missing:
            raise ConfigError(f"this step needs {', '.join(missing)} in the YAML (or key=value).")
