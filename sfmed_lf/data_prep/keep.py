"""Which record is kept: the first occurrence, and a later record is removed only when it is itself within the
threshold of an earlier *kept* record (no chains).

Records are visited in input order. Record i is compared with the kept records that share a bucket with it
(``lsh.Buckets``); it is removed for the earliest of them whose exact Jaccard with it (normalised n-gram sets,
``minhash.shingle_set``) reaches the threshold, else it is kept. So every removed record is within the threshold
of the record kept for it, and a run of records each similar only to its neighbour (overlapping windows of one
text) keeps one record every time the similarity to the last kept one falls below the threshold, instead of
collapsing into one connected component.

Before the exact comparison, a pair is skipped when its signatures agree far less than a pair at the threshold
would: first on one-bit sketches of 128 entries (bits agree with probability (1 + J) / 2; 16 bytes a record, in
cache), then on all k entries, each time by more than 4.5 standard deviations. A pair at the threshold falls below
either bound with probability < 2e-5: the estimate only saves work and never decides a removal. A bucket shared by
very many kept records (long boilerplate) is scanned for at most ``max_scan`` of them per record; truncated scans
are counted in the report (a near-duplicate pair also shares buckets made of its own text, so it is still found
there).

Two passes (SF-Med §3.2): inside each dataset first (only records of the same dataset are compared), then across
datasets among what each kept (only records of different datasets: two kept records of one dataset were already
compared, or are not candidates). The across pass is the same as banding the union of the kept records afresh, as
band values are per record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from sfmed_lf.data_prep.lsh import Buckets
from sfmed_lf.data_prep.minhash import shingle_set, sorted_jaccard

# counters of one pass, in this order in the stats array
STATS = ("prefilter_comparisons", "exact_comparisons", "truncated_scans")


def min_estimate(threshold: float, num_perm: int) -> float:
    return threshold - 4.5 * math.sqrt(threshold * (1 - threshold) / num_perm)


@numba.njit(cache=True, boundscheck=False)
def bit_sketches(signatures: np.ndarray) -> np.ndarray:
    """The lowest bit of each of the first 128 signature entries, packed: (records, 2) uint64. Two records' bits
    agree with probability (1 + J) / 2 (Li & König 2010, b-bit minwise hashing with b = 1), and 16 bytes a record
    stay in cache where the full signatures (512 bytes) do not."""
    sketches = np.zeros((len(signatures), 2), dtype=np.uint64)
    for index in range(len(signatures)):
        for k in range(min(128, signatures.shape[1])):
            sketches[index, k >> 6] |= np.uint64(signatures[index, k] & 1) << np.uint64(k & 63)
    return sketches


def max_bit_differences(threshold: float, num_perm: int) -> int:
    """The most differing sketch bits a pair at the threshold shows except with probability < 1e-5 (4.5 sd)."""
    width = min(128, num_perm)
    agree = (1 + threshold) / 2
    return int(width - math.ceil(width * agree - 4.5 * math.sqrt(width * agree * (1 - agree))))


@numba.njit(cache=True, inline="always")
def _popcount(value: np.uint64) -> int:
    value = value - ((value >> np.uint64(1)) & np.uint64(0x5555555555555555))
    value = (value & np.uint64(0x3333333333333333)) + ((value >> np.uint64(2)) & np.uint64(0x3333333333333333))
    value = (value + (value >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((value * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, boundscheck=False)
def _agreement(signatures: np.ndarray, first: int, second: int, length: int) -> float:
    equal = 0
    for k in range(length):
        equal += signatures[first, k] == signatures[second, k]
    return equal / length


@numba.njit(cache=True, boundscheck=False)
def _keep_pass(
    eligible: np.ndarray,
    same_dataset: bool,
    dataset: np.ndarray,
    of: np.ndarray,
    start: np.ndarray,
    members: np.ndarray,
    signatures: np.ndarray,
    sketches: np.ndarray,
    codes: np.ndarray,
    offsets: np.ndarray,
    ngram: int,
    threshold: float,
    max_differences: int,
    floor: float,
    max_scan: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    records, bands = of.shape
    full = signatures.shape[1]
    kept_lists = np.empty(len(members), dtype=np.int64)
    kept_count = np.zeros(len(start) - 1, dtype=np.int64)
    seen_by = np.full(records, -1, dtype=np.int64)
    kept_for = np.full(records, -1, dtype=np.int64)
    similarity = np.zeros(records)
    stats = np.zeros(3, dtype=np.int64)
    for i in range(records):
        if not eligible[i]:
            continue
        best, best_similarity = -1, 0.0
        own = np.empty(0, dtype=np.uint64)
        own_ready = False
        for band in range(bands):
            bucket = of[i, band]
            if bucket < 0:
                continue
            scanned = 0
            for position in range(kept_count[bucket]):
                j = kept_lists[start[bucket] + position]
                if best >= 0 and j >= best:
                    break  # kept lists are ascending: nothing earlier than the best found is left here
                if seen_by[j] == i or (dataset[j] == dataset[i]) != same_dataset:
                    continue  # inside: other datasets' records wait for the across pass; across: pairs were seen
                seen_by[j] = i
                if scanned == max_scan:
                    stats[2] += 1
                    break
                scanned += 1
                stats[0] += 1
                # the bit sketches (in cache) reject most candidates; then the whole signature
                differences = _popcount(sketches[i, 0] ^ sketches[j, 0]) + _popcount(sketches[i, 1] ^ sketches[j, 1])
                if differences > max_differences or _agreement(signatures, i, j, full) < floor:
                    continue
                if not own_ready:
                    own = shingle_set(codes, offsets[i], offsets[i + 1], ngram)
                    own_ready = True
                stats[1] += 1
                value = sorted_jaccard(own, shingle_set(codes, offsets[j], offsets[j + 1], ngram))
                if value >= threshold:
                    best, best_similarity = j, value
        if best >= 0:
            kept_for[i], similarity[i] = best, best_similarity
        else:
            for band in range(bands):
                bucket = of[i, band]
                if bucket >= 0:
                    kept_lists[start[bucket] + kept_count[bucket]] = i
                    kept_count[bucket] += 1
    return kept_for, similarity, stats


@dataclass
class KeepResult:
    """``kept_for[i]``: the record kept for removed record i (-1: i is kept); ``similarity[i]``: their exact
    Jaccard; ``stage[i]``: 0 kept, 1 removed inside its dataset, 2 removed across datasets."""

    kept_for: np.ndarray
    similarity: np.ndarray
    stage: np.ndarray
    stats: dict[str, dict[str, int]]

    @property
    def kept(self) -> np.ndarray:
        return self.kept_for < 0


def keep_first(
    buckets: Buckets,
    signatures: np.ndarray,
    codes: np.ndarray,
    offsets: np.ndarray,
    dataset: np.ndarray,
    *,
    ngram: int,
    threshold: float,
    max_scan: int,
    cross_dataset: bool = True,
) -> KeepResult:
    records = len(signatures)
    floor = min_estimate(threshold, signatures.shape[1])
    differences = max_bit_differences(threshold, signatures.shape[1])
    common = (
        buckets.of,
        buckets.start,
        buckets.members,
        signatures,
        bit_sketches(signatures),
        codes,
        offsets,
        ngram,
        threshold,
        differences,
        floor,
        max_scan,
    )
    kept_for, similarity, counts = _keep_pass(np.ones(records, dtype=np.bool_), True, dataset, *common)
    stage = np.where(kept_for >= 0, 1, 0).astype(np.int8)
    stats = {"within": dict(zip(STATS, counts.tolist(), strict=True))}
    if cross_dataset:
        across_for, across_similarity, counts = _keep_pass(kept_for < 0, False, dataset, *common)
        removed = across_for >= 0
        kept_for[removed], similarity[removed], stage[removed] = across_for[removed], across_similarity[removed], 2
        stats["across"] = dict(zip(STATS, counts.tolist(), strict=True))
    return KeepResult(kept_for=kept_for, similarity=similarity, stage=stage, stats=stats)
