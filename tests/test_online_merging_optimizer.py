"""Unit tests of the online-merging math: AdamW equivalence, masks, TIES, rescaling, storage, resume."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig, Rescale
from sfmed_lf.merging.layout import Segment
from sfmed_lf.merging.masks import MASK_CHUNK, bernoulli_keep_mask, keyed_uniform
from sfmed_lf.merging.optimizer import OnlineMergingAdamW, merge_update_
from sfmed_lf.merging.sparse_delta import SparseDelta
from sfmed_lf.merging.sparsify import elect_signs, magnitude_threshold, sparsify_


class InMemoryTaskVectors:
    """A TaskVectorSource stand-in holding dense tau per name (the real one reads checkpoints, tested apart);
    like the real one, it sparsifies only the requested flat range of a parameter."""

    def __init__(self, taus: dict[str, torch.Tensor]) -> None:
        self.taus = taus
        self.closed = False
        self.requests: list[str] = []

    def sparse_slice(self, name, config, *, offset=0, numel=None, device="cpu", dtype=torch.float32):
        self.requests.append(name)
        flat = self.taus[name].reshape(-1).to(torch.float32)
        tau = flat[offset : flat.numel() if numel is None else offset + numel].clone()
        sparsify_(tau, config, name=name, stream="tau", offset=offset)
        return SparseDelta.from_dense(tau, dtype=dtype)

    def close(self):
        self.closed = True


def make_params(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"layer.weight": (32, 16), "layer.bias": (32,), "head.weight": (8, 32)}
    return [(name, torch.randn(shape, generator=generator)) for name, shape in shapes.items()]


def grads_for(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=generator) for p in params]


def run_optimizer(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        for param, grad in zip(params, grads_for(step, params), strict=True):
            param.grad = grad
        optimizer.step()


def merging_optimizer(named, config, taus=None, lr=1e-2, weight_decay=0.1):
    params = [p for _, p in named]
    groups = [
        {"params": params[:2], "param_names": [n for n, _ in named[:2]], "weight_decay": weight_decay},
        {"params": params[2:], "param_names": [n for n, _ in named[2:]], "weight_decay": 0.0},
    ]
    taus = taus if taus is not None else {n: torch.randn_like(p) * 0.1 for n, p in named}
    source = InMemoryTaskVectors(taus)
    return OnlineMergingAdamW(
        groups, config=config, task_vector_source=source, lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay
    ), source


def torch_adamw(params, lr=1e-2, weight_decay=0.1):
    return torch.optim.AdamW(
        [{"params": params[:2], "weight_decay": weight_decay}, {"params": params[2:], "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.99),
        eps=1e-8,
        foreach=False,
    )


@pytest.mark.parametrize("rescale", list(Rescale))
def test_ondare_with_p1_alpha0_is_torch_adamw(rescale):
    named = make_params()
    reference = [p.clone().requires_grad_() for _, p in named]
    optimizer, _ = merging_optimizer(
        named, OnlineMergingConfig(MergeMethod.ONDARE, keep_prob=1.0, alpha=0.0, rescale=rescale)
    )
    run_optimizer(optimizer, [p for _, p in named], range(30))
    run_optimizer(torch_adamw(reference), reference, range(30))
    for (name, ours), theirs in zip(named, reference, strict=True):
        torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=1e-6, msg=name)


def test_onties_with_p1_alpha0_and_zero_tau_is_torch_adamw():
    named = make_params()
    reference = [p.clone().requires_grad_() for _, p in named]
    zero_taus = {n: torch.zeros_like(p) for n, p in named}
    optimizer, _ = merging_optimizer(named, OnlineMergingConfig(MergeMethod.ONTIES, 1.0, 0.0), taus=zero_taus)
    run_optimizer(optimizer, [p for _, p in named], range(30))
    run_optimizer(torch_adamw(reference), reference, range(30))
    for (_, ours), theirs in zip(named, reference, strict=True):
        torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=1e-6)


def test_alpha_one_adds_tau_every_step_and_ignores_adam():
    named = make_params()
    start = {n: p.clone() for n, p in named}
    taus = {n: torch.randn_like(p) for n, p in named}
    optimizer, _ = merging_optimizer(
        named, OnlineMergingConfig(MergeMethod.ONDARE, 1.0, 1.0), taus=taus, weight_decay=0.0
    )
    run_optimizer(optimizer, [p for _, p in named], range(5))
    for name, param in named:
        torch.testing.assert_close(param, start[name] + 5 * taus[name], rtol=1e-6, atol=1e-6)


def test_dare_kept_fraction_within_binomial_bounds():
    numel, keep_prob = 2_000_000, 0.05
    sigma = math.sqrt(numel * keep_prob * (1 - keep_prob))
    for step in range(3):
        kept = bernoulli_keep_mask(numel, keep_prob, seed=7, stream=f"update-{step}", name="w").sum().item()
        assert abs(kept - numel * keep_prob) < 5 * sigma
    update = torch.rand(numel, generator=torch.Generator().manual_seed(0)) + 0.5  # no zeros: kept = non-zero
    keep = sparsify_(update, OnlineMergingConfig(MergeMethod.ONDARE, keep_prob, 0.0), name="w", stream="s")
    assert abs(keep.sum().item() - numel * keep_prob) < 5 * sigma
    assert torch.count_nonzero(update) == keep.sum()


def test_masks_are_keyed_and_independent_of_slicing():
    full = keyed_uniform(MASK_CHUNK + 5000, seed=3, stream="update-9", name="w")
    for offset, numel in [(0, 10), (123, 4000), (MASK_CHUNK - 100, 300), (MASK_CHUNK + 17, 4983)]:
        part = keyed_uniform(numel, seed=3, stream="update-9", name="w", offset=offset)
        assert torch.equal(part, full[offset : offset + numel])
    others = [
        keyed_uniform(1000, seed=3, stream="update-10", name="w"),
        keyed_uniform(1000, seed=3, stream="update-9", name="v"),
        keyed_uniform(1000, seed=4, stream="update-9", name="w"),
    ]
    for other in others:
        assert not torch.equal(other, full[:1000])
        assert abs(torch.corrcoef(torch.stack([other, full[:1000]]))[0, 1]) < 0.15


def test_ties_keeps_exactly_the_top_p_by_magnitude():
    values = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0, -0.05, 0.7, -1.5, 0.3])
    config = OnlineMergingConfig(MergeMethod.ONTIES, keep_prob=0.3, alpha=0.0)
    kept = values.clone()
    keep = sparsify_(kept, config, name="w", stream="s")
    assert keep.tolist() == [False, True, False, True, False, False, False, False, True, False]
    assert kept.tolist() == [0, -3.0, 0, 2.0, 0, 0, 0, 0, -1.5, 0]
    assert magnitude_threshold(values.abs(), 0.3, seed=0, name="w").item() == 1.5


@pytest.mark.parametrize("distribution", ["normal", "heavy-tailed", "many-ties", "mostly-zero"])
@pytest.mark.parametrize("keep_prob", [0.001, 0.05, 0.5, 0.999])
def test_bracketed_threshold_is_the_exact_kth_largest(distribution, keep_prob):
    generator = torch.Generator().manual_seed(zlib.crc32(f"{distribution}/{keep_prob}".encode()))
    n = 300_000
    values = {
        "normal": lambda: torch.randn(n, generator=generator),
        "heavy-tailed": lambda: torch.randn(n, generator=generator) ** 5,
        "many-ties": lambda: torch.randint(0, 7, (n,), generator=generator).float(),
        "mostly-zero": lambda: torch.randn(n, generator=generator) * (torch.rand(n, generator=generator) < 0.01),
    }[distribution]()
    magnitudes = values.abs()
    keep = math.ceil(keep_prob * n)
    exact = magnitudes.kthvalue(n - keep + 1).values
    assert magnitude_threshold(magnitudes, keep_prob, seed=1, name="w") == exact


def test_bracket_miss_falls_back_to_a_full_selection(monkeypatch):
    import sfmed_lf.merging.sparsify as sparsify_module

    monkeypatch.setattr(sparsify_module, "BRACKET_SIGMAS", 0.0)  # a bracket of width ~0 misses the quantile
    magnitudes = torch.rand(200_000, generator=torch.Generator().manual_seed(3))
    exact = magnitudes.kthvalue(200_000 - 10_000 + 1).values
    assert magnitude_threshold(magnitudes, 0.05, seed=0, name="w") == exact


def test_rescale_modes():
    update = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
    dense_l1 = update.abs().sum()
    inverse = update.clone()
    keep = sparsify_(
        inverse, OnlineMergingConfig(MergeMethod.ONDARE, 0.2, 0.0, Rescale.INVERSE_P), name="w", stream="s"
    )
    torch.testing.assert_close(inverse[keep], update[keep] / 0.2)
    l1 = update.clone()
    sparsify_(l1, OnlineMergingConfig(MergeMethod.ONDARE, 0.2, 0.0, Rescale.L1), name="w", stream="s")
    torch.testing.assert_close(l1.abs().sum(), dense_l1, rtol=1e-5, atol=0)
    plain = update.clone()
    sparsify_(plain, OnlineMergingConfig(MergeMethod.ONDARE, 0.2, 0.0, Rescale.NONE), name="w", stream="s")
    torch.testing.assert_close(plain[keep], update[keep], rtol=0, atol=0)


def test_onties_sign_election_on_hand_made_tensors():
    # position:     0     1     2     3     4     5
    tau = torch.tensor([0.5, -0.5, 0.0, 0.2, -0.1, 0.0])
    update = torch.tensor([0.1, 0.3, -0.4, -0.6, -0.2, 0.0])
    # elected sign of tau + update: +, -, -, -, -, + (0 counts as +)
    assert elect_signs(tau, update).tolist() == [1, -1, -1, -1, -1, 1]
    alpha = 0.25
    config = OnlineMergingConfig(MergeMethod.ONTIES, keep_prob=1.0, alpha=alpha)
    param = torch.zeros(6)
    merge_update_(param, update.clone(), SparseDelta.from_dense(tau), config, segments=[Segment("w", 0, 6, 0)], step=1)
    # 0: both agree (+)        -> a*0.5 + (1-a)*0.1
    # 1: tau - wins, update +  -> a*(-0.5)
    # 2: tau absent            -> (1-a)*(-0.4)
    # 3: update - wins, tau +  -> (1-a)*(-0.6)
    # 4: both agree (-)        -> a*(-0.1) + (1-a)*(-0.2)
    expected = torch.tensor(
        [
            alpha * 0.5 + (1 - alpha) * 0.1,
            -alpha * 0.5,
            (1 - alpha) * -0.4,
            (1 - alpha) * -0.6,
            alpha * -0.1 + (1 - alpha) * -0.2,
            0.0,
        ]
    )
    torch.testing.assert_close(param, expected)


def test_sparse_delta_roundtrip_and_size():
    dense = torch.zeros(300_000)
    positions = torch.randperm(300_000, generator=torch.Generator().manual_seed(0))[:15_000]
    dense[positions] = torch.rand(15_000, generator=torch.Generator().manual_seed(1)) + 0.5  # no zeros
    sparse = SparseDelta.from_dense(dense)
    assert torch.equal(sparse.to_dense(), dense)
    assert torch.equal(sparse.positions(), positions.sort().values)
    # 6 bytes per kept fp32 entry + 8 bytes per 65,536-element chunk
    assert sparse.nbytes() == 15_000 * 6 + 8 * (math.ceil(300_000 / 65_536) + 1)


def test_persistent_memory_is_below_ten_percent_of_fp32_at_p_005():
    named = [("big.weight", torch.zeros(512, 1024))]
    taus = {"big.weight": torch.randn(512, 1024)}
    for method in MergeMethod.ONDARE, MergeMethod.ONTIES:
        params = [p.clone() for _, p in named]
        source = InMemoryTaskVectors(taus)
        optimizer = OnlineMergingAdamW(
            [{"params": params, "param_names": ["big.weight"]}], OnlineMergingConfig(method, 0.05, 1e-3), source
        )
        run_optimizer(optimizer, params, range(1))
        fraction = optimizer.persistent_merge_bytes() / (4 * params[0].numel())
        assert 0.07 < fraction <= 0.08, (method, fraction)
        assert source.closed, "the checkpoint source must be released once tau is built"
        assert set(optimizer.state[params[0]]) == {"step", "exp_avg", "exp_avg_sq", *SparseDelta.STATE_KEYS}


@pytest.mark.parametrize("method", list(MergeMethod)[1:])
def test_state_dict_resume_gives_the_same_weights(method):
    config = OnlineMergingConfig(method, keep_prob=0.3, alpha=0.05)
    taus = {n: torch.randn_like(p) * 0.1 for n, p in make_params()}
    straight, _ = merging_optimizer(named_straight := make_params(), config, taus=taus)
    run_optimizer(straight, [p for _, p in named_straight], range(12))

    first, _ = merging_optimizer(named_first := make_params(), config, taus=taus)
    run_optimizer(first, [p for _, p in named_first], range(6))
    saved_state = first.state_dict()
    saved_weights = [p.clone() for _, p in named_first]

    resumed_params = [(n, w) for (n, _), w in zip(named_first, saved_weights, strict=True)]
    resumed, source = merging_optimizer(
        resumed_params, config, taus={n: torch.full_like(t, 99.0) for n, t in taus.items()}
    )
    resumed.load_state_dict(saved_state)
    run_optimizer(resumed, [p for _, p in resumed_params], range(6, 12))
    assert source.requests == [], "a resumed optimizer must use the saved tau, not rebuild it"
    state = resumed.state[resumed_params[0][1]]
    assert state["tau_low_positions"].dtype == torch.int16 and state["tau_chunk_offsets"].dtype == torch.int64
    for (_, a), (_, b) in zip(named_straight, resumed_params, strict=True):
        assert torch.equal(a, b)


def test_param_groups_need_names():
    with pytest.raises(ValueError, match="param_names"):
        OnlineMergingAdamW(
            [{"params": [torch.zeros(3, requires_grad=True)]}], OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.1), None
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_prob": 0.0}, "keep_prob"),
        ({"keep_prob": 1.5}, "keep_prob"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.1}, "alpha"),
        ({"method": "none"}, "method"),
        ({"method": "slerp"}, "slerp"),
    ],
)
def test_config_validation(kwargs, message):
    values = {"method": "ondare", "keep_prob": 0.5, "alpha": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        OnlineMergingConfig(**values)


def one_group_optimizer(named, config, taus) -> OnlineMergingAdamW:
    return OnlineMergingAdamW(
        [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}],
        config,
        InMemoryTaskVectors(taus),
        lr=1e-2,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.0,
    )


def sharded_run(named, taus, config, world_size: int, steps: int) -> dict[str, torch.Tensor]:
    """Simulate ZeRO-1/2: concatenate all parameters (with a padding gap), cut the flat buffer into `world_size`
    equal partitions, give each "rank" its own optimizer over its partition, and reassemble the weights."""
    pad = 5
    offsets, cursor = {}, 0
    for name, param in named:
        offsets[name] = cursor
        cursor += param.numel() + pad
    size = -(-cursor // world_size)
    flat = torch.zeros(size * world_size)
    for name, param in named:
        flat[offsets[name] : offsets[name] + param.numel()] = param.reshape(-1)
    partitions = [flat[r * size : (r + 1) * size].clone() for r in range(world_size)]
    optimizers = []
    for rank, partition in enumerate(partitions):
        begin, end = rank * size, (rank + 1) * size
        segments = []
        for name, param in named:
            lo, hi = max(offsets[name], begin), min(offsets[name] + param.numel(), end)
            if lo < hi:
                segments.append(Segment(name, lo - begin, hi - lo, lo - offsets[name]))
        optimizer = one_group_optimizer(named, config, taus)
        optimizer.param_groups[0]["params"] = [partition]  # what DeepSpeed does to the inner optimizer
        optimizer.register_layouts({id(partition): segments})
        optimizers.append(optimizer)
    full_grads = torch.zeros(size * world_size)
    for step in range(steps):
        for (name, param), grad in zip(named, grads_for(step, [p for _, p in named]), strict=True):
            full_grads[offsets[name] : offsets[name] + param.numel()] = grad.reshape(-1)
        for rank, (partition, optimizer) in enumerate(zip(partitions, optimizers, strict=True)):
            partition.grad = full_grads[rank * size : (rank + 1) * size].clone()
            optimizer.step()
    flat = torch.cat(partitions)
    return {name: flat[offsets[name] : offsets[name] + p.numel()].view_as(p) for name, p in named}


@pytest.mark.parametrize("world_size", [2, 3])
def test_ondare_masks_do_not_depend_on_the_partition_layout(world_size):
    config = OnlineMergingConfig(MergeMethod.ONDARE, keep_prob=0.3, alpha=0.05)
    taus = {n: torch.randn_like(p) * 0.1 for n, p in make_params()}
    unsharded = make_params()
    run_optimizer(one_group_optimizer(unsharded, config, taus), [p for _, p in unsharded], range(8))
    sharded = sharded_run(make_params(), taus, config, world_size, steps=8)
    for name, param in unsharded:
        torch.testing.assert_close(sharded[name], param, rtol=0, atol=1e-6)


def test_unregistered_sharded_tensor_is_a_clear_error():
    named = make_params()
    optimizer, _ = merging_optimizer(named, OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.1))
    flat = torch.zeros(10, requires_grad=True)
    flat.grad = torch.ones(10)
    optimizer.param_groups[0]["params"] = [flat]
    with pytest.raises(RuntimeError, match="layout is unknown; a sharded optimizer must call register_layouts"):
        optimizer.step()
