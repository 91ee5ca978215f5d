"""Options of ``sfmed privacy audit`` and ``sfmed privacy build-db`` (LF-style YAML)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from sfmed_lf.steps import StepConfig, option

SplitMode = Literal["prompt", "ratio", "tokens"]
Pooling = Literal["mean", "last"]
Protected = Literal["memorized", "audited"]
# a line of audit_results.jsonl and high_risk.jsonl: `sfmed privacy audit` writes them, `sfmed privacy build-db` reads
AUDIT_FIELDS = {"id": str, "query": str, "suffix": str, "generation": str, "rouge_l": float, "prefix_tokens": int}


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
    sensitive_pattern: str | None = option(
        None,
        help="Regular expression of identifiers (ID or phone numbers, ...; the whole match is the identifier): a "
        "record counts as memorized, whatever its Rouge-L, when any audited continuation writes one of its "
        "identifiers that the prompt did not hold, and the guard refuses answers holding one (null: Rouge-L alone, "
        "as the paper).",
    )

    def __post_init__(self) -> None:
        if self.sensitive_pattern is not None:
            try:
                re.compile(self.sensitive_pattern)
            except re.error as error:
                raise ValueError(f"sensitive_pattern is not a regular expression: {error}.") from error
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


CHECKS = ("embedding", "lexical", "output")


@dataclass
class DatabaseConfig(StepConfig):
    model_name_or_path: str = option(help="The model the guard serves: embeddings and calibration come from it.")
    audit_dir: str = option(help="Where `sfmed privacy audit` wrote audit_results.jsonl and high_risk.jsonl.")
    output_dir: str = option(
        help="index.faiss, center.npy, entries.jsonl, protected.jsonl, meta.json, calibration_report.json, "
        "calibration_scores.png."
    )
    template: str = option("sfmed", help="LLaMA-Factory template the model serves with (calibration prompts).")
    layer: int | None = option(None, help="Hidden-state index (0 = embeddings output); null: the middle layer.")
    pooling: Pooling = option("mean", help="mean or last-token pooling.")
    secure_responses: str | None = option(
        None, help='JSONL of {"id", "secure_response"}; other entries get default_secure_response.'
    )
    default_secure_response: str = option(DEFAULT_SECURE_RESPONSE, help="Answer served for a memorized record.")
    protect_identifiers: Protected = option(
        "audited",
        help="Whose identifiers (the audit's sensitive_pattern) the output check refuses to give away: audited = "
        "every record the audit read, memorized = the high-risk records only. The audit's prompts find a lower bound: "
        "a record they did not bring back can still come back for another request.",
    )
    lexical_ngram: int = option(2, help="Character n-grams of the prompt check (Chinese: 2; alphabetic text: 3-4).")
    output_ngram: int = option(3, help="Character n-grams of the output check.")
    output_cap: int = option(
        32, help="A suffix longer than this many n-grams is caught once a share of this many reappears."
    )
    calibrate: bool = option(
        True,
        help="Choose each check's threshold as the lowest whose false-refusal rate on the controls stays within "
        "target_false_refusal_rate / (2 x number of checks); a threshold set below skips that choice.",
    )
    target_false_refusal_rate: float = option(0.01, help="False-refusal budget on the controls, all checks together.")
    controls: list[str] = option(
        default_factory=list, help="Files of prompts the model never saw; empty: generated control questions."
    )
    num_controls: int = option(1000, help="Generated controls (privacy/controls.py) when `controls` is empty.")
    perturbations_per_record: int = option(
        14, help="Perturbed variants of each high-risk prompt (privacy/perturb.py) for the recall measurement."
    )
    seed: int = option(1234, help="Seed of the perturbations and generated controls.")
    max_new_tokens: int = option(64, help="Answers generated for the output check's calibration.")
    batch_size: int = option(16, help="Prompts per forward/generate call.")
    embedding_threshold: float | None = option(None, help="Fixed hidden-state cosine threshold (null: calibrated).")
    lexical_threshold: float | None = option(None, help="Fixed lexical overlap threshold (null: calibrated).")
    output_threshold: float | None = option(None, help="Fixed output overlap threshold (null: calibrated).")

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be mean or last, not {self.pooling!r}.")
        if self.protect_identifiers not in get_args(Protected):
            raise ValueError(f"protect_identifiers must be audited or memorized, not {self.protect_identifiers!r}.")
        if isinstance(self.controls, str):
            self.controls = [self.controls]
        if not 0 < self.target_false_refusal_rate < 1:
            raise ValueError("target_false_refusal_rate must lie in (0, 1).")
        for name in ("lexical_ngram", "output_ngram", "output_cap", "num_controls", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.perturbations_per_record < 0:
            raise ValueError("perturbations_per_record must be >= 0.")
        if self.embedding_threshold is not None and not -1 <= self.embedding_threshold <= 1:
            raise ValueError("embedding_threshold is a cosine similarity: it must lie in [-1, 1].")
        for name in ("lexical_threshold", "output_threshold"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} is an overlap share: it must lie in (0, 1].")
        if not self.calibrate and None in (self.embedding_threshold, self.lexical_threshold, self.output_threshold):
            raise ValueError(
                "calibrate: false needs embedding_threshold, lexical_threshold and output_threshold set explicitly."
            )
