"""``engine: datatrove``: the same near-duplicate removal as datatrove pipeline stages, so that each stage can be
sharded over local processes, Slurm jobs or Ray tasks.

    1 signatures  (tasks)    records of this task's contiguous shard -> datatrove's MinhashDedupSignature with our
                             shingles and permutations (the native engine's signatures, bands x rows of them)
    2 buckets     (bands)    datatrove's MinhashDedupBuckets: records with equal band values (.dups pairs)
    3 candidates  (tasks)    normalised text and full signature of every record that appears in a .dups pair
    4 cluster     (1)        buckets rebuilt from the .dups, then our keep rule (keep.py: exact Jaccard, no chains,
                             inside each dataset first, then across) -> datatrove's .remove files + decisions
    5 filter      (tasks)    datatrove's MinhashDedupFilter, then the kept rows of the shard
    6 outputs     (1)        kept rows per input file, removed.jsonl and dedup_report.json as the native engine

Records are numbered in input order (datasets in the order given) and task r takes the r-th contiguous slice, so
buckets and decisions do not depend on the number of tasks or workers. Stages run with datatrove's executors and
their completion markers (``logging/`` under a work folder keyed by the inputs' content and the parameters): a
killed run skips the tasks that had finished.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from sfmed_lf.data_prep.config import DedupConfig
from sfmed_lf.data_prep.dedup import (
    NORMALISATION_VERSION,
    Encoded,
    check_outputs_are_not_inputs,
    encode_chunk,
    fitted_bands,
    read_dataset,
    save_arrays,
    write_outputs,
)
from sfmed_lf.data_prep.keep import KeepResult, keep_first
from sfmed_lf.data_prep.lsh import buckets_from_groups
from sfmed_lf.data_prep.minhash import MinHasher, encode
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_text
from sfmed_lf.utils.provenance import file_digest


class CharacterTokenizer(WordTokenizer):
    """Characters as datatrove's "words" (Chinese has no spaces; n-grams of characters are the shingles)."""

    def __init__(self) -> None:
        super().__init__("zh")

    def word_tokenize(self, text: str) -> list[str]:
        return list(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def shard_bounds(records: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice [start, end) of the global record order that task ``rank`` handles."""
    return records * rank // world_size, records * (rank + 1) // world_size


class ShardReader(PipelineStep):
    """Yields this task's slice of the records as Documents (id: global record index); files outside the slice are
    not read."""

    name = "sfmed records"

    def __init__(self, paths: list[str], sizes: list[int], entries: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.paths, self.sizes, self.entries = paths, sizes, entries

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        start, end = shard_bounds(sum(self.sizes), rank, world_size)
        first = 0
        for number, (path, size) in enumerate(zip(self.paths, self.sizes, strict=True)):
            if first < end and first + size > start:
                dataset = read_dataset(path, self.entries[number] if self.entries else None)
                for offset in range(max(start - first, 0), min(end - first, size)):
                    self.stat_update("records")
                    yield Document(
                        text=dataset.texts[offset],
                        id=str(first + offset),
                        metadata={"dataset": number, "row": dataset.rows[offset]},
                    )
            first += size


class SfmedSignature(MinhashDedupSignature):
    """datatrove's signature stage (its bucket files, sorting and checks) with our shingles and permutations."""

    def __init__(self, output_folder: str, config: MinhashConfig, num_perm: int, seed: int) -> None:
        super().__init__(output_folder, config=config, language=CharacterTokenizer())
        self.hasher_arguments = (num_perm, config.n_grams, seed)
        self._hasher: MinHasher | None = None

    def get_shingles(self, text: str) -> np.ndarray:
        return np.array([text], dtype=object)  # one element: empty texts are one shingle, as in the native engine

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        if self._hasher is None:
            self._hasher = MinHasher(*self.hasher_arguments)
        signature = self._hasher.signatures([shingles[0]])[0]
        rows = self.config.hashes_per_bucket
        return [signature[b * rows : (b + 1) * rows].tolist() for b in range(self.config.num_buckets)]


def _dups(folder: Path) -> list[tuple[int, np.ndarray]]:
    """(band, pairs as (file, doc, file, doc) rows) of every .dups file."""
    found = []
    for path in sorted(folder.glob("*.dups")):
        pairs = np.frombuffer(path.read_bytes(), dtype="<u4").reshape(-1, 4).astype(np.int64)
        found.append((int(path.name.split("_")[0]), pairs))
    return found


class CandidateRecords(PipelineStep):
    """Normalised text and full signature of this task's records that share a bucket with another record."""

    name = "sfmed candidates"

    def __init__(self, work: str, records: int, num_perm: int, ngram: int, seed: int) -> None:
        super().__init__()
        self.work, self.records = Path(work), records
        self.arguments = (num_perm, ngram, seed)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        wanted: set[int] = set()
        for _, pairs in _dups(self.work / "buckets"):
            for file_column, doc_column in ((0, 1), (2, 3)):
                wanted.update(pairs[pairs[:, file_column] == rank, doc_column].tolist())
        start, _ = shard_bounds(self.records, rank, world_size)
        ids, texts = [], []
        for position, document in enumerate(data):
            if position in wanted:
                ids.append(start + position)
                texts.append(document.text)
        encoded = encode_chunk((texts, *self.arguments))
        save_arrays(
            self.work / "candidates" / f"{rank:05d}.npz",
            ids=np.array(ids, dtype=np.int64),
            signatures=encoded.signatures,
            codes=encoded.codes,
            offsets=encoded.offsets,
        )
        return
        yield


class KeepRule(PipelineStep):
    """Buckets from the .dups files, our keep rule on the candidates, datatrove's .remove files per task."""

    name = "sfmed keep rule"

    def __init__(self, work: str, plan: dict[str, Any], tasks: int) -> None:
        super().__init__()
        self.work, self.plan, self.tasks = Path(work), plan, tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        plan, records = self.plan, self.plan["records"]
        starts = [shard_bounds(records, r, self.tasks)[0] for r in range(self.tasks)]
        parts = [np.load(path) for path in sorted((self.work / "candidates").glob("*.npz"))]
        ids = np.concatenate([p["ids"] for p in parts]) if parts else np.empty(0, np.int64)
        order = np.argsort(ids)
        ids = ids[order]
        encoded = Encoded.concatenate(
            [Encoded(p["signatures"], p["codes"], p["offsets"]) for p in parts], plan["num_perm"]
        )
        local = np.full(records, -1, dtype=np.int64)
        local[ids] = np.arange(len(ids))
        signatures = encoded.signatures[order]
        codes, offsets = _reorder_codes(encoded, order)
        groups_per_band: list[list[list[int]]] = [[] for _ in range(plan["bands"])]
        for band, pairs in _dups(self.work / "buckets"):
            first = local[np.array(starts)[pairs[:, 0]] + pairs[:, 1]]
            second = local[np.array(starts)[pairs[:, 2]] + pairs[:, 3]]
            groups = groups_per_band[band]
            for a, b in zip(first.tolist(), second.tolist(), strict=True):
                if groups and groups[-1][-1] == a:  # pairs of one group are consecutive: (x1, x2), (x2, x3), ...
                    groups[-1].append(b)
                else:
                    groups.append([a, b])
        dataset_of = np.searchsorted(np.cumsum(plan["sizes"]), ids, side="right").astype(np.int32)
        result = keep_first(
            buckets_from_groups(len(ids), groups_per_band),
            signatures,
            codes,
            offsets,
            dataset_of,
            ngram=plan["ngram"],
            threshold=plan["threshold"],
            max_scan=plan["max_scan"],
            cross_dataset=plan["cross_dataset"],
        )
        removed = np.flatnonzero(~result.kept)
        kept_for = np.full(records, -1, dtype=np.int64)
        similarity = np.zeros(records)
        stage = np.zeros(records, dtype=np.int8)
        kept_for[ids[removed]] = ids[result.kept_for[removed]]
        similarity[ids[removed]] = result.similarity[removed]
        stage[ids[removed]] = result.stage[removed]
        ranks = np.searchsorted(np.array(starts), ids[removed], side="right") - 1
        for task in range(self.tasks):
            positions = ids[removed][ranks == task] - starts[task]
            atomic_write_bytes(self.work / "cluster" / f"{task:06d}.remove", np.sort(positions).astype("<u4").tobytes())
        save_arrays(self.work / "decisions.npz", kept_for=kept_for, similarity=similarity, stage=stage)
        atomic_write_text(self.work / "comparisons.json", json.dumps(result.stats) + "\n")
        return
        yield


def _reorder_codes(encoded: Encoded, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(encoded.offsets)[order]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    pieces = [encoded.codes[encoded.offsets[i] : encoded.offsets[i + 1]] for i in order]
    codes = np.concatenate(pieces) if pieces else np.empty(0, np.uint16)
    return codes, offsets


class KeptRows(PipelineStep):
    """The rows datatrove's filter let through, as one JSONL shard per task (global index first)."""

    name = "sfmed kept rows"

    def __init__(self, work: str) -> None:
        super().__init__()
        self.work = Path(work)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        lines = [
            json.dumps([int(d.id), d.metadata["dataset"], d.metadata["row"]], ensure_ascii=False) + "\n" for d in data
        ]
        atomic_write_text(self.work / "kept" / f"{rank:05d}.jsonl", "".join(lines))
        return
        yield


class Outputs(PipelineStep):
    """The native engine's outputs from the kept shards and the decisions."""

    name = "sfmed outputs"

    def __init__(self, work: str, config: dict[str, Any], plan: dict[str, Any], tasks: int) -> None:
        super().__init__()
        self.work, self.config, self.plan, self.tasks = Path(work), config, plan, tasks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        config, plan = DedupConfig(**self.config), self.plan
        kept_rows: list[list[dict[str, Any]]] = [[] for _ in plan["names"]]
        for task in range(self.tasks):
            for line in (self.work / "kept" / f"{task:05d}.jsonl").read_text(encoding="utf-8").splitlines():
                _, dataset, row = json.loads(line)
                kept_rows[dataset].append(row)
        with np.load(self.work / "decisions.npz") as decisions:
            result = KeepResult(
                kept_for=decisions["kept_for"],
                similarity=decisions["similarity"],
                stage=decisions["stage"],
                stats=json.loads((self.work / "comparisons.json").read_text(encoding="utf-8")),
            )
        write_outputs(
            Path(config.output_dir),
            config,
            plan["names"],
            plan["ids"],
            kept_rows,
            plan["sizes"],
            result,
            np.array(plan["short"], dtype=bool),
            {"engine": {"datatrove_work": str(self.work), "tasks": self.tasks, "executor": config.executor}},
        )
        return
        yield


class DatatroveDedup:
    def __init__(self, config: DedupConfig) -> None:
        config.resolve()
        self.config = config
        self.out = Path(config.output_dir)

    def plan(self) -> dict[str, Any]:
        config = self.config
        datasets = [read_dataset(path, entry) for path, entry in zip(config.files, config.entries, strict=True)]
        bands, rows = fitted_bands(config)
        short = []
        for dataset in datasets:
            short += (np.diff(encode(dataset.texts)[1]) < config.ngram).tolist()
        return {
            "names": [d.name for d in datasets],
            "sizes": [len(d.rows) for d in datasets],
            "ids": [record_id for d in datasets for record_id in d.ids],
            "short": short,
            "records": sum(len(d.rows) for d in datasets),
            "bands": bands,
            "rows": rows,
            "num_perm": config.num_perm,
            "ngram": config.ngram,
            "threshold": config.threshold,
            "max_scan": config.max_scan,
            "cross_dataset": config.cross_dataset,
        }

    def work_folder(self) -> Path:
        config = self.config
        key = {
            "inputs": [file_digest(path) for path in config.files],
            "parameters": [config.ngram, config.num_perm, config.threshold, fitted_bands(config), config.seed],
            "keep": [config.max_scan, config.cross_dataset, config.tasks],
            "normalisation": NORMALISATION_VERSION,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.out / ".datatrove" / digest

    def executors(self) -> list[Any]:
        config = self.config
        check_outputs_are_not_inputs(self.out, config.files)
        work = self.work_folder()
        plan = self.plan()
        minhash = MinhashConfig(
            n_grams=config.ngram,
            num_buckets=plan["bands"],
            hashes_per_bucket=plan["rows"],
            seed=config.seed,
            hash_config=HashConfig(precision=32),
        )
        tasks = min(config.tasks, max(plan["records"], 1))
        reader = ShardReader(config.files, plan["sizes"], config.entries)
        signatures = SfmedSignature(str(work / "signatures"), minhash, config.num_perm, config.seed)
        candidates = CandidateRecords(str(work), plan["records"], config.num_perm, config.ngram, config.seed)
        stages = [
            ("signatures", [reader, signatures], tasks),
            (
                "buckets",
                [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=minhash)],
                plan["bands"],
            ),
            ("candidates", [reader, candidates], tasks),
            ("cluster", [KeepRule(str(work), plan, tasks)], 1),
            ("filter", [reader, MinhashDedupFilter(str(work / "cluster")), KeptRows(str(work))], tasks),
            ("outputs", [Outputs(str(work), asdict(config), plan, tasks)], 1),
        ]
        executors: list[Any] = []
        for name, pipeline, stage_tasks in stages:
            executors.append(self._executor(name, pipeline, stage_tasks, work, executors[-1] if executors else None))
        return executors

    def _executor(self, name: str, pipeline: list, tasks: int, work: Path, depends: Any) -> Any:
        config = self.config
        options = dict(config.executor_options or {})
        common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": str(work / "logging" / name), "depends": depends}
        if config.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            return LocalPipelineExecutor(**common, workers=min(config.workers, tasks), **options)
        if config.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            options.setdefault("job_name", f"sfmed_dedup_{name}")
            return SlurmPipelineExecutor(**common, **options)
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(**common, **options)

    def run(self) -> list[Path]:
        started = time.perf_counter()
        executors = self.executors()
        executors[-1].run()  # runs (local) or submits (Slurm, Ray) its dependencies first
        if self.config.executor != "local" and not (self.out / "dedup_report.json").exists():
            print(f"sfmed data dedup: datatrove stages submitted; outputs appear in {self.out} when they finish")
            return []
        print(f"sfmed data dedup (datatrove): {time.perf_counter() - started:.1f} s", flush=True)
        names = [Path(path).name for path in self.config.files]
        return [*(self.out / name for name in names), self.out / "removed.jsonl", self.out / "dedup_report.json"]
