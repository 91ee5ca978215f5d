"""Preference strength and the flip/drop rule (SF-Med §3.3; Wang et al. 2024, "Secrets of RLHF in Large Language
Models Part II: Reward Modeling", arXiv:2401.06080, §2).

For pair i and reward model m (K models trained on the same pairs in different data orders):

    s_{i,m} = r_m(x_i, y_i^chosen) − r_m(x_i, y_i^rejected)
    strength_i = mean_m s_{i,m},   spread_i = std_m s_{i,m}

SF-Med flips chosen and rejected for the ``flip_fraction`` pairs of lowest mean strength (default 10 %: the
ensemble prefers the "rejected" answer, so the label is most likely wrong) and drops the ``drop_fraction`` of
highest strength (default 10 %: pairs so easy they teach little). Wang et al. flip the bottom 20 % in their main
experiments and keep the strongest pairs, with soft labels; ``flip_fraction=0.2, drop_fraction=0`` is that rule
with hard labels. Absolute thresholds (``flip_below``, ``drop_above``) replace the fractions when given.
Ties in the ranking are broken by pair order, so the actions are deterministic.
"""

from __future__ import annotations

import math

import numpy as np

KEEP, FLIP, DROP = "keep", "flip", "drop"


def strengths(chosen_scores: np.ndarray, rejected_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over models of chosen − rejected; inputs are [pairs, models]."""
    differences = np.asarray(chosen_scores, dtype=np.float64) - np.asarray(rejected_scores, dtype=np.float64)
    return differences.mean(axis=1), differences.std(axis=1)


def select_actions(
    mean_strength: np.ndarray,
    flip_fraction: float = 0.1,
    drop_fraction: float = 0.1,
    flip_below: float | None = None,
    drop_above: float | None = None,
) -> list[str]:
    """keep / flip / drop per pair (see the module docstring)."""
    count = len(mean_strength)
    order = np.argsort(mean_strength, kind="stable")  # ascending; equal strengths keep pair order
    actions = [KEEP] * count
    if flip_below is not None:
        flipped = [i for i in range(count) if mean_strength[i] < flip_below]
    else:
        flipped = [int(i) for i in order[: math.floor(flip_fraction * count + 1e-9)]]
    if drop_above is not None:
        dropped = [i for i in range(count) if mean_strength[i] > drop_above]
    else:
        dropped = [int(i) for i in order[count - math.floor(drop_fraction * count + 1e-9) :]] if count else []
    for index in dropped:
        actions[index] = DROP
    for index in flipped:
        if actions[index] == DROP:
            raise ValueError("flip and drop selections overlap: lower flip_fraction/drop_fraction or the thresholds.")
        actions[index] = FLIP
    return actions
