"""Configuration of the online-merging optimizers (Lu et al. 2024, arXiv:2405.17931)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MergeMethod(StrEnum):
    NONE = "none"
    ONDARE = "ondare"  # random (Bernoulli) sparsification of tau and of each update
    ONTIES = "onties"  # top-p magnitude sparsification, then TIES sign election


class Rescale(StrEnum):
    """What happens to the entries a sparsification keeps.

    AUTHORS (default): per method, what the authors' code (QwenLM/online_merging_optimizers) does with its default
        ``rescale=False``: OnDARE multiplies kept entries by 1/p (DARE's "drop and rescale": its ``F.dropout``),
        OnTIES keeps its top-p entries as they are (``OTAdamW.magnitude_mask_``).
    NONE: kept as they are, for both methods. The paper's equations read this way; for OnDARE the merged update is
        then p times the authors' in expectation (100x smaller at p = 0.01).
    INVERSE_P: multiplied by 1/p, for both methods.
    L1: multiplied by ||x||_1 / ||kept x||_1, so the sparse vector keeps the L1 norm of the dense one (the authors'
        ``rescale=True``).
    """

    AUTHORS = "authors"
    NONE = "none"
    INVERSE_P = "inverse_p"
    L1 = "l1"


@dataclass(frozen=True)
class OnlineMergingConfig:
    """All knobs of an online-merging optimizer; validated on construction.

    keep_prob: p, the fraction of entries kept by each sparsification (of tau once, of every Adam update).
    alpha: weight of the sparsified task vector tau' in theta += alpha * tau' + (1 - alpha) * delta'.
    rescale: what happens to kept entries (:class:`Rescale`); ``applied_rescale`` resolves ``authors`` per method.
    seed: seeds the random masks; masks depend only on (seed, step, parameter name, element index).
    """

    method: MergeMethod
    keep_prob: float
    alpha: float
    rescale: Rescale = Rescale.AUTHORS
    seed: int = 42

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", MergeMethod(self.method))
        object.__setattr__(self, "rescale", Rescale(self.rescale))
        if self.method is MergeMethod.NONE:
            raise ValueError("OnlineMergingConfig needs method 'ondare' or 'onties'.")
        if not 0.0 < self.keep_prob <= 1.0:
            raise ValueError(f"keep_prob (p) must be in (0, 1], got {self.keep_prob}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}.")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a non-negative 64-bit integer, got {self.seed}.")

    @property
    def applied_rescale(self) -> Rescale:
        """The rescale actually applied: ``authors`` resolved for this method."""
        if self.rescale is not Rescale.AUTHORS:
            return self.rescale
        return Rescale.INVERSE_P if self.method is MergeMethod.ONDARE else Rescale.NONE
