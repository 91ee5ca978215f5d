"""Near-duplicate removal (SF-Med §3.2): MinHash + LSH on character n-grams, first inside each dataset, then across
the union of what each dataset kept. The first occurrence of a cluster is kept (datasets in the order given).

Outputs in ``output_dir``: one file per input with the kept rows (same name and format), ``removed.jsonl`` (per
cluster: stage, kept id, removed ids, estimated Jaccard of each to the kept one) and ``dedup_report.json``.
Signatures are computed by a process pool in chunks and cached per chunk under ``.signatures/``, so a killed run
re-computes only the chunks it had not finished.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sfmed_lf.data_prep.config import DedupConfig
from sfmed_lf.data_prep.lsh import duplicate_clusters
from sfmed_lf.data_prep.minhash import MinHasher
from sfmed_lf.data_prep.records import record_text
from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import atomic_write_npy, atomic_write_text
from sfmed_lf.utils.jsonl import read_records
from sfmed_lf.utils.provenance import check_provenance


def chunk_signatures(args: tuple[list[str], int, int, int]) -> np.ndarray:
    texts, num_perm, ngram, seed = args
    return MinHasher(num_perm, ngram, seed).signatures(texts)


def _file_fingerprint(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


class DedupStep:
    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        self.out = Path(config.output_dir)

    def signatures(self, path: str, texts: list[str]) -> np.ndarray:
        """Signatures of one dataset, chunk by chunk through the pool, each chunk cached once computed."""
        config = self.config
        cache = self.out / ".signatures" / Path(path).name
        inputs = {
            "file": _file_fingerprint(path),
            "ngram": config.ngram,
            "num_perm": config.num_perm,
            "seed": config.seed,
            "chunk_size": config.chunk_size,
        }
        try:
            check_provenance(cache, inputs)
        except DataError:  # the input or the parameters changed: the cached chunks are stale, start over
            for stale in cache.parent.glob(f"{cache.name}.*"):
                stale.unlink()
            check_provenance(cache, inputs)
        chunks = [texts[start : start + config.chunk_size] for start in range(0, len(texts), config.chunk_size)]
        files = [cache.parent / f"{cache.name}.{index}.npy" for index in range(len(chunks))]
        todo = [index for index, file in enumerate(files) if not file.exists()]
        with (
            ProcessPoolExecutor(max_workers=config.num_proc) as pool,
            tqdm(total=len(texts), desc=f"MinHash {Path(path).name}", unit="record") as progress,
        ):
            progress.update(len(texts) - sum(len(chunks[i]) for i in todo))
            jobs = [(chunks[i], config.num_perm, config.ngram, config.seed) for i in todo]
            for index, signature in zip(todo, pool.map(chunk_signatures, jobs), strict=True):
                atomic_write_npy(files[index], signature)
                progress.update(len(chunks[index]))
        if not chunks:
            return np.empty((0, config.num_perm), dtype=np.uint32)
        return np.concatenate([np.load(file) for file in files])

    def run(self) -> list[Path]:
        config = self.config
        datasets = []
        for path in config.datasets:
            rows = read_records(path)
            texts = [record_text(path, number, row) for number, row in rows]
            ids = [f"{Path(path).name}:{number}" for number, _ in rows]
            datasets.append({"path": path, "rows": rows, "ids": ids, "signatures": self.signatures(path, texts)})
        removed_rows, report = [], {"parameters": asdict(config), "datasets": {}}
        for dataset in datasets:
            clusters = duplicate_clusters(dataset["signatures"], config.threshold)
            dataset["kept"] = _kept_after(len(dataset["ids"]), clusters)
            removed_rows += _cluster_rows("within", clusters, dataset["ids"], dataset["signatures"])
            report["datasets"][Path(dataset["path"]).name] = {
                "records": len(dataset["ids"]),
                "removed_within": len(dataset["ids"]) - len(dataset["kept"]),
                "short_records": sum(
                    len(record_text(dataset["path"], n, r)) < config.ngram for n, r in dataset["rows"]
                ),
            }
        if config.cross_dataset:
            owners = [(d, i) for d in datasets for i in sorted(d["kept"])]
            union = np.stack([d["signatures"][i] for d, i in owners]) if owners else np.empty((0, config.num_perm))
            union_ids = [d["ids"][i] for d, i in owners]
            clusters = duplicate_clusters(union, config.threshold)
            removed_rows += _cluster_rows("across", clusters, union_ids, union)
            for cluster in clusters:
                for member in cluster[1:]:
                    dataset, index = owners[member]
                    dataset["kept"].discard(index)
        written = []
        for dataset in datasets:
            name = Path(dataset["path"]).name
            kept_rows = [row for index, (_, row) in enumerate(dataset["rows"]) if index in dataset["kept"]]
            entry = report["datasets"][name]
            entry["kept"] = len(kept_rows)
            entry["removed_across"] = entry["records"] - entry["removed_within"] - entry["kept"]
            written.append(_write_rows(self.out / name, kept_rows))
        totals = {key: sum(d[key] for d in report["datasets"].values()) for key in ("records", "kept")}
        report["total"] = {**totals, "removed": totals["records"] - totals["kept"]}
        atomic_write_text(
            self.out / "removed.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in removed_rows)
        )
        atomic_write_text(self.out / "dedup_report.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        return [*written, self.out / "removed.jsonl", self.out / "dedup_report.json"]


def _kept_after(size: int, clusters: list[list[int]]) -> set[int]:
    removed = {member for cluster in clusters for member in cluster[1:]}
    return set(range(size)) - removed


def _cluster_rows(
    stage: str, clusters: list[list[int]], ids: list[str], signatures: np.ndarray
) -> list[dict[str, Any]]:
    return [
        {
            "stage": stage,
            "cluster": f"{stage}-{number}",
            "kept": ids[cluster[0]],
            "removed": [ids[m] for m in cluster[1:]],
            "similarity": [round(float(np.mean(signatures[m] == signatures[cluster[0]])), 4) for m in cluster[1:]],
        }
        for number, cluster in enumerate(clusters)
    ]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    else:
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path
