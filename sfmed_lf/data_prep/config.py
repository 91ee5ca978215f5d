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
