"""Options of ``sfmed privacy audit`` and ``sfmed privacy build-db`` (LF-style YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from sfmed_lf.steps import StepConfig, option

SplitMode = Literal["prompt", "ratio", "tokens"]
Pooling = Literal["mean", "last"]


@dataclass
class AuditConfig(StepConfig):
    renamed_options: ClassVar[dict[str, str]] = {
        "records": "use datasets: dataset_info.json names (with dataset_dir) of the training data."
    }

    model_name_or_path: str = option(help="The audited model (local checkpoint).")
    output_dir: str = option(help="audit_results.jsonl (resumable), audit_report.json, high_risk.jsonl, the plot.")
    datasets: list[str] = option(
        default_factory=list, help="dataset_info.json names (in dataset_dir) of the training data: SFT or pre-training."
    )
    dataset_dir: str = option(".", help="Directory holding dataset_info.json (as LLaMA-Factory's dataset_dir).")
    template: str = option("sfmed", help="LLaMA-Factory template the model was trained with (prompts as in training).")
    sample_size: int | None = option(None, help="Audit this many records, drawn with seed (null: all).")
    seed: int = option(42, help="Seed of the sample.")
    split: SplitMode = option(
        "prompt", help="prompt: prefix = rendered prompt, suffix = label; ratio / tokens: cut the token sequence."
    )
    prefix_ratio: float = option(0.5, help="split ratio: share of the tokens in the prefix.")
    prefix_tokens: int = option(32, help="split tokens: tokens in the prefix.")
    max_suffix_tokens: int = option(256, help="Longest suffix compared (tokens).")
    threshold: float = option(0.8, help="Rouge-L F above which a record counts as memorized.")
    batch_size: int = option(8, help="Records per generate() call.")

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets:
            raise ValueError("datasets: name at least one training dataset to audit.")
        if self.split not in ("prompt", "ratio", "tokens"):
            raise ValueError(f"split must be prompt, ratio or tokens, not {self.split!r}.")
        if not 0 < self.prefix_ratio < 1:
            raise ValueError("prefix_ratio must lie in (0, 1).")
        if not 0 <= self.threshold <= 1:
            raise ValueError("threshold must lie in [0, 1].")
        for name in ("prefix_tokens", "max_suffix_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.sample_size is not None and self.sample_size < 1:
            raise ValueError("sample_size must be >= 1 (or null for every record).")


DEFAULT_SECURE_RESPONSE = (
    "抱歉，这个问题可能涉及训练数据中他人的具体就诊信息，我不能复述。"
    "如果您有健康方面的疑问，请描述您自己的症状和情况，我会尽力给出一般性的建议；必要时请咨询医生。"
)


@dataclass
class DatabaseConfig(StepConfig):
    model_name_or_path: str = option(help="The model the guard serves: embeddings come from its hidden states.")
    audit_dir: str = option(help="Where `sfmed privacy audit` wrote high_risk.jsonl.")
    output_dir: str = option(help="index.faiss, center.npy, entries.jsonl, meta.json.")
    layer: int | None = option(None, help="Hidden-state index (0 = embeddings output); null: the middle layer.")
    pooling: Pooling = option("mean", help="mean or last-token pooling.")
    secure_responses: str | None = option(
        None, help='JSONL of {"id", "secure_response"}; other entries get default_secure_response.'
    )
    default_secure_response: str = option(DEFAULT_SECURE_RESPONSE, help="Answer served for a memorized record.")

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be mean or last, not {self.pooling!r}.")
