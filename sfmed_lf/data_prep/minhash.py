"""MinHash signatures of character n-gram sets, compiled (numba) and batched over many records at once.

Broder 1997 ("On the resemblance and containment of documents"): for a random hash permutation pi,
P[min pi(A) = min pi(B)] = J(A, B) = |A ∩ B| / |A ∪ B|, so the fraction of equal signature entries estimates the
Jaccard similarity. Here:

- text is normalised first (NFKC, lower case, everything but letters, digits and CJK characters removed), so
  punctuation edits do not change the set; a text shorter than n characters is one shingle (short records are
  still compared);
- a shingle's hash is a polynomial hash of its code points passed through a 64-bit finaliser (murmur3's fmix64),
  so that the linear permutations below see well-mixed values; deterministic across processes and machines;
- the k permutations are multiply-shift hashes (Dietzfelbinger et al. 1997): pi_i(x) = (a_i·x + b_i) mod 2^64,
  upper 32 bits, with odd a_i drawn from ``seed``. Taking the upper bits is monotone, so the minimum is taken over
  the 64-bit values and shifted once per record and permutation.

The kernel keeps the k running minima of one record in registers and feeds them eight shingles at a time. The
normalised code points are returned with the signatures: the exact Jaccard of candidate pairs is computed from them
(``exact_jaccard``), so no decision rests on the signature estimate alone.
"""

from __future__ import annotations

import unicodedata

import numba
import numpy as np

from sfmed_lf.text.normalize import NOT_WORD as _NOT_WORD
from sfmed_lf.text.normalize import comparison_key as normalize  # noqa: F401 - the key dedup callers hash

_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-style prime for the rolling hash of code points
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
# upper bound of a signature entry: datatrove's bucket reader treats the largest uint32 as "past the end"
SIGNATURE_MAX = np.uint32(0xFFFFFFFE)


def _fullwidth_to_ascii(texts: list[str]) -> str:
    """All texts joined, with full-width forms U+FF01-FF5E and the ideographic space replaced by their NFKD images.

    Those images are single ASCII characters, so lengths are kept and NFKC of the result equals NFKC of the input
    (NFKC composes the NFKD decomposition, which this only applies early). Most Chinese text is NFKC-stable after
    this, and ``unicodedata.is_normalized`` is far cheaper than ``normalize``.
    """
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).copy()
    full_width = (codes >= 0xFF01) & (codes <= 0xFF5E)
    codes[full_width] -= np.uint32(0xFEE0)
    codes[codes == 0x3000] = 0x20
    return codes.tobytes().decode("utf-32-le", "surrogatepass")


def normalize_batch(texts: list[str]) -> list[str]:
    """``[normalize(t) for t in texts]``, NFKC only where a text is not already NFKC-stable."""
    mapped = _fullwidth_to_ascii(texts)
    result, start = [], 0
    for text in texts:
        piece = mapped[start : start + len(text)]
        start += len(text)
        if not unicodedata.is_normalized("NFKC", piece):
            piece = unicodedata.normalize("NFKC", piece)
        result.append(_NOT_WORD.sub("", piece.lower()))
    return result


def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised texts as one array of code points (uint16 when all are in the Basic Multilingual Plane, as Chinese
    text almost always is: half the memory; else uint32) and the (len(texts) + 1) offsets of each text in it."""
    normalized = normalize_batch(texts)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(text) for text in normalized], out=offsets[1:])
    codes = np.frombuffer("".join(normalized).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return (codes.astype(np.uint16) if not len(codes) or codes.max() < 0x10000 else codes), offsets


@numba.njit(cache=True, inline="always")
def _fmix64(value: np.uint64) -> np.uint64:
    value ^= value >> np.uint64(33)
    value *= np.uint64(0xFF51AFD7ED558CCD)
    value ^= value >> np.uint64(33)
    value *= np.uint64(0xC4CEB9FE1A85EC53)
    value ^= value >> np.uint64(33)
    return value


@numba.njit(cache=True, boundscheck=False)
def _shingle_hashes_into(codes: np.ndarray, start: int, end: int, ngram: int, out: np.ndarray) -> int:
    """Hashes of the n-grams of codes[start:end] into ``out``; returns how many (one if shorter than n)."""
    width = min(ngram, end - start)
    count = max(end - start - width + 1, 1)
    for position in range(count):
        value = np.uint64(width)
        for offset in range(width):
            value = value * _MULTIPLIER + np.uint64(codes[start + position + offset])
        out[position] = _fmix64(value)
    return count


@numba.njit(cache=True, boundscheck=False)
def _signatures(codes: np.ndarray, offsets: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    records, num_perm = len(offsets) - 1, len(a)
    longest = 1
    for index in range(records):
        longest = max(longest, offsets[index + 1] - offsets[index])
    hashes = np.empty(longest, dtype=np.uint64)
    minima = np.empty(num_perm, dtype=np.uint64)
    result = np.empty((records, num_perm), dtype=np.uint32)
    for index in range(records):
        count = _shingle_hashes_into(codes, offsets[index], offsets[index + 1], ngram, hashes)
        minima[:] = _ALL_ONES
        position = 0
        while position + 8 <= count:  # eight shingles per pass over the k minima: a few loads, many multiplies
            x0, x1, x2, x3 = hashes[position], hashes[position + 1], hashes[position + 2], hashes[position + 3]
            x4, x5, x6, x7 = hashes[position + 4], hashes[position + 5], hashes[position + 6], hashes[position + 7]
            for k in range(num_perm):
                ak, bk = a[k], b[k]
                low = min(min(ak * x0 + bk, ak * x1 + bk), min(ak * x2 + bk, ak * x3 + bk))
                high = min(min(ak * x4 + bk, ak * x5 + bk), min(ak * x6 + bk, ak * x7 + bk))
                minima[k] = min(minima[k], min(low, high))
            position += 8
        while position < count:
            x = hashes[position]
            for k in range(num_perm):
                minima[k] = min(minima[k], a[k] * x + b[k])
            position += 1
        for k in range(num_perm):
            result[index, k] = min(np.uint32(minima[k] >> np.uint64(32)), SIGNATURE_MAX)
    return result


@numba.njit(cache=True, boundscheck=False)
def _all_shingle_hashes(codes: np.ndarray, offsets: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    records = len(offsets) - 1
    starts = np.zeros(records + 1, dtype=np.int64)
    for index in range(records):
        starts[index + 1] = starts[index] + max(offsets[index + 1] - offsets[index] - ngram + 1, 1)
    flat = np.empty(starts[-1], dtype=np.uint64)
    for index in range(records):
        _shingle_hashes_into(codes, offsets[index], offsets[index + 1], ngram, flat[starts[index] :])
    return flat, starts


def shingle_hashes(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Every shingle hash of every text (repeats kept) and the (len(texts) + 1) row offsets: the input other
    MinHash engines take as pre-hashed tokens."""
    return _all_shingle_hashes(*encode(texts), ngram)


@numba.njit(cache=True, boundscheck=False)
def shingle_set(codes: np.ndarray, start: int, end: int, ngram: int) -> np.ndarray:
    """Sorted distinct shingle hashes of codes[start:end]."""
    hashes = np.empty(max(end - start, 1), dtype=np.uint64)
    count = _shingle_hashes_into(codes, start, end, ngram, hashes)
    hashes = np.sort(hashes[:count])
    distinct = 1
    for position in range(1, count):
        if hashes[position] != hashes[distinct - 1]:
            hashes[distinct] = hashes[position]
            distinct += 1
    return hashes[:distinct]


@numba.njit(cache=True, boundscheck=False)
def sorted_jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two sorted arrays of distinct values."""
    i = j = common = 0
    while i < len(first) and j < len(second):
        if first[i] == second[j]:
            common += 1
            i += 1
            j += 1
        elif first[i] < second[j]:
            i += 1
        else:
            j += 1
    return common / (len(first) + len(second) - common)


def exact_jaccard(first: str, second: str, ngram: int) -> float:
    """Jaccard similarity of the two texts' normalised n-gram sets (what ``sfmed data dedup`` confirms with)."""
    codes, offsets = encode([first, second])
    return sorted_jaccard(
        shingle_set(codes, offsets[0], offsets[1], ngram), shingle_set(codes, offsets[1], offsets[2], ngram)
    )


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1) -> None:
        generator = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = generator.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = generator.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def signatures_of_codes(self, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """uint32 array (records, num_perm) of texts already ``encode``d."""
        return _signatures(codes, offsets, self.ngram, self.a, self.b)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """uint32 array (len(texts), num_perm)."""
        return self.signatures_of_codes(*encode(texts))

    def shingle_set(self, text: str) -> np.ndarray:
        """The sorted distinct shingle hashes of one text (as the signature sees them)."""
        codes, offsets = encode([text])
        return shingle_set(codes, offsets[0], offsets[1], self.ngram)


def estimated_jaccard(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.mean(first == second))
