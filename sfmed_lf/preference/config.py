"""Options of the ``sfmed pref`` steps: one LF-style YAML for the whole preference stage (SF-Med §3.3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from sfmed_lf.config_files import ConfigError
from sfmed_lf.errors import DataError
from sfmed_lf.formats.dataset_names import SELECTED_DATASET
from sfmed_lf.preference.pairs import PAIRS_DATASET
from sfmed_lf.serving.chat_client import EndpointOptions
from sfmed_lf.steps import StepConfig, option


@dataclass
class Judge:
    url: str  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8001/v1 (`vllm serve Qwen/Qwen2.5-72B-Instruct`)
    model: str


@dataclass
class PreferenceConfig(EndpointOptions, StepConfig):
    renamed_options: ClassVar[dict[str, str]] = {
        "policy_path": "use model_name_or_path (with template) for the in-process policy.",
        "policy_backend": "use infer_backend (LLaMA-Factory's name: huggingface or vllm).",
        "max_tokens": "use max_new_tokens.",
        "judge_max_tokens": "use judge_max_new_tokens.",
        "prompts": "use datasets: dataset_info.json names (with dataset_dir) of the SFT data to answer.",
        "prompt_format": "gone: the dataset_info.json entry of each dataset gives its format and columns.",
    }

    output_dir: str = option(help="Every file of the stage: responses, judgments, pairs, reward models, scores, ...")
    # sample
    datasets: list[str] = option(
        default_factory=list,
        help="dataset_info.json names (in dataset_dir) of the SFT data whose prompts are answered.",
    )
    dataset_dir: str = option(".", help="Directory holding dataset_info.json (as LLaMA-Factory's dataset_dir).")
    max_prompts: int | None = option(None, help="Answer only the first N prompts (null: all).")
    policy_url: str | None = option(None, help="OpenAI-compatible endpoint of the SFT model (vllm serve, LF api).")
    policy_model: str = option("sfmed-sft", help="The policy's model name at policy_url.")
    model_name_or_path: str | None = option(None, help="The SFT model, run in process when policy_url is not set.")
    template: str = option("sfmed", help="LLaMA-Factory template of the model (sampling in process, scoring).")
    infer_backend: Literal["huggingface", "vllm"] = option(
        "huggingface", help="LLaMA-Factory ChatModel engine of the in-process policy."
    )
    policy_batch_size: int = option(
        1, help="huggingface in process: prompts sampled together in one generate() call (faster on a CPU)."
    )
    num_responses: int = option(2, help="k answers per prompt; consecutive answers form the pairs (0,1), (2,3), ...")
    temperature: float = option(1.0, help="Sampling temperature of the policy.")
    top_p: float = option(0.95, help="Nucleus sampling of the policy.")
    max_new_tokens: int = option(512, help="Tokens per sampled answer.")
    seed: int = option(1, help="Sampling seed (seed + i for the i-th answer of an endpoint).")
    # judge
    judges: list[Any] = option(
        default_factory=list, help="Judges, each {url, model}: an OpenAI-compatible endpoint and its model name."
    )
    min_votes: int = option(2, help="Consistent votes the winner needs (and more than the other answer).")
    judge_max_new_tokens: int = option(512, help="Tokens per judgment.")
    concurrency: int = option(8, help="Requests in flight.")
    # train-rms, score, select
    pairs_dataset: str | None = option(
        None,
        help="A ranking dataset of dataset_dir (any column mapping, e.g. MedicalGPT's question/response_chosen/"
        "response_rejected) to train, score and select instead of the judge step's pairs.",
    )
    rm_yaml: str | None = option(None, help="Base LLaMA-Factory YAML of the reward models (stage rm).")
    rm_overrides: list[str] = option(default_factory=list, help="key=value for every reward-model run.")
    num_reward_models: int = option(10, help="K reward models, each with its own data order.")
    data_seed_base: int = option(1000, help="Model i trains with data_seed = data_seed_base + i.")
    gpus: list[int] | None = option(None, help="Run the K trainings over these devices (null: one after another).")
    gpus_per_model: int = option(1, help="Devices per reward-model run.")
    score_batch_size: int = option(8, help="Pairs per scoring batch.")
    heldout_dataset: str | None = option(
        None, help="A ranking dataset the reward models never trained on: each model's and the ensemble's accuracy."
    )
    heldout_dataset_dir: str = option(".", help="Directory holding heldout_dataset's dataset_info.json.")
    cutoff_len: int = option(2048, help="Truncation of a pair as in training (LF's infer_seqlen).")
    flip_fraction: float = option(0.1, help="Fraction of the weakest pairs whose labels are flipped.")
    drop_fraction: float = option(0.1, help="Fraction of the strongest pairs that are dropped.")
    flip_below: float | None = option(
        None, help="Flip pairs whose mean strength is below this (replaces the fraction)."
    )
    drop_above: float | None = option(
        None, help="Drop pairs whose mean strength is above this (replaces the fraction)."
    )
    dataset_name: str = option(SELECTED_DATASET, help="Name of the selected DPO dataset in dataset_info.json.")
    register_in: str | None = option(None, help="Also register the selected dataset in this dataset_info.json.")

    def __post_init__(self) -> None:
        if self.policy_url and self.model_name_or_path:
            raise ValueError(
                "policy_url and model_name_or_path are exclusive: the policy is an endpoint or in process."
            )
        if self.num_responses < 2 or self.num_responses % 2:
            raise ValueError("num_responses must be an even number >= 2 (responses are paired).")
        self.judges = [judge if isinstance(judge, Judge) else self._judge(judge) for judge in self.judges]
        if len({judge.model for judge in self.judges}) != len(self.judges):
            raise ValueError("judges: each judge must be a different model (votes are kept per model).")
        for name in ("flip_fraction", "drop_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1).")
        if self.flip_fraction + self.drop_fraction >= 1:
            raise ValueError("flip_fraction + drop_fraction must stay below 1.")
        for name in (
            "num_reward_models",
            "min_votes",
            "concurrency",
            "score_batch_size",
            "gpus_per_model",
            "policy_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")

    def unused_options(self) -> dict[str, str]:
        if self.policy_url:
            why = "it configures the in-process policy; the policy is the endpoint at policy_url"
            return dict.fromkeys(("infer_backend", "policy_batch_size"), why)
        unused = {"policy_model": "it names the model at policy_url, which is not set"}
        if self.infer_backend == "vllm":
            unused["policy_batch_size"] = "prompts per huggingface generate() call; vLLM batches by itself"
        return unused

    @staticmethod
    def _judge(value: Any) -> Judge:
        if not isinstance(value, dict) or set(value) != {"url", "model"}:
            raise ValueError(f"judges: each judge is a mapping with url and model, not {value!r}.")
        if not all(isinstance(v, str) and v for v in value.values()):
            raise ValueError(f"judges: url and model are non-empty texts, not {value!r}.")
        return Judge(**value)

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    def pairs_source(self) -> tuple[Path, str]:
        """(dataset_dir, name) of the ranking dataset train-rms, score and select read."""
        if self.pairs_dataset:
            return Path(self.dataset_dir), self.pairs_dataset
        if not (self.out / "pairs.jsonl").exists():
            raise DataError(
                f"{self.out / 'pairs.jsonl'}: missing; run `sfmed pref judge` first, or set pairs_dataset to a ranking "
                "dataset of dataset_dir."
            )
        return self.out, PAIRS_DATASET

    def require(self, *names: str) -> None:
        missing = [name for name in names if getattr(self, name) in (None, [], "")]
        if missing:
            raise ConfigError(f"this step needs {', '.join(missing)} in the YAML (or key=value).")
