"""Character n-gram sets of normalised text and their Jaccard similarity (near-repeat checks)."""

from __future__ import annotations

from sfmed_lf.text.normalize import comparison_key


def char_ngrams(text: str, n: int = 3) -> frozenset[str]:
    """The character n-grams of ``comparison_key(text)``; a text shorter than n is one n-gram."""
    key = comparison_key(text)
    return frozenset(key[i : i + n] for i in range(max(len(key) - n + 1, 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0
