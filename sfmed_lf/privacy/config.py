"""Options of ``sfmed privacy audit`` and ``sfmed privacy build-db`` (LF-style YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SplitMode = Literal["prompt", "ratio", "tokens"]
Pooling = Literal["mean", "last"]


@dataclass
class AuditConfig:
    model_name_or_path: str
    output_dir: str
    records: list[str] = field(default_factory=list)  # training files: alpaca, sharegpt or {"text": ...} rows
    template: str = "sfmed"  # LLaMA-Factory template the model was trained with (renders prompts as in training)
    sample_size: int | None = None  # audit this many records, drawn with `seed`; None = all
    seed: int = 42
    split: SplitMode = "prompt"  # prompt: prefix = rendered prompt, suffix = label; ratio/tokens: cut the sequence
    prefix_ratio: float = 0.5
    prefix_tokens: int = 32
    max_suffix_tokens: int = 256
    threshold: float = 0.8  # Rouge-L F above which a record counts as memorized
    batch_size: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.records, str):
            self.records = [self.records]
        if not self.records:
            raise ValueError("records: name at least one training file to audit.")
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
class DatabaseConfig:
    model_name_or_path: str  # the model the guard will serve: embeddings come from its own hidden states
    audit_dir: str  # where `sfmed privacy audit` wrote high_risk.jsonl
    output_dir: str
    layer: int | None = None  # hidden-state index (0 = embeddings output); None = the middle layer
    pooling: Pooling = "mean"
    secure_responses: str | None = None  # JSONL of {"id", "secure_response"}; others get default_secure_response
    default_secure_response: str = DEFAULT_SECURE_RESPONSE

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be mean or last, not {self.pooling!r}.")
