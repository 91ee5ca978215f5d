"""Options of the ``sfmed data`` steps (LF-style YAML)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DedupConfig:
    datasets: list[str]  # LLaMA-Factory data files (alpaca/sharegpt .json/.jsonl, or {"text": ...} rows)
    output_dir: str
    ngram: int = 3  # characters per shingle
    num_perm: int = 128
    threshold: float = 0.7  # Jaccard similarity of shingle sets at which two records are near-duplicates
    seed: int = 1
    num_proc: int = 2
    chunk_size: int = 20000  # records per worker task (and per resumable signature file)
    cross_dataset: bool = True  # second pass over the union of what each dataset kept (SF-Med §3.2)

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets:
            raise ValueError("datasets: name at least one data file.")
        names = [name.rsplit("/", 1)[-1] for name in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets must have distinct file names (outputs are named after them): {names}.")
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must lie in (0, 1].")
        for name in ("ngram", "num_perm", "num_proc", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")


MIX_STRATEGIES = ("interleave_under", "interleave_over")


@dataclass
class MixConfig:
    """Continued pre-training mix (SF-Med §3.1): medical and general corpora at a token ratio, through
    LLaMA-Factory's ``mix_strategy`` / ``interleave_probs``."""

    medical: list[str]  # dataset_info.json names of pre-training (text) datasets
    general: list[str]
    output_dir: str
    tokenizer: str  # the model whose tokenizer counts the tokens (the CPT base model)
    dataset_dir: str = "."
    medical_share: float = 1.3  # medical : general tokens; SF-Med used about 1.3B : 1.4B
    general_share: float = 1.4
    mix_strategy: str = "interleave_under"  # under: stop when a source runs out; over: until all have been seen
    train_yaml: str | None = None  # an LF pt YAML to complete with dataset, mix_strategy and interleave_probs
    num_proc: int = 1
    batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("medical", "general"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
            if not getattr(self, name):
                raise ValueError(f"{name}: name at least one pre-training dataset.")
        overlap = set(self.medical) & set(self.general)
        if overlap:
            raise ValueError(f"datasets named as both medical and general: {sorted(overlap)}.")
        if self.medical_share <= 0 or self.general_share <= 0:
            raise ValueError("medical_share and general_share must be positive.")
        if self.mix_strategy not in MIX_STRATEGIES:
            raise ValueError(f"mix_strategy must be one of {', '.join(MIX_STRATEGIES)} (concat ignores the ratio).")
        if self.num_proc < 1 or self.batch_size < 1:
            raise ValueError("num_proc and batch_size must be >= 1.")
