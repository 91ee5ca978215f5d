"""Near-duplicate removal (SF-Med §3.2): MinHash-LSH candidates over character n-grams, confirmed by exact
Jaccard, first inside each dataset, then across the union of what each dataset kept. A record is removed only when
it is within the threshold of the earlier record kept for it (``keep.py``: no chains).

Outputs in ``output_dir``: one file per input with the kept rows (same name and format), ``removed.jsonl`` (per
kept record and stage: the records removed for it and the exact Jaccard of each to it) and ``dedup_report.json``
(counts, cluster sizes, similarity quantiles, comparison counters). Signatures and normalised texts are computed by
a process pool in chunks and cached per chunk under ``.signatures/`` (keyed by the input's content and the
parameters), so a killed run re-computes only the chunks it had not finished. ``engine: datatrove`` runs the same
parameters and keep rule as datatrove pipeline stages (``dedup_datatrove.py``).
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sfmed_lf.data_prep.config import DedupConfig
from sfmed_lf.data_prep.keep import KeepResult, keep_first
from sfmed_lf.data_prep.lsh import band_parameters, buckets
from sfmed_lf.data_prep.minhash import MinHasher, encode
from sfmed_lf.errors import DataError
from sfmed_lf.formats.datasets import LocalDataset, dataset_from_file
from sfmed_lf.formats.lf_rows import DatasetEntry, whole_text
from sfmed_lf.utils.io import atomic_open, atomic_write_bytes, atomic_write_text, read_json
from sfmed_lf.utils.provenance import check_provenance, file_digest

NORMALISATION_VERSION = 3  # bump when normalisation or shingle hashing changes: cached signatures become stale


@dataclass
class Dataset:
    path: str
    rows: list[dict[str, Any]]
    texts: list[str]
    ids: list[str]

    @property
    def name(self) -> str:
        return Path(self.path).name


def read_dataset(path: str, entry: dict[str, Any] | None = None) -> Dataset:
    """The rows of one LF data file read with its dataset_info ``entry`` (each row's form inferred without one), the
    whole text of each (every turn, both answers of a ranking row) and ids."""
    dataset = dataset_from_file(path)
    if entry:
        dataset = LocalDataset(DatasetEntry.parse(Path(path).name, entry, path), None, dataset.files)
    records = list(dataset.records())
    if not records:
        raise DataError(f"datasets: {path} holds no rows.")
    return Dataset(
        path=path,
        rows=[row for _, row, _ in records],
        texts=[whole_text(sample) for _, _, sample in records],
        ids=[f"{Path(path).name}:{location.row}" for location, _, _ in records],
    )


@dataclass
class Encoded:
    """Signatures (records, num_perm) and normalised code points (flat, with per-record offsets)."""

    signatures: np.ndarray
    codes: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def concatenate(parts: list[Encoded], num_perm: int) -> Encoded:
        if not parts:
            return Encoded(np.empty((0, num_perm), np.uint32), np.empty(0, np.uint16), np.zeros(1, np.int64))
        offsets, shift = [np.zeros(1, dtype=np.int64)], 0
        for part in parts:
            offsets.append(part.offsets[1:] + shift)
            shift += int(part.offsets[-1])
        return Encoded(
            signatures=np.concatenate([p.signatures for p in parts]),
            codes=np.concatenate([p.codes for p in parts]),
            offsets=np.concatenate(offsets),
        )


def encode_chunk(args: tuple[list[str], int, int, int]) -> Encoded:
    texts, num_perm, ngram, seed = args
    codes, offsets = encode(texts)
    return Encoded(MinHasher(num_perm, ngram, seed).signatures_of_codes(codes, offsets), codes, offsets)


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """An .npz written atomically (a killed run leaves the complete file or none)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_chunks(files: list[Path], num_perm: int) -> Encoded:
    """The chunks one after the other, read straight into arrays of the final size (no second copy in memory)."""
    records = characters = 0
    code_type = np.uint16
    for file in files:
        with np.load(file) as archive:
            offsets = archive["offsets"]
            records, characters = records + len(offsets) - 1, characters + int(offsets[-1])
            if archive["wide"]:
                code_type = np.uint32
    result = Encoded(
        np.empty((records, num_perm), dtype=np.uint32), np.empty(characters, code_type), np.zeros(records + 1, np.int64)
    )
    records = characters = 0
    for file in files:
        with np.load(file) as archive:
            offsets = archive["offsets"]
            count, length = len(offsets) - 1, int(offsets[-1])
            result.signatures[records : records + count] = archive["signatures"]
            result.codes[characters : characters + length] = archive["codes"]
            result.offsets[records + 1 : records + count + 1] = offsets[1:] + characters
            records, characters = records + count, characters + length
    return result


def fitted_bands(config: DedupConfig) -> tuple[int, int]:
    if config.bands is not None:
        return config.bands, config.num_perm // config.bands
    return band_parameters(config.threshold, config.num_perm)


def dedup_texts(texts: list[str], config: DedupConfig, dataset: np.ndarray | None = None) -> KeepResult:
    """The native engine on texts in memory (benchmarks, tests): which are kept, and for whom the others go."""
    encoded = encode_chunk((texts, config.num_perm, config.ngram, config.seed))
    bands, rows = fitted_bands(config)
    return keep_first(
        buckets(encoded.signatures, bands, rows),
        encoded.signatures,
        encoded.codes,
        encoded.offsets,
        np.zeros(len(texts), dtype=np.int32) if dataset is None else dataset,
        ngram=config.ngram,
        threshold=config.threshold,
        max_scan=config.max_scan,
        cross_dataset=config.cross_dataset,
    )


class DedupStep:
    def __init__(self, config: DedupConfig) -> None:
        config.resolve()
        self.config = config
        self.out = Path(config.output_dir)

    def encoded(self, dataset: Dataset) -> list[Path]:
        """Signatures and normalised texts of one dataset, chunk by chunk through the pool, each chunk cached; the
        chunk files in order."""
        config = self.config
        cache = self.out / ".signatures" / dataset.name
        inputs = {
            "file_sha256": file_digest(dataset.path),
            "ngram": config.ngram,
            "num_perm": config.num_perm,
            "seed": config.seed,
            "chunk_size": config.chunk_size,
            "normalisation": NORMALISATION_VERSION,
        }
        try:
            check_provenance(cache, inputs)
        except DataError:  # the input or the parameters changed: the cached chunks are stale, start over
            for stale in cache.parent.glob(f"{cache.name}.*"):
                stale.unlink()
            check_provenance(cache, inputs)
        texts = dataset.texts
        chunks = [texts[start : start + config.chunk_size] for start in range(0, len(texts), config.chunk_size)]
        files = [cache.parent / f"{cache.name}.{index}.npz" for index in range(len(chunks))]
        todo = [index for index, file in enumerate(files) if not file.exists()]
        with tqdm(total=len(texts), desc=f"MinHash {dataset.name}", unit="record") as progress:
            progress.update(len(texts) - sum(len(chunks[i]) for i in todo))
            jobs = [(chunks[i], config.num_perm, config.ngram, config.seed) for i in todo]
            if config.num_proc == 1 or len(jobs) <= 1:
                results = map(encode_chunk, jobs)
                pool = None
            else:
                pool = ProcessPoolExecutor(max_workers=config.num_proc)
                results = pool.map(encode_chunk, jobs)
            try:
                for index, encoded in zip(todo, results, strict=True):
                    save_arrays(
                        files[index],
                        signatures=encoded.signatures,
                        codes=encoded.codes,
                        offsets=encoded.offsets,
                        wide=np.array(encoded.codes.dtype == np.uint32),
                    )
                    progress.update(len(chunks[index]))
            finally:
                if pool is not None:
                    pool.shutdown()
        return files

    def run(self) -> list[Path]:
        config = self.config
        clock = PhaseClock()
        check_outputs_are_not_inputs(self.out, config.files)
        datasets = [read_dataset(path, entry) for path, entry in zip(config.files, config.entries, strict=True)]
        clock.done("read")
        files = []
        for dataset in datasets:
            files += self.encoded(dataset)
            dataset.texts = []  # the normalised code points are all that is compared from here on
        encoded = load_chunks(files, config.num_perm)
        clock.done("signatures")
        membership = np.concatenate(
            [np.full(len(d.rows), index, dtype=np.int32) for index, d in enumerate(datasets)] or [np.empty(0, np.int32)]
        )
        bands, rows = fitted_bands(config)
        print(f"sfmed data dedup: {len(membership)} records, LSH {bands} bands x {rows} rows ...", flush=True)
        found = buckets(encoded.signatures, bands, rows)
        clock.done("banding")
        print(f"sfmed data dedup: {found.count} buckets; keep rule (exact Jaccard) ...", flush=True)
        result = keep_first(
            found,
            encoded.signatures,
            encoded.codes,
            encoded.offsets,
            membership,
            ngram=config.ngram,
            threshold=config.threshold,
            max_scan=config.max_scan,
            cross_dataset=config.cross_dataset,
        )
        clock.done("keep_rule")
        kept_rows, first = [], 0
        for dataset in datasets:
            kept = result.kept[first : first + len(dataset.rows)]
            kept_rows.append([row for row, keep in zip(dataset.rows, kept, strict=True) if keep])
            first += len(dataset.rows)
        extra = {"buckets": {"count": found.count, "largest": int(found.sizes().max(initial=0))}}
        short = np.diff(encoded.offsets) < config.ngram
        del encoded, found
        names, ids, sizes = (
            [d.name for d in datasets],
            [i for d in datasets for i in d.ids],
            [len(d.rows) for d in datasets],
        )
        written = write_outputs(self.out, config, names, ids, kept_rows, sizes, result, short, extra)
        clock.done("write")
        clock.add_to(self.out / "dedup_report.json")
        return written


class PhaseClock:
    """Wall and CPU seconds (this process and its finished children) per phase, and this process's peak memory
    so far, for the report."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.last = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        import resource

        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        return time.perf_counter(), cpu

    def done(self, phase: str) -> None:
        now = self._now()
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        self.phases[phase] = {
            "wall": round(now[0] - self.last[0], 2),
            "cpu": round(now[1] - self.last[1], 2),
            "peak_rss_gib": round(peak, 2),
        }
        self.last = now

    def add_to(self, report_path: Path) -> None:
        report = read_json(report_path, "sfmed data dedup")
        report["seconds"] = self.phases
        atomic_write_text(report_path, json.dumps(report, ensure_ascii=False, indent=2) + "\n")


def check_outputs_are_not_inputs(out: Path, paths: list[str]) -> None:
    for path in paths:
        if (out / Path(path).name).resolve() == Path(path).resolve():
            raise DataError(f"{path}: output_dir {out} would overwrite this input; choose another output_dir.")


def write_outputs(
    out: Path,
    config: DedupConfig,
    names: list[str],
    ids: list[str],
    kept_rows: list[list[dict[str, Any]]],
    dataset_sizes: list[int],
    result: KeepResult,
    short: np.ndarray,
    extra: dict[str, Any],
) -> list[Path]:
    """Kept rows per input file, ``removed.jsonl`` and ``dedup_report.json`` (shared by both engines)."""
    bands, rows = fitted_bands(config)
    report: dict[str, Any] = {
        "parameters": {**asdict(config), "bands": bands, "rows_per_band": rows},
        "datasets": {},
    }
    written, first = [], 0
    for name, size, kept_of_dataset in zip(names, dataset_sizes, kept_rows, strict=True):
        last = first + size
        stage = result.stage[first:last]
        report["datasets"][name] = {
            "records": size,
            "removed_within": int((stage == 1).sum()),
            "removed_across": int((stage == 2).sum()),
            "kept": int(result.kept[first:last].sum()),
            "short_records": int(short[first:last].sum()),
        }
        written.append(_write_rows(out / name, kept_of_dataset))
        first = last
    clusters: dict[tuple[int, int], list[int]] = {}
    for index in np.flatnonzero(~result.kept):
        clusters.setdefault((int(result.stage[index]), int(result.kept_for[index])), []).append(int(index))
    stage_names = {1: "within", 2: "across"}
    lines = [
        json.dumps(
            {
                "stage": stage_names[stage],
                "kept": ids[kept],
                "removed": [ids[m] for m in members],
                "similarity": [round(float(result.similarity[m]), 4) for m in members],
            },
            ensure_ascii=False,
        )
        + "\n"
        for (stage, kept), members in sorted(clusters.items())
    ]
    atomic_write_text(out / "removed.jsonl", "".join(lines))
    similarities = result.similarity[~result.kept]
    sizes = Counter(len(members) + 1 for members in clusters.values())
    totals = {key: sum(d[key] for d in report["datasets"].values()) for key in ("records", "kept")}
    report["total"] = {**totals, "removed": totals["records"] - totals["kept"]}
    report["clusters"] = {
        "count": len(clusters),
        "sizes": {str(size): count for size, count in sorted(sizes.items())},  # kept record + removed for it
        "largest": max(sizes, default=0),
    }
    quantiles = (("min", 0), ("p05", 0.05), ("median", 0.5), ("max", 1))
    report["removed_similarity"] = (
        {q: round(float(np.quantile(similarities, p)), 4) for q, p in quantiles} if len(similarities) else {}
    )
    report["comparisons"] = result.stats
    report.update(extra)
    atomic_write_text(out / "dedup_report.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return [*written, out / "removed.jsonl", out / "dedup_report.json"]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Streamed, one row a line (a JSON list for .json): no second copy of the corpus as one string."""
    as_list = path.suffix == ".json"
    with atomic_open(path, "w") as handle:
        if as_list:
            handle.write("[\n")
        for number, row in enumerate(rows):
            if as_list and number:
                handle.write(",\n")
            handle.write(json.dumps(row, ensure_ascii=False))
            if not as_list:
                handle.write("\n")
        if as_list:
            handle.write("\n]\n")
    return path


def run_dedup(config: DedupConfig) -> list[Path]:
    """The step, on the engine the config names."""
    if config.engine == "datatrove":
        from sfmed_lf.data_prep.dedup_datatrove import DatatroveDedup

        return DatatroveDedup(config).run()
    return DedupStep(config).run()
