"""Win/tie/loss of model A against model B from per-item scores (SF-Med Tables 3-6).

Rule: A wins an item when its score exceeds B's by more than ``tie_margin``, loses when B's exceeds A's by more
than it, and ties otherwise. With the default margin 0 a tie is exact equality, which is deterministic here because
Rouge-L F is computed from integer counts in float64 and judge scores are parsed numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Outcomes:
    win: int
    tie: int
    loss: int

    @property
    def total(self) -> int:
        return self.win + self.tie + self.loss

    def rates(self) -> dict[str, float]:
        total = self.total or 1
        return {"win": self.win / total, "tie": self.tie / total, "loss": self.loss / total}

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "n": self.total, **{f"{k}_rate": v for k, v in self.rates().items()}}


def outcome(score_a: float, score_b: float, tie_margin: float = 0.0) -> str:
    if score_a - score_b > tie_margin:
        return "win"
    if score_b - score_a > tie_margin:
        return "loss"
    return "tie"


def count_outcomes(labels: list[str]) -> Outcomes:
    return Outcomes(win=labels.count("win"), tie=labels.count("tie"), loss=labels.count("loss"))
