"""Masks and selections of online merging, as the authors' code has them, and tests that fail on a broken mask.

The authors' optimizers (QwenLM/online_merging_optimizers, ODAdamW/OTAdamW) are not shipped here; their behaviour is
restated: ODAdamW drops every entry of tau and of each update with probability 1 - p through ``F.dropout`` (kept
entries x 1/p, so the update is AdamW's in expectation); OTAdamW keeps the ``int(p * n)`` largest |entries|
unscaled (everything when that is 0)."""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

from sfmed_lf.merging.config import OnlineMergingConfig, Rescale
from sfmed_lf.merging.layout import Segment
from sfmed_lf.merging.masks import MASK_CHUNK, bernoulli_positions
from sfmed_lf.merging.optimizer import merge_adam_step_
from sfmed_lf.merging.sparse_delta import SparseDelta
from sfmed_lf.merging.sparsify import keep_count, sparsify, top_k_positions
from tests.online_merging_helpers import one_group_optimizer


def binomial_bound(trials: int, prob: float, sigmas: float = 6.0) -> float:
    return sigmas * math.sqrt(trials * prob * (1 - prob))


def reference_top_k(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k by a full stable sort: largest first, equal values by position."""
    order = torch.sort(-magnitudes.double(), stable=True).indices
    return order[:k].sort().values


def test_the_default_rescale_follows_the_authors_per_method():
    assert OnlineMergingConfig("ondare", 0.1, 0.0).rescale is Rescale.AUTHORS
    assert OnlineMergingConfig("ondare", 0.1, 0.0).applied_rescale is Rescale.INVERSE_P
    assert OnlineMergingConfig("onties", 0.1, 0.0).applied_rescale is Rescale.NONE
    assert OnlineMergingConfig("ondare", 0.1, 0.0, rescale="none").applied_rescale is Rescale.NONE
    assert OnlineMergingConfig("onties", 0.1, 0.0, rescale="inverse_p").applied_rescale is Rescale.INVERSE_P


def dense_adam_update(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, lr: float) -> torch.Tensor:
    """AdamW's update at step 1 with betas (0.9, 0.99), eps 1e-8."""
    return -lr / 0.1 * exp_avg / (exp_avg_sq.sqrt() / math.sqrt(0.01) + 1e-8)


@pytest.mark.parametrize(("rescale", "slope"), [("authors", 1.0), ("none", 0.3)])
def test_ondare_update_is_adams_in_expectation_as_the_authors_dropout(rescale, slope):
    """Over 200 seeds, the mean merged update regressed on AdamW's update has slope 1 by default (the authors'
    F.dropout keeps the expectation) and p with the paper-literal `none`; the kept fraction is p."""
    numel, keep_prob, seeds, lr = 2000, 0.3, 200, 1e-3
    generator = torch.Generator().manual_seed(0)
    exp_avg = torch.randn(numel, generator=generator) * 0.1
    exp_avg_sq = torch.rand(numel, generator=generator) * 0.01 + 1e-4
    adam = dense_adam_update(exp_avg, exp_avg_sq, lr)
    total, kept = torch.zeros(numel, dtype=torch.float64), 0
    for seed in range(seeds):
        config = OnlineMergingConfig("ondare", keep_prob, alpha=0.0, rescale=rescale, seed=seed)
        param = torch.zeros(numel)
        merge_adam_step_(
            param,
            exp_avg,
            exp_avg_sq,
            SparseDelta.from_dense(torch.zeros(numel)),
            config,
            segments=[Segment("w", 0, numel, 0, numel)],
            step=1,
            lr=lr,
            betas=(0.9, 0.99),
            eps=1e-8,
        )
        total += param.double()
        kept += int(torch.count_nonzero(param))
    mean = total / seeds
    fitted = float((mean * adam.double()).sum() / (adam.double() ** 2).sum())
    # per-entry mean: standard error |delta| * sqrt((1 - p) / (p * seeds)); the slope pools 2000 entries
    assert abs(fitted - slope) < 0.03 * slope, fitted
    assert abs(kept - keep_prob * numel * seeds) < binomial_bound(numel * seeds, keep_prob)
    nonzero = param != 0
    torch.testing.assert_close(param[nonzero], adam[nonzero] * (slope / keep_prob))  # kept entries: scaled Adam


def test_ondare_tau_is_unbiased_by_default():
    numel, seeds = 1000, 300
    tau = torch.randn(numel, generator=torch.Generator().manual_seed(1))
    total = torch.zeros(numel, dtype=torch.float64)
    for seed in range(seeds):
        positions, values = sparsify(tau, OnlineMergingConfig("ondare", 0.2, 0.1, seed=seed), name="w", stream="tau")
        total[positions] += values.double()
    fitted = float((total / seeds * tau.double()).sum() / (tau.double() ** 2).sum())
    assert abs(fitted - 1.0) < 0.04, fitted


@pytest.mark.parametrize("numel", [10, 99, 100, 1001, 300_000])
def test_onties_keeps_the_authors_count_unscaled(numel):
    """int(p * n) entries as OTAdamW (all when that is 0), exactly the largest, values untouched."""
    keep_prob = 0.01
    values = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    positions, kept = sparsify(values, OnlineMergingConfig("onties", keep_prob, 0.1), name="w", stream="s")
    expected_count = int(keep_prob * numel) or numel
    assert keep_count(numel, keep_prob) == expected_count == positions.numel()
    assert torch.equal(positions, reference_top_k(values.abs(), expected_count))
    assert torch.equal(kept, values[positions])


def test_keep_count_rounds_like_the_authors():
    assert keep_count(10, 0.3) == int(0.3 * 10) == 3
    assert keep_count(100, 0.29) == int(0.29 * 100) == 28  # floating point: 28.999999999999996
    assert keep_count(50, 0.01) == 50  # int(0.5) = 0: the authors keep everything
    assert keep_count(7, 1.0) == 7


@pytest.mark.parametrize("distribution", ["normal", "heavy-tailed", "many-ties", "mostly-zero", "columns"])
@pytest.mark.parametrize("keep_prob", [0.001, 0.05, 0.5, 0.999])
def test_top_k_positions_are_exact(distribution, keep_prob):
    generator = torch.Generator().manual_seed(zlib.crc32(f"{distribution}/{keep_prob}".encode()))
    n = 300_000
    values = {
        "normal": lambda: torch.randn(n, generator=generator),
        "heavy-tailed": lambda: torch.randn(n, generator=generator) ** 5,
        "many-ties": lambda: torch.randint(0, 7, (n,), generator=generator).float(),
        "mostly-zero": lambda: torch.randn(n, generator=generator) * (torch.rand(n, generator=generator) < 0.01),
        # rows of 600 with a scale per column: a strided sample hitting few columns would misjudge the quantile
        "columns": lambda: (torch.randn(500, 600, generator=generator) * torch.logspace(-3, 3, 600)).reshape(-1),
    }[distribution]()
    magnitudes = values.abs()
    k = keep_count(n, keep_prob)
    assert torch.equal(top_k_positions(magnitudes, k), reference_top_k(magnitudes, k))


def test_top_k_falls_back_when_the_sampled_bound_misses(monkeypatch):
    import sfmed_lf.merging.sparsify as sparsify_module

    monkeypatch.setattr(sparsify_module, "BOUND_SIGMAS", -30.0)  # a bound far above the k-th largest
    magnitudes = torch.rand(200_000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(top_k_positions(magnitudes, 10_000), reference_top_k(magnitudes, 10_000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onties_keeps_exactly_k_on_adams_first_step(dtype):
    """Adam's first update is lr * g / (|g| + eps): |delta| = lr almost everywhere, and bf16 ties more. Exactly
    int(p * n) entries move, the largest |delta| first, equal ones by position."""
    numel, keep_prob, lr = 300_000, 0.05, 1e-3
    param = torch.zeros(numel, dtype=dtype)
    param.grad = torch.randn(numel, generator=torch.Generator().manual_seed(7)).to(dtype)
    optimizer = one_group_optimizer(
        [("w", param)], OnlineMergingConfig("onties", keep_prob, 0.0), {"w": torch.zeros(numel)}, lr=lr
    )
    optimizer.step()
    moved = torch.nonzero(param).squeeze(1)
    k = int(keep_prob * numel)
    assert moved.numel() == k
    grad = param.grad  # |delta| in AdamW's arithmetic and the parameter's dtype, up to the factor lr / bc1:
    exp_avg = torch.zeros_like(grad).lerp_(grad, 0.1)
    exp_avg_sq = torch.zeros_like(grad).addcmul_(grad, grad, value=0.01)
    adam = (exp_avg / (exp_avg_sq.sqrt() / math.sqrt(0.01) + 1e-8)).abs().float()
    threshold = adam.kthvalue(numel - k + 1).values
    assert (adam >= threshold).sum() > k + 100, "the test needs ties at the threshold"
    assert torch.equal(moved, reference_top_k(adam, k))


def test_masks_are_keyed_and_independent_of_slicing():
    numel, keep_prob = MASK_CHUNK + 5000, 0.05
    keyed = {"seed": 3, "stream": "update-9", "name": "w", "param_numel": numel}
    full = bernoulli_positions(numel, keep_prob, **keyed)
    assert torch.equal(full, bernoulli_positions(numel, keep_prob, **{**keyed, "param_numel": None}))
    slices = [(0, 10), (1, 50), (123, 4000), (MASK_CHUNK - 100, 300), (MASK_CHUNK + 1, 77), (MASK_CHUNK + 17, 4983)]
    for offset, length in [*slices, (0, numel)]:
        part = bernoulli_positions(length, keep_prob, offset=offset, **keyed)
        expected = full[(full >= offset) & (full < offset + length)] - offset
        assert torch.equal(part, expected), (offset, length)
    for other in ({"stream": "update-10"}, {"name": "v"}, {"seed": 4}):
        positions = bernoulli_positions(numel, keep_prob, **{**keyed, **other})
        overlap = len(set(positions.tolist()) & set(full.tolist()))
        assert abs(overlap - numel * keep_prob**2) < binomial_bound(numel, keep_prob**2), other


@pytest.mark.parametrize("keep_prob", [0.001, 0.05, 0.5])
def test_bernoulli_positions_have_binomial_counts_and_uniform_spread(keep_prob):
    numel = 3 * MASK_CHUNK // 2
    for seed in range(3):
        positions = bernoulli_positions(numel, keep_prob, seed=seed, stream="s", name="w")
        assert abs(positions.numel() - numel * keep_prob) < binomial_bound(numel, keep_prob)
        assert bool((positions.diff() > 0).all()) and int(positions[0]) >= 0 and int(positions[-1]) < numel
        per_tenth = torch.bincount(positions * 10 // numel, minlength=10)
        assert (per_tenth - numel * keep_prob / 10).abs().max() < binomial_bound(numel // 10, keep_prob)


def moved_positions_per_step(config, steps: int, numel: int = 40_000, alpha: float = 0.0):
    """Positions whose weight moved at each step of a one-parameter run (alpha 0: the kept update entries), and the
    positions tau' keeps."""
    param = torch.zeros(numel)
    optimizer = one_group_optimizer(
        [("w", param)], config, {"w": torch.randn(numel, generator=torch.Generator().manual_seed(2))}
    )
    moved = []
    for step in range(steps):
        before = param.clone()
        param.grad = torch.randn(numel, generator=torch.Generator().manual_seed(step))
        optimizer.step()
        moved.append(set(torch.nonzero(param != before).squeeze(1).tolist()))
    return moved, set(optimizer._task_vectors[param].positions().tolist())


def test_ondare_draws_a_fresh_update_mask_every_step():
    """Consecutive masks overlap like independent draws (p^2 n), not like one reused mask (p n)."""
    keep_prob, numel = 0.2, 40_000
    moved, _ = moved_positions_per_step(OnlineMergingConfig("ondare", keep_prob, 0.0), steps=4, numel=numel)
    for earlier, later in itertools.pairwise(moved):
        assert abs(len(earlier) - numel * keep_prob) < binomial_bound(numel, keep_prob)
        overlap = len(earlier & later)
        assert abs(overlap - numel * keep_prob**2) < binomial_bound(numel, keep_prob**2), overlap


def test_ondare_update_and_tau_masks_are_independent():
    keep_prob, numel = 0.2, 40_000
    moved, tau_kept = moved_positions_per_step(OnlineMergingConfig("ondare", keep_prob, 0.0), steps=2, numel=numel)
    assert abs(len(tau_kept) - numel * keep_prob) < binomial_bound(numel, keep_prob)
    for update_kept in moved:
        overlap = len(update_kept & tau_kept)
        assert abs(overlap - numel * keep_prob**2) < binomial_bound(numel, keep_prob**2), overlap


def test_tau_is_added_at_its_own_positions_every_step():
    """alpha = 1 and p < 1: only tau' moves the weights, at the same positions every step, by alpha * tau / p."""
    numel, keep_prob = 20_000, 0.1
    tau = torch.randn(numel, generator=torch.Generator().manual_seed(2))
    param = torch.zeros(numel)
    optimizer = one_group_optimizer([("w", param)], OnlineMergingConfig("ondare", keep_prob, 1.0), {"w": tau})
    for step in range(3):
        param.grad = torch.randn(numel, generator=torch.Generator().manual_seed(step))
        optimizer.step()
    kept = param != 0
    assert abs(int(kept.sum()) - numel * keep_prob) < binomial_bound(numel, keep_prob)
    torch.testing.assert_close(param[kept], 3 * tau[kept] / keep_prob)


@pytest.mark.parametrize(
    ("method", "rescale", "keep_prob", "alpha", "dtype", "bound_misses"),
    [
        ("ondare", "authors", 0.3, 0.2, torch.float32, False),
        ("ondare", "l1", 0.3, 0.2, torch.float32, False),
        ("ondare", "authors", 0.05, 0.0, torch.float64, False),
        ("onties", "authors", 0.3, 0.2, torch.float32, False),
        ("onties", "inverse_p", 0.3, 0.2, torch.float32, False),
        ("onties", "l1", 0.3, 0.2, torch.float32, False),
        ("onties", "authors", 0.05, 0.5, torch.float32, False),
        ("onties", "authors", 0.05, 0.0, torch.float64, False),
        ("onties", "authors", 0.05, 0.2, torch.float32, True),
    ],
)
def test_numpy_and_torch_paths_step_alike(monkeypatch, method, rescale, keep_prob, alpha, dtype, bound_misses):
    """CPU float tensors take the numpy path (fused numba loops, ``kernels.py``), CUDA and half precision the torch
    one: same arithmetic, same steps, bit for bit (OnDARE: to the last bit of the square root): with the massive ties
    of Adam's first step (|delta| = lr almost everywhere), tau's sign election lost both ways, small tensors (no
    sampled bound), tensors of several segments, and a sampled bound that misses (selection among all entries)."""
    import sfmed_lf.merging.optimizer as optimizer_module
    import sfmed_lf.merging.sparsify as sparsify_module
    from sfmed_lf.merging.arrays import NumpyOps, TorchOps
    from tests.online_merging_helpers import make_params, random_taus, run_optimizer

    if bound_misses:
        monkeypatch.setattr(sparsify_module, "BOUND_SIGMAS", -30.0)  # a bound far above the k-th largest
    config = OnlineMergingConfig(method, keep_prob=keep_prob, alpha=alpha, rescale=rescale)
    # the torch path's elections, counted: the comparison means little unless both tau and delta lose some
    losses = {"delta": 0, "tau": 0}
    elect = optimizer_module._disagreements

    def counted_disagreements(tau_values, update_at_tau):
        update_disagrees, tau_agrees = elect(tau_values, update_at_tau)
        losses["delta"] += int(update_disagrees.sum())
        losses["tau"] += int((~tau_agrees & (tau_values != 0)).sum())
        return update_disagrees, tau_agrees

    monkeypatch.setattr(optimizer_module, "_disagreements", counted_disagreements)
    weights = {}
    for ops in (NumpyOps, TorchOps):
        monkeypatch.setattr(optimizer_module, "ops_for", lambda tensor, ops=ops: ops)
        named = make_params()
        big = ("big.weight", torch.randn(300, 300, generator=torch.Generator().manual_seed(4)))  # sampled top-k path
        named = [(name, param.to(dtype)) for name, param in [*named, big]]
        initial = {name: param.clone() for name, param in named}
        # tau' keeps the largest |tau|: scaled so that they are about |delta'| (~ lr = 0.01), and elections go both ways
        taus = random_taus(named, scale={0.3: 0.007, 0.05: 0.0045}[keep_prob])
        run_optimizer(one_group_optimizer(named, config, taus, weight_decay=0.1), [p for _, p in named], range(4))
        weights[ops.name] = named
    if method == "onties":
        assert losses["delta"] > 0 and losses["tau"] > 0, losses
    moved = 0
    for (name, ours), (_, theirs) in zip(weights["numpy"], weights["torch"], strict=True):
        if method == "ondare":  # the fused loop's square root is correctly rounded, torch's is not always
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(ours, theirs, rtol=2 * eps, atol=eps, msg=name)
        else:
            assert torch.equal(ours, theirs), name
        moved += int((ours != initial[name]).sum())
    assert moved > 0


@pytest.mark.parametrize("keep_prob", [0.01, 0.2])
def test_cuda_mask_generator_draws_a_bernoulli_process(keep_prob):
    """The torch generator path (what CUDA runs), exercised on the CPU."""
    from sfmed_lf.merging.masks import _chunk_positions_torch

    length = 200_000
    for key in range(3):
        positions = _chunk_positions_torch(length, keep_prob, key, torch.device("cpu"))
        assert abs(positions.numel() - length * keep_prob) < binomial_bound(length, keep_prob)
        assert bool((positions.diff() > 0).all()) and int(positions[0]) >= 0 and int(positions[-1]) < length
        gaps = torch.diff(positions, prepend=torch.tensor([-1]))
        assert abs(float(gaps.double().mean()) - 1 / keep_prob) < 6 * math.sqrt(1 - keep_prob) / keep_prob / math.sqrt(
            positions.numel()
        )
    assert not torch.equal(
        _chunk_positions_torch(1000, 0.5, 1, torch.device("cpu")),
        _chunk_positions_torch(1000, 0.5, 2, torch.device("cpu")),
    )


@pytest.mark.parametrize("keep_prob", [0.001, 0.01, 0.05, 0.3])
def test_the_sampled_bound_gathers_few_candidates(keep_prob):
    """Exactness does not depend on the bound (a miss falls back to all entries), speed does: the bound keeps
    k plus a few standard errors of entries, and misses rarely."""
    from sfmed_lf.merging.arrays import NumpyOps, TorchOps
    from sfmed_lf.merging.sparsify import SAMPLE_SIZE, DenseMagnitudes, candidate_bound

    n = 1_000_000
    values = (torch.randn(1000, 1000, generator=torch.Generator().manual_seed(9)) * torch.logspace(-2, 2, 1000)).abs()
    values = values.reshape(-1)
    k = keep_count(n, keep_prob)
    margin = 5.0 * math.sqrt(keep_prob * (1 - keep_prob) / (n // (n // SAMPLE_SIZE)))
    for ops in (TorchOps, NumpyOps):
        bound = candidate_bound(DenseMagnitudes(ops, ops.view(values)), k)
        fraction = float((values >= bound).double().mean())
        assert keep_prob < fraction < keep_prob + 3 * margin, (ops.name, fraction)


def test_dtensors_sharded_along_another_dimension_are_refused():
    from types import SimpleNamespace

    from torch.distributed.tensor import Replicate, Shard

    from sfmed_lf.merging.layout import dtensor_segments

    with pytest.raises(NotImplementedError, match=r"only sharding along dim 0"):
        dtensor_segments("w", SimpleNamespace(placements=(Replicate(), Shard(1))))


@pytest.mark.parametrize("generator", ["cpu", "torch"])
def test_every_position_is_kept_with_probability_p_even_the_first(generator):
    """Over many keys, each of the first positions of a chunk (where the gap arithmetic starts) is kept with
    probability p: a mask shifted by one would never keep position 0."""
    import sfmed_lf.merging.masks as masks

    keep_prob, keys = 0.3, 3000
    counts = torch.zeros(4)
    for key in range(keys):
        if generator == "cpu":
            positions = torch.from_numpy(masks._chunk_positions_cpu(4, keep_prob, key))
        else:
            positions = masks._chunk_positions_torch(4, keep_prob, key, torch.device("cpu"))
        counts[positions] += 1
    assert ((counts - keys * keep_prob).abs() < binomial_bound(keys, keep_prob)).all(), counts


@pytest.mark.parametrize("generator", ["cpu", "torch"])
def test_drawing_in_short_batches_gives_the_same_positions(monkeypatch, generator):
    """A chunk is drawn in batches until its end is passed (almost always one): continuing from the last position
    must give exactly the positions of one long draw."""
    import sfmed_lf.merging.masks as masks

    def draw(length):
        if generator == "cpu":
            return torch.from_numpy(masks._chunk_positions_cpu(length, 0.05, 11))
        return masks._chunk_positions_torch(length, 0.05, 11, torch.device("cpu"))

    whole = draw(50_000)
    monkeypatch.setattr(masks, "_draw_count", lambda keep_prob, remaining: 7)
    assert torch.equal(draw(50_000), whole)  # (torch's CPU generator too; CUDA's Philox offsets need not)


def test_the_sample_stride_is_the_smallest_prime_from_numel_over_the_sample_size():
    """A prime stride rarely divides a row length, so the strided sample visits every column."""
    from sfmed_lf.merging.sparsify import SAMPLE_SIZE, _sample_stride

    def is_prime(number: int) -> bool:
        return number >= 2 and all(number % divisor for divisor in range(2, number))

    for ratio in (0, 1, 2, 3, 4, 8, 9, 24, 25, 120, 1000):
        expected = max(2, ratio)
        while not is_prime(expected):
            expected += 1
        assert _sample_stride(ratio * SAMPLE_SIZE + 5) == expected, ratio


def test_other_devices_draw_their_masks_from_torchs_generator(monkeypatch):
    """CUDA tensors take the torch generator path of ``bernoulli_positions`` (keyed like the CPU one); run here on
    the CPU by standing in for the device's generator."""
    import sfmed_lf.merging.masks as masks

    calls = []
    real = masks._chunk_positions_torch

    def on_the_cpu(length, keep_prob, key, device):
        calls.append((length, key, device.type))
        return real(length, keep_prob, key, torch.device("cpu"))

    monkeypatch.setattr(masks, "_chunk_positions_torch", on_the_cpu)
    positions = masks.bernoulli_positions(5000, 0.1, seed=3, stream="delta", name="w", device="cuda")
    key = masks.chunk_seed(3, "delta", "w", 0)
    assert calls == [(5000, key, "cuda")]
    assert torch.equal(positions, real(5000, 0.1, key, torch.device("cpu")))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_top_k_of_a_large_tensor_ranks_only_the_candidates_and_small_ones_are_not_sampled(backend):
    """What makes top-p cheap: from 4 * SAMPLE_SIZE entries on, the k-th largest is selected among the entries
    above the sampled bound (a few per cent of them), never among all; below that, sampling does not pay."""
    from sfmed_lf.merging.arrays import NumpyOps, TorchOps
    from sfmed_lf.merging.sparsify import SAMPLE_SIZE, DenseMagnitudes, candidate_bound, top_k

    ops = {"numpy": NumpyOps, "torch": TorchOps}[backend]
    generator = torch.Generator().manual_seed(2)
    small = DenseMagnitudes(ops, ops.view(torch.rand(4 * SAMPLE_SIZE - 1, generator=generator)))
    assert candidate_bound(small, keep_count(len(small), 0.05)) == -math.inf
    values = torch.rand(4 * SAMPLE_SIZE, generator=generator)
    reads = []

    class CountedMagnitudes(DenseMagnitudes):
        def above(self, bound):
            reads.append(("above", bound))
            return super().above(bound)

        def all(self):
            reads.append(("all", None))
            return super().all()

    k = keep_count(values.numel(), 0.05)
    selection = top_k(CountedMagnitudes(ops, ops.view(values)), k)
    assert [kind for kind, _ in reads] == ["above"] and reads[0][1] > 0.9  # the 95th percentile, less a margin
    assert torch.equal(torch.as_tensor(selection.positions), values.topk(k).indices.sort().values)
