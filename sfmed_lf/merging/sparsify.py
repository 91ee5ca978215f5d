"""The two sparsifications of online merging and TIES's sign election.

Sources: SF-Med §3.3, Eq. 2 (OnDARE) and Eq. 3 (OnTIES); Lu et al. 2024, "Online Merging Optimizers for Boosting
Rewards and Mitigating Tax in Alignment" (arXiv:2405.17931), §3; DARE: Yu et al. 2023 (arXiv:2311.03099);
TIES: Yadav et al. 2023 (arXiv:2306.01708).

    OnDARE:  theta_t = theta_{t-1} + alpha * DARE_p(tau) + (1 - alpha) * DARE_p(delta_t)
    OnTIES:  theta_t = theta_{t-1} + TIES_p([tau, delta_t], weights [alpha, 1 - alpha])

delta_t is the AdamW update of step t, tau = theta_sft - theta_base. DARE_p keeps each entry with probability p
(fresh mask every step for delta, one mask for tau) and, by default as in the authors' code, multiplies the kept
entries by 1/p; TIES_p keeps the top-p fraction by magnitude, elects per entry the sign of tau' + delta' and keeps
only the entries that agree with it (disjoint merge).

A sparsified vector is handled as (positions, values) of its kept entries: at p = 0.01 that is 1 % of the work and
memory of a dense masked copy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from sfmed_lf.merging import kernels
from sfmed_lf.merging.arrays import Array, Ops, ops_for
from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig, Rescale
from sfmed_lf.merging.masks import bernoulli_positions

# Top-k first keeps the candidates above a lower bound of the k-th largest magnitude, estimated from a strided sample
# of this many entries, then selects exactly among those (tensors below SAMPLE_SIZE * 4 are selected directly).
SAMPLE_SIZE = 1 << 14
# Margin of that bound, in standard errors of the sample quantile: the bound exceeds the k-th largest (and the
# selection falls back to all entries) with probability ~3e-7. The result is exact either way.
BOUND_SIGMAS = 5.0


def keep_count(numel: int, keep_prob: float) -> int:
    """k of top-p over ``numel`` entries: ``int(p * n)`` as in the authors' ``OTAdamW.magnitude_mask_``, which keeps
    every entry when that rounds to 0 (tensors smaller than 1/p are not sparsified)."""
    k = int(keep_prob * numel)
    return numel if k < 1 else min(k, numel)


@functools.lru_cache(maxsize=256)
def _sample_stride(numel: int) -> int:
    """A prime stride near numel / SAMPLE_SIZE: a prime rarely divides a row length, so the strided sample visits
    every column instead of a few (Adam updates vary by column)."""
    stride = max(2, numel // SAMPLE_SIZE)
    while any(stride % divisor == 0 for divisor in range(2, math.isqrt(stride) + 1)):
        stride += 1
    return stride


class DenseMagnitudes:
    """The non-negative values of a 1-D slice that :func:`top_k` ranks, read only where it asks (a strided sample,
    the entries above a bound, a few positions): a dense array of the ``ops`` backend; ``above_mask``: an optional
    bool buffer of its size, to spare an allocation (torch)."""

    def __init__(self, ops: Ops, values: Array, above_mask: Array | None = None) -> None:
        self.ops, self.values, self.above_mask = ops, values, above_mask

    def __len__(self) -> int:
        return len(self.values)

    def at(self, positions: Array) -> Array:
        return self.ops.take(self.values, positions)

    def strided(self, start: int, stride: int) -> Array:
        return self.values[start::stride]

    def above(self, bound: float) -> tuple[Array, Array]:
        if self.ops.name == "numpy":
            return kernels.select_above(self.values, bound)
        candidates = self.ops.flatnonzero(self.ops.greater_equal(self.values, bound, out=self.above_mask))
        return candidates, self.ops.take(self.values, candidates)

    def all(self) -> Array:
        return self.values


def candidate_bound(magnitudes: DenseMagnitudes, k: int) -> float:
    """A lower bound of the k-th largest value, below which no entry needs to be looked at again; -inf where
    sampling does not pay (small tensors, k = n)."""
    if k >= len(magnitudes) or len(magnitudes) < 4 * SAMPLE_SIZE:
        return -math.inf
    return _lower_bound_of_kth_largest(magnitudes, k)


def _lower_bound_of_kth_largest(magnitudes: DenseMagnitudes, k: int) -> float:
    ops, numel = magnitudes.ops, len(magnitudes)
    stride = _sample_stride(numel)
    sample = magnitudes.strided(stride // 2, stride)
    size = len(sample)
    quantile = 1.0 - k / numel
    margin = BOUND_SIGMAS * math.sqrt(max(quantile * (1.0 - quantile), 1.0 / size) / size)
    bound_quantile = quantile - margin
    rank = min(size, math.floor(bound_quantile * size))
    return ops.kth_smallest(sample, rank) if rank >= 1 else -math.inf


@dataclass(frozen=True)
class TopK:
    """The k largest entries of a 1-D array: their ascending ``positions`` and their ``values`` (arrays of the
    backend that selected them); ``threshold`` (the k-th largest value) and ``last_tie`` (the highest kept position
    holding it, when some entries equal to it are not kept) decide membership without a search."""

    positions: Array
    values: Array
    threshold: float
    last_tie: int
    all_ties_kept: bool

    def contains(self, positions: Array, values: Array) -> Array:
        """Whether the entries at ``positions``, holding ``values``, are among the k kept."""
        if self.all_ties_kept:
            return values >= self.threshold
        return (values > self.threshold) | ((values == self.threshold) & (positions <= self.last_tie))


def top_k(magnitudes: DenseMagnitudes, k: int) -> TopK:
    """Exactly ``k`` largest of ``magnitudes``; among entries equal to the k-th largest, the lowest positions win
    (Adam's first step makes most |delta| equal to lr, and bf16 ties often).

    The reference argsorts every tensor at every step. Here only the entries above a sampled lower bound of the k-th
    largest value (k plus a few per mille of n) are gathered, and the k-th largest is selected among them."""
    ops, numel = magnitudes.ops, len(magnitudes)
    if k >= numel:
        values = magnitudes.all()
        return TopK(ops.arange(numel, values), values[:], -math.inf, numel - 1, True)
    candidates, bound = None, candidate_bound(magnitudes, k)
    if bound > -math.inf:
        candidates, values = magnitudes.above(bound)
        if len(candidates) < k:  # the bound missed: select among all entries
            candidates = None
    if candidates is None:
        values = magnitudes.all()
    threshold = ops.kth_smallest(values, len(values) - k + 1)
    at_least = values >= threshold
    surplus = ops.count_nonzero(at_least) - k  # entries equal to the threshold beyond the k-th place
    if surplus == 0:
        kept = ops.flatnonzero(at_least)
    else:  # the lowest-positioned ties make up the k
        ties = values == threshold
        kept_ties = ops.cumsum(ties) <= ops.count_nonzero(ties) - surplus
        kept = ops.flatnonzero((values > threshold) | (ties & kept_ties))
    positions = kept if candidates is None else ops.take(candidates, kept)
    last_tie = -1
    if surplus:
        tie_positions = positions[ops.take(ties, kept)]
        last_tie = int(tie_positions[-1]) if len(tie_positions) else -1
    return TopK(positions, ops.take(values, kept), threshold, last_tie, surplus == 0)


def top_k_positions(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending positions of exactly ``k`` largest entries of a 1-D tensor (see :func:`top_k`)."""
    ops = ops_for(magnitudes)
    return ops.as_tensor(top_k(DenseMagnitudes(ops, ops.view(magnitudes)), k).positions)


def kept_positions(
    config: OnlineMergingConfig,
    *,
    numel: int,
    name: str,
    stream: str,
    offset: int = 0,
    param_numel: int | None = None,
    magnitudes: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Ascending positions kept by DARE_p or TIES_p among elements [offset, offset + numel) of parameter ``name``.

    OnDARE draws a keyed Bernoulli(p) mask (``masks.py``); OnTIES needs the slice's ``magnitudes`` and keeps the
    top ``keep_count`` of them."""
    if config.method is MergeMethod.ONDARE:
        return bernoulli_positions(
            numel,
            config.keep_prob,
            seed=config.seed,
            stream=stream,
            name=name,
            offset=offset,
            param_numel=param_numel,
            device=device,
        )
    if magnitudes is None:
        raise ValueError("TIES_p ranks magnitudes: pass the slice's magnitudes.")
    return top_k_positions(magnitudes, keep_count(numel, config.keep_prob))


def rescale_factor(config: OnlineMergingConfig, dense_l1: float | None, kept_l1: float | None) -> float:
    """Factor applied to the kept entries (see ``Rescale``); L1 needs the L1 norms of the dense and kept vectors."""
    rescale = config.applied_rescale
    if rescale is Rescale.INVERSE_P:
        return 1.0 / config.keep_prob
    if rescale is Rescale.L1:
        if dense_l1 is None or kept_l1 is None:
            raise ValueError("rescale 'l1' needs the L1 norms of the dense and of the kept entries.")
        return dense_l1 / kept_l1 if kept_l1 > 0 else 1.0
    return 1.0


def sparsify(
    flat: torch.Tensor,
    config: OnlineMergingConfig,
    *,
    name: str,
    stream: str,
    offset: int = 0,
    param_numel: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, rescaled values) of the entries of the 1-D ``flat`` that DARE_p / TIES_p keep; ``offset`` is the
    position of ``flat[0]`` inside parameter ``name`` (non-zero for a shard)."""
    if config.keep_prob >= 1.0:
        return torch.arange(flat.numel(), device=flat.device), flat.clone()
    magnitudes = flat.abs() if config.method is MergeMethod.ONTIES or config.applied_rescale is Rescale.L1 else None
    positions = kept_positions(
        config,
        numel=flat.numel(),
        name=name,
        stream=stream,
        offset=offset,
        param_numel=param_numel,
        magnitudes=magnitudes,
        device=flat.device,
    )
    values = flat[positions]
    dense_l1 = kept_l1 = None
    if magnitudes is not None:
        dense_l1, kept_l1 = float(magnitudes.sum(dtype=torch.float64)), float(values.abs().sum(dtype=torch.float64))
    return positions, values.mul_(rescale_factor(config, dense_l1, kept_l1))


def elect_signs(tau_values: Array, update_values: Array) -> Array:
    """TIES sign election between the two task vectors at the given entries: +1 where tau' + delta' >= 0, else -1.

    The vote is unweighted, as in TIES and the authors' code: alpha weighs the merged values, not the vote, so
    even a tiny alpha lets tau veto update entries that point away from what SFT learned and are smaller than it.
    """
    return ((tau_values + update_values) >= 0) * 2 - 1
