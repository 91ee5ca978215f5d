"""Locality-sensitive hashing over MinHash signatures: which records share a bucket (candidates for comparison).

Banding (Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", §3.4): split the signature into b bands of r
rows; two records become candidates when all r rows of some band agree, which happens with probability
1 − (1 − s^r)^b for Jaccard similarity s. Candidates are confirmed afterwards by their exact Jaccard
(``keep.py``), so banding must above all *find* the pairs at the threshold: (b, r) is the one with the fewest
expected candidates below the threshold (area under the S-curve on [0, t]) among those that find a pair exactly at
the threshold with probability >= ``recall_at_threshold``. Pairs above the threshold are found more often still.

Buckets are exact: records share a bucket when their r band values are equal (a 64-bit key sorts them, and equal
keys are checked value by value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

RECALL_AT_THRESHOLD = 0.99


def collision_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    return 1 - (1 - np.asarray(similarity, dtype=float) ** rows) ** bands


def band_parameters(
    threshold: float, num_perm: int, recall_at_threshold: float = RECALL_AT_THRESHOLD
) -> tuple[int, int]:
    """(bands, rows per band), bands·rows <= num_perm; see the module docstring."""
    below = np.linspace(0.0, threshold, 401)
    best, best_area = (num_perm, 1), float("inf")
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if collision_probability(threshold, bands, rows) < recall_at_threshold:
            continue
        area = float(np.trapezoid(collision_probability(below, bands, rows), below))
        if area < best_area:
            best, best_area = (bands, rows), area
    return best


@dataclass
class Buckets:
    """Records sharing a band's values. ``of[i, band]``: record i's bucket in that band (-1: alone in it);
    bucket k's members, ascending: ``members[start[k]:start[k + 1]]``."""

    of: np.ndarray  # (records, bands) int64
    start: np.ndarray  # (buckets + 1,) int64
    members: np.ndarray  # int64

    @property
    def count(self) -> int:
        return len(self.start) - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.start)


@numba.njit(cache=True, boundscheck=False)
def _band_keys(signatures: np.ndarray, first: int, rows: int) -> np.ndarray:
    keys = np.empty(len(signatures), dtype=np.uint64)
    for index in range(len(signatures)):
        value = np.uint64(rows)
        for row in range(first, first + rows):
            value = (value ^ np.uint64(signatures[index, row])) * np.uint64(0x9E3779B97F4A7C15)
            value ^= value >> np.uint64(29)
        keys[index] = value
    return keys


@numba.njit(cache=True, boundscheck=False)
def _same_values(signatures: np.ndarray, order: np.ndarray, bounds: np.ndarray, first: int, rows: int) -> bool:
    """Whether every group of equal keys also has equal band values (a 64-bit key collision is astronomically rare)."""
    for group in range(len(bounds) - 1):
        head = order[bounds[group]]
        for position in range(bounds[group] + 1, bounds[group + 1]):
            other = order[position]
            for row in range(first, first + rows):
                if signatures[other, row] != signatures[head, row]:
                    return False
    return True


def _band_groups(signatures: np.ndarray, first: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Records in groups of two or more with equal values in one band: (members, group sizes), each group
    ascending and the groups one after the other."""
    keys = _band_keys(signatures, first, rows)
    order = np.argsort(keys, kind="stable")
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(keys[order])) + 1, [len(keys)]))
    sizes = np.diff(bounds)
    members = order[np.repeat(sizes, sizes) > 1]
    sizes = sizes[sizes > 1]
    if _same_values(signatures, members, np.concatenate(([0], np.cumsum(sizes))), first, rows):
        return members, sizes
    groups: dict[bytes, list[int]] = {}  # a 64-bit key collision: group by the values themselves
    for index in members:
        groups.setdefault(signatures[index, first : first + rows].tobytes(), []).append(int(index))
    shared = [sorted(group) for group in groups.values() if len(group) > 1]
    return np.array([i for g in shared for i in g], dtype=np.int64), np.array([len(g) for g in shared], np.int64)


def _assemble(records: int, bands: int, per_band: list[tuple[np.ndarray, np.ndarray]]) -> Buckets:
    of = np.full((records, bands), -1, dtype=np.int64)
    first_bucket = 0
    for band, (members, sizes) in enumerate(per_band):
        of[members, band] = first_bucket + np.repeat(np.arange(len(sizes)), sizes)
        first_bucket += len(sizes)
    sizes = np.concatenate([s for _, s in per_band]) if per_band else np.empty(0, np.int64)
    members = np.concatenate([m for m, _ in per_band]) if per_band else np.empty(0, np.int64)
    start = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    return Buckets(of=of, start=start, members=members.astype(np.int64))


def buckets(signatures: np.ndarray, bands: int, rows: int) -> Buckets:
    if bands * rows > signatures.shape[1]:
        raise ValueError(
            f"{bands} bands of {rows} rows need {bands * rows} signature entries, not {signatures.shape[1]}."
        )
    signatures = np.ascontiguousarray(signatures)
    return _assemble(len(signatures), bands, [_band_groups(signatures, b * rows, rows) for b in range(bands)])


def buckets_from_groups(records: int, groups_per_band: list[list[list[int]]]) -> Buckets:
    """The same structure from groups found elsewhere (datatrove's bucket stage), bands in order."""
    per_band = []
    for groups in groups_per_band:
        groups = [sorted(group) for group in groups if len(group) > 1]
        members = np.array([index for group in groups for index in group], dtype=np.int64)
        per_band.append((members, np.array([len(group) for group in groups], dtype=np.int64)))
    return _assemble(records, len(groups_per_band), per_band)
