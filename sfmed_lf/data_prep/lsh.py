"""Locality-sensitive hashing over MinHash signatures, and the clusters of near-duplicates it finds.

Banding (Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", §3.4): split the k signature rows into b bands
of r rows; two records become candidates when all r rows of some band agree, which happens with probability
1 − (1 − s^r)^b for Jaccard similarity s. (b, r) is chosen to minimise the equally weighted areas of false positives
(below the threshold) and false negatives (above it). Candidates are then confirmed by their estimated Jaccard
(fraction of equal signature entries) >= threshold, which removes the banding's false positives.

Clusters are the connected components of confirmed pairs (union-find). The kept record of a cluster is its first
occurrence in input order, so the result is deterministic.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _collision_area(threshold: float, bands: int, rows: int, above: bool) -> float:
    grid = np.linspace(threshold, 1.0, 201) if above else np.linspace(0.0, threshold, 201)
    probability = 1 - (1 - grid**rows) ** bands
    return float(np.trapezoid(1 - probability if above else probability, grid))


def band_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) with bands·rows <= num_perm minimising false-positive + false-negative area."""
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            error = _collision_area(threshold, bands, rows, False) + _collision_area(threshold, bands, rows, True)
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        for index, key in enumerate(block):
            buckets[key.tobytes()].append(index)
        for members in buckets.values():
            if len(members) > 1:
                first = members[0]  # a star per bucket is enough for connected components
                pairs.update((first, other) for other in members[1:])
    return pairs


class UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        root_a, root_b = self.find(first), self.find(second)
        if root_a != root_b:  # the smaller index stays the root: the first occurrence is kept
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def duplicate_clusters(signatures: np.ndarray, threshold: float) -> list[list[int]]:
    """Clusters of two or more records, each sorted, its first element the record to keep; in input order."""
    bands, rows = band_parameters(threshold, signatures.shape[1])
    union = UnionFind(len(signatures))
    for first, second in sorted(candidate_pairs(signatures, bands, rows)):
        if np.mean(signatures[first] == signatures[second]) >= threshold:
            union.union(first, second)
    clusters: dict[int, list[int]] = defaultdict(list)
    for index in range(len(signatures)):
        clusters[union.find(index)].append(index)
    return sorted((members for members in clusters.values() if len(members) > 1), key=lambda m: m[0])
