"""MinHash signatures of Chinese character n-gram sets, vectorised over many records at once.

Broder 1997 ("On the resemblance and containment of documents"): for a random hash permutation pi,
P[min pi(A) = min pi(B)] = J(A, B) = |A ∩ B| / |A ∪ B|, so the fraction of equal signature entries estimates the
Jaccard similarity. Here:

- text is normalised first (NFKC, lower case, everything but letters, digits and CJK characters removed), so
  punctuation edits do not change the set; a text shorter than n characters is one shingle (short records are
  still compared);
- shingle hashes are a polynomial hash of the code points (numpy, uint64 wrap-around), computed for a whole chunk
  of texts in one pass and deterministic across processes (Python's ``hash`` of str is salted per process);
- the k permutations are multiply-shift hashes (Dietzfelbinger et al. 1997): pi_i(x) = (a_i·x + b_i) mod 2^64,
  upper 32 bits, with odd a_i drawn from ``seed``; no division, so the k×S product is three vector operations.

Groups of records are permuted as one (k, shingles) array, in place and small enough to stay in cache, and reduced
per record with ``np.minimum.reduceat``.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-style prime for the rolling hash of code points
_NOT_WORD = re.compile(r"[\W_]+")  # punctuation, spaces, symbols (in C, not a Python loop per character)


def normalize(text: str) -> str:
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """uint64 hashes of the character n-grams of ``normalize(text)`` (one shingle if shorter than n)."""
    flat, _ = batch_shingle_hashes([text], ngram)
    return flat


def _window_hashes(codes: np.ndarray, width: int) -> np.ndarray:
    """Rolling hash of every ``width``-character window of ``codes`` (uint64, wrapping)."""
    count = len(codes) - width + 1
    hashes = np.full(count, width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(width):
            hashes *= _MULTIPLIER
            hashes += codes[offset : offset + count]
    return hashes


def batch_shingle_hashes(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of many texts at once: (flat hashes, start offset of each text in them).

    Duplicate shingles inside a text are kept: they cannot change a minimum. The texts are concatenated and hashed
    in one pass; windows that cross from one text into the next are left out.
    """
    normalized = [normalize(text) for text in texts]
    lengths = np.array([len(text) for text in normalized], dtype=np.int64)
    codes = np.frombuffer("".join(normalized).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    counts = np.maximum(lengths - ngram + 1, 1)  # a short (or empty) text is one shingle
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    flat = np.zeros(int(counts.sum()), dtype=np.uint64)
    long_texts = lengths >= ngram
    if len(codes) >= ngram:
        windows = _window_hashes(codes, ngram)
        # flat entry j of text i is the window starting at starts[i] + (j - offsets[i])
        source = np.arange(len(flat)) + np.repeat(starts - offsets, counts)
        flat = windows[np.minimum(source, len(windows) - 1)]  # short texts' entries are overwritten below
    for index in np.flatnonzero(~long_texts):
        width = int(lengths[index])
        piece = codes[starts[index] : starts[index] + width]
        flat[offsets[index]] = _window_hashes(piece, width)[0] if width else np.uint64(0)
    return flat, offsets


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        generator = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = generator.integers(1, 2**63, size=(num_perm, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = generator.integers(0, 2**63, size=(num_perm, 1), dtype=np.uint64)

    def signatures(self, texts: list[str], block: int = 1 << 13) -> np.ndarray:
        """uint32 array (len(texts), num_perm)."""
        flat, offsets = batch_shingle_hashes(texts, self.ngram)
        ends = np.append(offsets[1:], len(flat))
        result = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        first = 0
        while first < len(texts):  # records in groups of about `block` shingles: the (k, block) product stays in cache
            last = int(np.searchsorted(ends, ends[first] - 1 + block, side="right"))
            last = max(last, first + 1)
            low, high = offsets[first], ends[last - 1]
            with np.errstate(over="ignore"):
                permuted = np.multiply(self.a, flat[low:high])
                np.add(permuted, self.b, out=permuted)
            np.right_shift(permuted, np.uint64(32), out=permuted)
            minima = np.minimum.reduceat(permuted, offsets[first:last] - low, axis=1)
            result[first:last] = minima.T
            first = last
        return result


def estimated_jaccard(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.mean(first == second))
