"""MinHash-LSH dedup: speed against a plain datasketch loop, and precision/recall on planted near-duplicates.

    python benchmarks/bench_dedup.py                    # speed: 100k records of ~200 characters, extrapolated to 1M
    python benchmarks/bench_dedup.py --records 1000000  # the full million
    python benchmarks/bench_dedup.py --quality          # P/R on edited copies of real records (../shared/realdata)

Speed: records are ~200-character windows of real medical text (../shared/realdata, else the bundled corpus).
Baseline: datasketch ``MinHash(num_perm)`` with one ``update`` per shingle, record by record, on a subset of the
same records, in the same run; ours: ``MinHasher.signatures`` in a process pool (``num_proc``), then LSH
clustering of everything. Quality: half of the real records get an edited copy (random insertions or deletions of
~4 % of the characters, punctuation changed, sentences reordered); P and R of the removed records against the
planted copies at the default n-gram size and threshold.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from datasketch import MinHash

from sfmed_lf.data_prep.config import DedupConfig
from sfmed_lf.data_prep.dedup import chunk_signatures
from sfmed_lf.data_prep.lsh import duplicate_clusters
from sfmed_lf.data_prep.minhash import normalize
from sfmed_lf.data_prep.perturb import EDITS, near_duplicate
from sfmed_lf.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
DEFAULTS = DedupConfig(datasets=["-"], output_dir="-")


def real_texts() -> list[str]:
    texts = []
    for line in (REALDATA / "toyhom_cmdd_im_sample.jsonl").open():
        row = json.loads(line)
        texts.append(row["ask"] + row["answer"])
    for line in (REALDATA / "medicalgpt_sft_medical.jsonl").open():
        texts.append("".join(turn["value"] for turn in json.loads(line)["conversations"]))
    for line in (REALDATA / "zhongjing_huatuo26m_test.jsonl").open():
        row = json.loads(line)
        texts.append(row["instruction"][0] + row["output"][0])
    for line in (REALDATA / "zhongjing_cmtmedqa_test.jsonl").open():
        row = json.loads(line)
        texts.append("".join(q + a for q, a in row["history"]) + row["instruction"] + row["output"])
    return list(dict.fromkeys(text for text in texts if len(text) >= 20))


def corpus() -> str:
    if REALDATA.is_dir():
        return "".join(real_texts())
    return (ROOT / "sfmed_lf" / "resources" / "tiny_corpus.txt").read_text(encoding="utf-8")


def synthetic_records(count: int, seed: int = 0) -> list[str]:
    text = corpus()
    generator = random.Random(seed)
    starts = [generator.randrange(len(text) - 260) for _ in range(count)]
    return [text[s : s + generator.randint(150, 250)] for s in starts]


def datasketch_signature(text: str, num_perm: int, ngram: int) -> np.ndarray:
    minhash = MinHash(num_perm=num_perm)
    normalized = normalize(text)
    for shingle in {normalized[i : i + ngram] for i in range(max(1, len(normalized) - ngram + 1))}:
        minhash.update(shingle.encode("utf-8"))
    return minhash.hashvalues


def speed(records: int, baseline_records: int, num_proc: int) -> dict:
    texts = synthetic_records(records)
    config = DEFAULTS
    start = time.perf_counter()
    for text in texts[:baseline_records]:
        datasketch_signature(text, config.num_perm, config.ngram)
    baseline_per_record = (time.perf_counter() - start) / baseline_records
    start = time.perf_counter()
    chunks = [texts[i : i + config.chunk_size] for i in range(0, len(texts), config.chunk_size)]
    with ProcessPoolExecutor(max_workers=num_proc) as pool:
        jobs = [(chunk, config.num_perm, config.ngram, config.seed) for chunk in chunks]
        signatures = np.concatenate(list(pool.map(chunk_signatures, jobs)))
    hashing = time.perf_counter() - start
    start = time.perf_counter()
    clusters = duplicate_clusters(signatures, config.threshold)
    clustering = time.perf_counter() - start
    ours_per_record = (hashing + clustering) / records
    result = {
        "records": records,
        "mean_characters": sum(map(len, texts)) / len(texts),
        "num_proc": num_proc,
        "baseline_records": baseline_records,
        "datasketch_ms_per_record": 1e3 * baseline_per_record,
        "sfmed_hashing_s": hashing,
        "sfmed_lsh_s": clustering,
        "sfmed_ms_per_record": 1e3 * ours_per_record,
        "speedup_vs_datasketch": baseline_per_record / ours_per_record,
        "minutes_for_1M_extrapolated": ours_per_record * 1_000_000 / 60,
        "clusters_found": len(clusters),
    }
    print(
        f"{records} records (~{result['mean_characters']:.0f} chars), {num_proc} processes: hashing {hashing:.1f} s, "
        f"LSH {clustering:.1f} s; datasketch loop {result['datasketch_ms_per_record']:.3f} ms/record vs "
        f"{result['sfmed_ms_per_record']:.4f} ms/record: {result['speedup_vs_datasketch']:.1f}x; "
        f"1M records ≈ {result['minutes_for_1M_extrapolated']:.1f} min"
    )
    return result


def quality() -> dict:
    if not REALDATA.is_dir():
        raise SystemExit(f"--quality needs real records: {REALDATA} is absent.")
    originals = real_texts()
    generator = random.Random(0)
    records, planted, kinds = list(originals), set(), {}
    for index in generator.sample(range(len(originals)), len(originals) // 2):
        kind = generator.choice(EDITS)
        planted.add(len(records))
        kinds[len(records)] = kind
        records.append(near_duplicate(originals[index], kind, generator))
    config = DEFAULTS
    signatures = chunk_signatures((records, config.num_perm, config.ngram, config.seed))
    removed = {member for cluster in duplicate_clusters(signatures, config.threshold) for member in cluster[1:]}
    found = removed & planted
    result = {
        "originals": len(originals),
        "planted": len(planted),
        "removed": len(removed),
        "precision": len(found) / max(len(removed), 1),
        "recall": len(found) / len(planted),
        "missed_by_edit": {k: sum(1 for i in planted - removed if kinds[i] == k) for k in set(kinds.values())},
        "ngram": config.ngram,
        "threshold": config.threshold,
    }
    print(
        f"P {result['precision']:.3f}  R {result['recall']:.3f}  ({result['planted']} planted, "
        f"{result['removed']} removed; missed by edit: {result['missed_by_edit']})"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--baseline-records", type=int, default=2_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args()
    result = quality() if args.quality else speed(args.records, args.baseline_records, args.num_proc)
    name = "dedup_quality.json" if args.quality else "dedup_speed.json"
    atomic_write_text(ROOT / "benchmarks" / "results" / name, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
