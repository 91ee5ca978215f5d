"""Character n-grams of normalised text and an inverted index that scores how much of each stored text reappears
in a query: what the guard's lexical check (prompts) and output check (memorized suffixes) measure.

Texts are compared in their comparison form (sfmed_lf/text/normalize.py: NFKC, lower case, letters and digits
only), so a score is blind to punctuation, whitespace, full-width forms, zero-width characters and case. N-grams
instead of whole strings make it degrade gracefully under edits: one substituted, inserted or deleted character
removes at most n of the stored text's n-grams.

The score is how much of the stored text reappears, times how specific that text is to one record::

    score(stored, query) = containment(stored, query) * distinctiveness(stored)
    containment = sum_{g in grams(stored) & grams(query)} w(g) / sum_{g in grams(stored)} w(g)
    distinctiveness = sum_{g in grams(stored)} w(g) / (|grams(stored)| * w_ref)

w(g) is a smoothed inverse document frequency over a background corpus (Sparck Jones 1972; the audited training
records) and w_ref the weight of an n-gram found in one background record only. Containment, unlike Jaccard
similarity (which MinHash estimates), stays at 1.0 when the query wraps the stored text in a prefix, a suffix, a
system message or other turns; the weights make n-grams every medical question shares (请问, 怎么) count less than
those of a name or a phone number. Distinctiveness keeps text that many training records share (boilerplate
advice the model has memorized too) from scoring high when it reappears: repeating it discloses no one's record.
With ``reference_weight=None`` distinctiveness is 1: the score is weighted containment.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sfmed_lf.text.ngrams import char_ngrams
from sfmed_lf.text.normalize import comparison_key


def idf(documents: int, frequency: int) -> float:
    """Smoothed inverse document frequency: 1 + ln((1 + D) / (1 + df))."""
    return 1.0 + math.log((1 + documents) / (1 + frequency))


def idf_weights(background: Iterable[str], n: int) -> dict[str, float]:
    """Smoothed inverse document frequency (``idf``) of every n-gram of ``background`` (raw texts, normalised
    here)."""
    frequencies: Counter[str] = Counter()
    documents = 0
    for text in background:
        documents += 1
        frequencies.update(char_ngrams(text, n))
    return {gram: idf(documents, count) for gram, count in frequencies.items()}


@dataclass
class NgramIndex:
    """Stored texts as weighted n-gram sets, with an inverted index from n-gram to the texts holding it.

    ``cap``: containment of a stored text longer than ``cap`` n-grams counts ``cap`` n-grams of its average weight
    as the whole, so a long suffix is caught after its first ``threshold * cap`` n-grams reappear, not only after a
    share of its whole.
    """

    n: int
    weights: dict[str, float] = field(default_factory=dict)  # missing n-grams weigh `default_weight`
    default_weight: float = 1.0
    cap: int | None = None
    reference_weight: float | None = None  # w_ref; None: each text is measured against its own weight
    postings: dict[str, list[int]] = field(default_factory=dict)
    denominators: list[float] = field(default_factory=list)
    distinctiveness: list[float] = field(default_factory=list)  # the highest score each text can reach

    def weight(self, gram: str) -> float:
        return self.weights.get(gram, self.default_weight)

    def add(self, text: str) -> int:
        """Store one text; returns its row."""
        row = len(self.denominators)
        grams = char_ngrams(text, self.n)
        for gram in grams:
            self.postings.setdefault(gram, []).append(row)
        share = 1.0 if self.cap is None or len(grams) <= self.cap else self.cap / len(grams)
        total = sum(self.weight(gram) for gram in grams)
        self.denominators.append(share * total)
        reference = len(grams) * (self.reference_weight or 0.0)
        self.distinctiveness.append(min(1.0, total / reference) if reference > 0 else 1.0)
        return row

    def add_matches(self, matched: list[float], new_grams: Iterable[str]) -> None:
        """Add the weight of each n-gram (not counted before) to the matched weight of every text holding it."""
        for gram in new_grams:
            for row in self.postings.get(gram, ()):
                matched[row] += self.weight(gram)

    def scores_of(self, matched: list[float]) -> list[float]:
        return [
            min(1.0, m / d) * distinct if d > 0 else 0.0
            for m, d, distinct in zip(matched, self.denominators, self.distinctiveness, strict=True)
        ]

    def scores(self, grams: Iterable[str]) -> list[float]:
        """Weighted containment of every stored text in a query given by its n-grams, clipped to 1."""
        matched = [0.0] * len(self.denominators)
        self.add_matches(matched, set(grams))
        return self.scores_of(matched)

    def best(self, grams: Iterable[str]) -> tuple[float, int | None]:
        """(highest score, its row); (0.0, None) for an empty index."""
        return best_of(self.scores(grams))

    def text_grams(self, text: str) -> set[str]:
        return char_ngrams(text, self.n)

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "cap": self.cap,
            "default_weight": self.default_weight,
            "reference_weight": self.reference_weight,
            "weights": self.weights,
        }

    @classmethod
    def from_json(cls, data: dict, texts: Iterable[str]) -> NgramIndex:
        index = cls(
            n=data["n"],
            weights=data["weights"],
            default_weight=data["default_weight"],
            cap=data["cap"],
            reference_weight=data["reference_weight"],
        )
        for text in texts:
            index.add(text)
        return index


def best_of(scores: list[float]) -> tuple[float, int | None]:
    if not scores:
        return 0.0, None
    row = max(range(len(scores)), key=scores.__getitem__)
    return scores[row], row


class StreamingGrams:
    """The n-grams of a text that grows piece by piece (a streamed answer), each reported once, as it completes."""

    def __init__(self, n: int) -> None:
        self.n, self.tail, self.seen = n, "", set()

    def feed(self, piece: str) -> set[str]:
        text = self.tail + comparison_key(piece)
        new = {text[i : i + self.n] for i in range(len(text) - self.n + 1)} - self.seen
        self.seen |= new
        self.tail = text[-(self.n - 1) :] if self.n > 1 else ""
        return new

    def finish(self) -> set[str]:
        """A whole text shorter than n is one gram of its own (as char_ngrams counts it)."""
        if not self.seen and self.tail:
            self.seen.add(self.tail)
            return {self.tail}
        return set()
