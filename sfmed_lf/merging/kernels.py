"""Fused CPU loops of the sparse steps (numba), for float32/float64 numpy views of the optimizer's tensors.

Through numpy, each stage of a sparse step is a pass over memory of its own: OnTIES's |delta| alone is five dense
passes (sqrt, divide, add, divide, abs), then a comparison, a nonzero and gathers; OnDARE's update is two gathers, three
arithmetic passes and a scatter. Here each is one loop that reads every input once. The arithmetic is AdamW's, in
its order and in the tensors' dtype (scalars are passed in that dtype, as numpy and torch cast a Python float).
torch's ``sqrt`` on the CPU is not correctly rounded (it differs from numpy's and numba's in the last bit for ~1
float32 entry in 6, ~1 float64 entry in 80, and AdamW uses it). OnTIES ranks magnitudes, where one ulp can change
the kept set, so its loops take torch's roots and are bit for bit the numpy/torch path; OnDARE's loop takes numba's
correctly rounded root, saving a gather and a pass, and agrees with that path to the last bit of the root
(``tests/test_online_merging_masks.py`` compares them).
No ``fastmath`` (reassociation would change the rounding); numpy's error model (x / 0 is inf, not an exception),
without which the arithmetic loops do not vectorize (8x slower). Single-threaded, as the optimizer step around it is.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _magnitudes(exp_avg, roots, bc2, eps):  # noqa: ANN001, ANN202
    for j in range(len(exp_avg)):
        roots[j] = abs(exp_avg[j] / (roots[j] / bc2 + eps))


def magnitudes_from_roots_(exp_avg: np.ndarray, roots: np.ndarray, bias_correction2_sqrt: float, eps: float) -> None:
    """roots := |m / (roots / bc2 + eps)|, in place, where roots = torch.sqrt(v): one pass (numpy makes four)."""
    dtype = exp_avg.dtype.type
    _magnitudes(exp_avg, roots, dtype(bias_correction2_sqrt), dtype(eps))


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _count_above(values, bound):  # noqa: ANN001, ANN202
    count = 0
    for j in range(len(values)):
        count += values[j] >= bound
    return count


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _select_above(values, bound, positions, selected):  # noqa: ANN001, ANN202
    """Branch-free: every entry is written at the next free place, which advances only past the kept ones (the
    buffers hold one entry more than are kept)."""
    count = 0
    for j in range(len(values)):
        value = values[j]
        positions[count] = j
        selected[count] = value
        count += value >= bound


def select_above(values: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Ascending positions and values of the entries of ``values`` that are >= ``bound`` (compared in the array's
    dtype, as numpy compares with a Python float): a counting pass and a filling pass (numpy makes three)."""
    bound = values.dtype.type(bound)
    return _fill_above(values, bound, _count_above(values, bound))


def _fill_above(values: np.ndarray, bound: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` entries >= ``bound`` (counted by ``_count_above``): positions and values."""
    positions, selected = np.empty(count + 1, np.int64), np.empty(count + 1, values.dtype)
    _select_above(values, bound, positions, selected)
    return positions[:count], selected[:count]


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _merge_onties(  # noqa: ANN202
    magnitudes,  # noqa: ANN001
    exp_avg,  # noqa: ANN001
    param,  # noqa: ANN001
    k,  # noqa: ANN001
    threshold,  # noqa: ANN001
    candidates,  # noqa: ANN001
    values,  # noqa: ANN001
    among_candidates,  # noqa: ANN001
    tau_positions,  # noqa: ANN001
    tau_values,  # noqa: ANN001
    vote_factor,  # noqa: ANN001
    update_factor,  # noqa: ANN001
    alpha,  # noqa: ANN001
):
    size = len(values)
    ties_kept = size
    if k < len(magnitudes):
        at_least = ties = 0
        for i in range(size):
            value = values[i]
            at_least += value >= threshold
            ties += value == threshold
        ties_kept = ties - (at_least - k)  # the lowest-positioned ties make up the k
    tau_lost = np.zeros(len(tau_positions), np.bool_)
    t = 0
    for i in range(size):
        j = candidates[i] if among_candidates else i
        magnitude = values[i]
        if k < len(magnitudes) and not magnitude > threshold:
            if not (magnitude == threshold and ties_kept > 0):
                continue
            ties_kept -= 1
        update = np.copysign(magnitude, exp_avg[j])
        while t < len(tau_positions) and tau_positions[t] < j:
            t += 1
        if t < len(tau_positions) and tau_positions[t] == j:  # both kept: TIES's sign election
            vote, tau = update * vote_factor, tau_values[t]
            if tau + vote >= 0:
                tau_lost[t] = not tau > 0
                if vote < 0:
                    continue
            else:
                tau_lost[t] = not tau < 0
                if vote > 0:
                    continue
        param[j] += update * update_factor
    if alpha != 0:
        for t in range(len(tau_positions)):
            if not tau_lost[t]:
                param[tau_positions[t]] += tau_values[t] * alpha


def merge_onties_(
    magnitudes: np.ndarray,
    exp_avg: np.ndarray,
    param: np.ndarray,
    k: int,
    bound: float,
    tau_positions: np.ndarray,
    tau_values: np.ndarray,
    vote_factor: float,
    update_factor: float,
    alpha: float,
) -> None:
    """OnTIES on one segment (every array is the segment's window; ``tau_positions`` relative to it, ascending):
    delta' = exactly the k largest |delta| (``sparsify.top_k``'s rule: equal ones by position; looked for among the
    entries >= ``bound`` when k of them reach it), TIES's sign election where tau' has an entry too (the vote of
    delta' scaled by ``vote_factor``), then param += update_factor * delta' and alpha * tau', each where it won or was
    alone: the steps ``_SparseMerge`` runs through numpy/torch operations, in two passes. The k-th largest is
    selected by numpy (its introselect is 10x faster than numba's ``np.partition``)."""
    dtype = param.dtype.type
    bound = dtype(bound)
    candidates, values, among_candidates = np.empty(0, np.int64), magnitudes, False
    threshold = -np.inf
    if k < len(magnitudes):
        count = _count_above(magnitudes, bound) if bound > -np.inf else 0
        if count >= k:
            (candidates, values), among_candidates = _fill_above(magnitudes, bound, count), True
        threshold = np.partition(values, len(values) - k)[len(values) - k]
    _merge_onties(
        magnitudes,
        exp_avg,
        param,
        k,
        dtype(threshold),
        candidates,
        values,
        among_candidates,
        tau_positions,
        tau_values,
        dtype(vote_factor),
        dtype(update_factor),
        dtype(alpha),
    )


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _add_update_at(param, exp_avg, exp_avg_sq, positions, start, bc2, eps, factor):  # noqa: ANN001, ANN202
    for i in range(len(positions)):
        j = positions[i] + start
        update = exp_avg[j] / (np.sqrt(exp_avg_sq[j]) / bc2 + eps)
        param[j] += update * factor


def add_update_at_(
    param: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    positions: np.ndarray,
    start: int,
    bias_correction2_sqrt: float,
    eps: float,
    factor: float,
) -> None:
    """param[start + positions] += factor * m / (sqrt(v) / bc2 + eps) at the given (unique) positions: one pass
    (numpy: two gathers, a square root, three arithmetic passes and a scatter). The square root is correctly rounded
    (numpy's), where torch's float32 one on the CPU is off by one ulp for ~1 entry in 6: OnDARE selects nothing by
    magnitude, so this moves its update by at most that rounding, while the torch path (CUDA) has roots of its own."""
    dtype = exp_avg.dtype.type
    bc2, eps, factor = dtype(bias_correction2_sqrt), dtype(eps), dtype(factor)
    _add_update_at(param, exp_avg, exp_avg_sq, positions, start, bc2, eps, factor)


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _add_chunked(param, bases, counts, low_positions, values, alpha):  # noqa: ANN001, ANN202
    entry = 0
    for chunk in range(len(bases)):
        base = bases[chunk]
        for _ in range(counts[chunk]):
            param[base + low_positions[entry]] += values[entry] * alpha
            entry += 1


def add_chunked_(
    param: np.ndarray,
    bases: np.ndarray,
    counts: np.ndarray,
    low_positions: np.ndarray,
    values: np.ndarray,
    alpha: float,
) -> None:
    """param += alpha * (a ``SparseDelta``'s entries), read from its chunked form (chunk bases and counts, low 16-bit
    positions) without building the int64 positions."""
    _add_chunked(param, bases, counts, low_positions, values, param.dtype.type(alpha))


@numba.njit(cache=True, boundscheck=False, error_model="numpy")
def _gaps_to_positions(exponentials, scale, first, out):  # noqa: ANN001, ANN202
    position = first - 1
    for i in range(len(exponentials)):
        position += np.int64(exponentials[i] * scale) + 1
        out[i] = position
    return out


def gaps_to_positions(exponentials: np.ndarray, scale: float, first: int) -> np.ndarray:
    """Kept positions from Exp(1) draws E: the gaps between them are floor(E * scale) + 1, the first gap counted
    from ``first`` - 1 (numpy: multiply, cast, add, cumsum, four passes)."""
    return _gaps_to_positions(exponentials, scale, first, np.empty(len(exponentials), np.int64))
