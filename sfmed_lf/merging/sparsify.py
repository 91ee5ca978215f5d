"""The two sparsifications of online merging and TIES's sign election.

Sources: SF-Med §3.3, Eq. 2 (OnDARE) and Eq. 3 (OnTIES); Lu et al. 2024, "Online Merging Optimizers for Boosting
Rewards and Mitigating Tax in Alignment" (arXiv:2405.17931), §3; DARE: Yu et al. 2023 (arXiv:2311.03099);
TIES: Yadav et al. 2023 (arXiv:2306.01708).

    OnDARE:  theta_t = theta_{t-1} + alpha * DARE_p(tau) + (1 - alpha) * DARE_p(delta_t)
    OnTIES:  theta_t = theta_{t-1} + TIES_p([tau, delta_t], weights [alpha, 1 - alpha])

delta_t is the AdamW update of step t, tau = theta_sft - theta_base. DARE_p keeps each entry with probability p
(fresh mask every step for delta, one mask for tau); TIES_p keeps the top-p fraction by magnitude, elects per entry
the sign of tau' + delta' and keeps only the entries that agree with it (disjoint merge).
"""

from __future__ import annotations

import math

import torch

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig, Rescale
from sfmed_lf.merging.masks import bernoulli_keep_mask, keyed_uniform

# The exact top-p threshold is found inside a bracket estimated from a fixed sample of this many entries.
SAMPLE_SIZE = 1 << 16
# Half-width of the bracket, in standard errors of the sample quantile: the k-th largest entry falls outside it with
# probability ~1e-7; then the selection falls back to a full kthvalue. The result is exact either way.
BRACKET_SIGMAS = 5.5


def magnitude_threshold(magnitudes: torch.Tensor, keep_prob: float, *, seed: int, name: str) -> torch.Tensor:
    """The ceil(p * n)-th largest of the non-negative 1-D ``magnitudes``: keeping ``magnitudes >= threshold`` keeps
    the top-p entries (plus any ties at the threshold).

    A full selection costs a copy and a quickselect over all n entries at every step (the reference argsorts).
    Instead: the quantile's neighbourhood is bracketed from a random sample, entries above the bracket are counted,
    and only the entries inside it (a few per mille) are selected exactly."""
    n = magnitudes.numel()
    keep = min(n, max(1, math.ceil(keep_prob * n)))
    if n <= SAMPLE_SIZE:
        return magnitudes.float().kthvalue(n - keep + 1).values
    positions = keyed_uniform(SAMPLE_SIZE, seed=seed, stream="ties-sample", name=name, device=magnitudes.device)
    sample = magnitudes[(positions * n).long().clamp_(max=n - 1)].float()
    quantile = 1.0 - keep / n
    margin = BRACKET_SIGMAS * math.sqrt(max(quantile * (1.0 - quantile), 1.0 / n) / SAMPLE_SIZE)
    low_rank = min(SAMPLE_SIZE, max(1, math.floor((quantile - margin) * SAMPLE_SIZE)))
    high_rank = min(SAMPLE_SIZE, max(1, math.ceil((quantile + margin) * SAMPLE_SIZE)))
    low, high = sample.kthvalue(low_rank).values, sample.kthvalue(high_rank).values
    if high_rank == SAMPLE_SIZE:
        high = magnitudes.max().float()
    if low_rank == 1:
        low = magnitudes.min().float()
    above = int((magnitudes > high).sum())
    inside = magnitudes[(magnitudes >= low) & (magnitudes <= high)].float()
    if above < keep <= above + inside.numel():
        return inside.kthvalue(inside.numel() - (keep - above) + 1).values
    return magnitudes.float().kthvalue(n - keep + 1).values


def sparsify_(
    flat: torch.Tensor, config: OnlineMergingConfig, *, name: str, stream: str, offset: int = 0
) -> torch.Tensor:
    """Zero the dropped entries of the 1-D tensor ``flat`` in place, rescale the kept ones; return the keep mask.

    ``offset`` is the position of ``flat[0]`` inside parameter ``name`` (non-zero for a shard).
    """
    if config.keep_prob >= 1.0:
        return torch.ones_like(flat, dtype=torch.bool)
    dense_l1 = flat.abs().sum(dtype=torch.float32) if config.rescale is Rescale.L1 else None
    if config.method is MergeMethod.ONDARE:
        keep = bernoulli_keep_mask(
            flat.numel(),
            config.keep_prob,
            seed=config.seed,
            stream=stream,
            name=name,
            offset=offset,
            device=flat.device,
        )
    else:
        magnitudes = flat.abs()
        keep = magnitudes >= magnitude_threshold(magnitudes, config.keep_prob, seed=config.seed, name=name)
    flat.mul_(keep)
    if config.rescale is Rescale.INVERSE_P:
        flat.div_(config.keep_prob)
    elif dense_l1 is not None:
        kept_l1 = flat.abs().sum(dtype=torch.float32)
        if kept_l1 > 0:
            flat.mul_((dense_l1 / kept_l1).to(flat.dtype))
    return keep


def elect_signs(tau_values: torch.Tensor, update_values: torch.Tensor) -> torch.Tensor:
    """TIES sign election between the two task vectors at the given entries: +1 where tau' + delta' >= 0, else -1.

    The vote is unweighted, as in TIES and the authors' code: alpha weighs the merged values, not the vote, so
    even a tiny alpha lets tau veto update entries that point away from what SFT learned and are smaller than it.
    """
    return torch.where(tau_values + update_values >= 0, 1, -1).to(tau_values.dtype)
