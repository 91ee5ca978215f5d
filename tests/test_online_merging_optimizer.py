"""Unit tests of the online-merging optimizer: AdamW equivalence, TIES election, storage, resume, sharded layouts."""

from __future__ import annotations

import math

import pytest
import torch

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig, Rescale
from sfmed_lf.merging.layout import Segment
from sfmed_lf.merging.optimizer import OnlineMergingAdamW, merge_adam_step_
from sfmed_lf.merging.sparse_delta import SparseDelta
from tests.online_merging_helpers import (
    InMemoryTaskVectors,
    grads_for,
    make_params,
    merging_optimizer,
    one_group_optimizer,
    random_taus,
    run_optimizer,
)


def torch_adamw(params, lr=1e-2, weight_decay=0.1, foreach=False):
    return torch.optim.AdamW(
        [{"params": params[:2], "weight_decay": weight_decay}, {"params": params[2:], "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.99),
        eps=1e-8,
        foreach=foreach,
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("method", "rescale"), [("ondare", r) for r in Rescale] + [("onties", "authors")])
def test_p1_alpha0_is_torch_adamw_bit_for_bit(method, rescale, foreach):
    named = make_params()
    reference = [p.clone().requires_grad_() for _, p in named]
    zero_taus = {n: torch.zeros_like(p) for n, p in named}
    config = OnlineMergingConfig(method, keep_prob=1.0, alpha=0.0, rescale=rescale)
    optimizer, _ = merging_optimizer(named, config, taus=zero_taus if method == "onties" else None)
    run_optimizer(optimizer, [p for _, p in named], range(30))
    run_optimizer(torch_adamw(reference, foreach=foreach), reference, range(30))
    for (name, ours), theirs in zip(named, reference, strict=True):
        assert torch.equal(ours, theirs.detach()), name


def test_alpha_one_adds_tau_every_step_and_ignores_adam():
    named = make_params()
    start = {n: p.clone() for n, p in named}
    taus = random_taus(named, scale=1.0)
    optimizer, _ = merging_optimizer(
        named, OnlineMergingConfig(MergeMethod.ONDARE, 1.0, 1.0), taus=taus, weight_decay=0.0
    )
    run_optimizer(optimizer, [p for _, p in named], range(5))
    for name, param in named:
        torch.testing.assert_close(param, start[name] + 5 * taus[name], rtol=1e-6, atol=1e-6)


def adam_moments_giving(update: torch.Tensor) -> dict:
    """Moments and hyper-parameters for which the AdamW update of step 1 is exactly ``update`` (beta = 0, eps = 0,
    v = 4, lr = 0.5: delta = -0.5 * m / 2)."""
    return {
        "exp_avg": -4.0 * update,
        "exp_avg_sq": torch.full_like(update, 4.0),
        "step": 1,
        "lr": 0.5,
        "betas": (0.0, 0.0),
        "eps": 0.0,
    }


@pytest.mark.parametrize("keep_prob", [1.0, 0.999])
def test_onties_sign_election_on_hand_made_tensors(keep_prob):
    # position:     0     1     2     3     4     5
    tau = torch.tensor([0.5, -0.5, 0.0, 0.2, -0.1, 0.0])
    update = torch.tensor([0.1, 0.3, -0.4, -0.6, -0.2, 0.0])
    # elected sign of tau + update: +, -, -, -, -, + (0 counts as +)
    alpha = 0.25
    config = OnlineMergingConfig(MergeMethod.ONTIES, keep_prob=keep_prob, alpha=alpha)  # 0.999: int(p * 6) = 5
    param = torch.zeros(6)
    moments = adam_moments_giving(update)
    merge_adam_step_(
        param,
        moments.pop("exp_avg"),
        moments.pop("exp_avg_sq"),
        SparseDelta.from_dense(tau),
        config,
        segments=[Segment("w", 0, 6, 0, 6)],
        **moments,
    )
    # 0: both agree (+)        -> a*0.5 + (1-a)*0.1
    # 1: tau - wins, update +  -> a*(-0.5)
    # 2: tau absent            -> (1-a)*(-0.4)
    # 3: update - wins, tau +  -> (1-a)*(-0.6)
    # 4: both agree (-)        -> a*(-0.1) + (1-a)*(-0.2)
    # 5: nothing (at p = 0.999 the one entry dropped by top-5 is this zero)
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


def test_onties_top_p_drops_the_small_updates_before_the_election():
    tau = torch.tensor([0.0, 0.0, -1.0, 0.0])
    update = torch.tensor([0.3, -0.1, 0.2, 0.05])
    config = OnlineMergingConfig(MergeMethod.ONTIES, keep_prob=0.5, alpha=0.5)  # k = 2: positions 0 and 2
    param = torch.zeros(4)
    moments = adam_moments_giving(update)
    merge_adam_step_(
        param,
        moments.pop("exp_avg"),
        moments.pop("exp_avg_sq"),
        SparseDelta.from_dense(tau),
        config,
        segments=[Segment("w", 0, 4, 0, 4)],
        **moments,
    )
    # 0 kept (+); 1 and 3 dropped by top-p; 2: tau - (|-1| > 0.2) wins the election, the update entry is dropped
    torch.testing.assert_close(param, torch.tensor([0.5 * 0.3, 0.0, 0.5 * -1.0, 0.0]))


def test_sparse_delta_roundtrip_and_size():
    dense = torch.zeros(300_000)
    positions = torch.randperm(300_000, generator=torch.Generator().manual_seed(0))[:15_000]
    dense[positions] = torch.rand(15_000, generator=torch.Generator().manual_seed(1)) + 0.5  # no zeros
    sparse = SparseDelta.from_dense(dense)
    assert torch.equal(sparse.to_dense(), dense)
    assert torch.equal(sparse.positions(), positions.sort().values)
    assert sparse.values.dtype == torch.float32
    stored = SparseDelta.from_dense(dense, torch.bfloat16)  # tau' stored in the parameters' dtype
    assert stored.values.dtype == torch.bfloat16 and torch.equal(stored.values, dense[dense != 0].to(torch.bfloat16))
    # 6 bytes per kept fp32 entry + 16 bytes per 65,536-element chunk
    assert sparse.nbytes() == 15_000 * 6 + 16 * math.ceil(300_000 / 65_536)


def test_persistent_memory_is_one_and_a_half_p_of_fp32_and_the_state_is_adamws():
    named = [("big.weight", torch.zeros(512, 1024))]
    taus = {"big.weight": torch.randn(512, 1024)}
    for method in MergeMethod.ONDARE, MergeMethod.ONTIES:
        params = [p.clone() for _, p in named]
        source = InMemoryTaskVectors(taus)
        optimizer = OnlineMergingAdamW(
            [{"params": params, "param_names": ["big.weight"]}], OnlineMergingConfig(method, 0.05, 1e-3), source
        )
        run_optimizer(optimizer, params, range(1))
        numel = params[0].numel()
        kept = optimizer.persistent_merge_bytes() - 16 * math.ceil(numel / 65_536)  # less the per-chunk counts
        assert kept % 6 == 0  # 6 bytes per kept fp32 entry: 1.5 * p of an fp32 copy
        if method is MergeMethod.ONTIES:
            assert kept // 6 == int(0.05 * numel)
        else:
            assert abs(kept // 6 - 0.05 * numel) < 6 * math.sqrt(numel * 0.05 * 0.95)
        assert source.closed, "the checkpoint source must be released once tau is built"
        state = optimizer.state_dict()["state"][0]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}  # shaped like AdamW's: every checkpointer takes it
        assert state["exp_avg"].shape == params[0].shape


@pytest.mark.parametrize("method", ["ondare", "onties"])
def test_resume_restores_tau_and_masks_whatever_the_global_rng(method):
    """tau' is rebuilt from the checkpoints on resume, masks are keyed: a resumed run ends at the uninterrupted
    run's weights bit for bit, although the global RNG (which the Trainer restores) is deliberately changed."""
    config = OnlineMergingConfig(method, keep_prob=0.3, alpha=0.05)
    taus = random_taus(make_params())
    straight, _ = merging_optimizer(named_straight := make_params(), config, taus=taus)
    run_optimizer(straight, [p for _, p in named_straight], range(12))

    first, _ = merging_optimizer(named_first := make_params(), config, taus=taus)
    run_optimizer(first, [p for _, p in named_first], range(6))
    saved_state = first.state_dict()
    saved_weights = [p.clone() for _, p in named_first]

    torch.manual_seed(1234)
    torch.rand(1000)  # a different global RNG state than at step 6
    resumed_params = [(n, w) for (n, _), w in zip(named_first, saved_weights, strict=True)]
    resumed, source = merging_optimizer(resumed_params, config, taus=taus)
    resumed.load_state_dict(saved_state)
    run_optimizer(resumed, [p for _, p in resumed_params], range(6, 12))
    assert sorted(source.requests) == sorted(n for n, _ in resumed_params), "tau' is rebuilt from the checkpoints"
    for (name, a), (_, b) in zip(named_straight, resumed_params, strict=True):
        assert torch.equal(a, b), name


def test_a_resume_with_other_checkpoints_ends_elsewhere():
    """The converse: tau' really comes from the checkpoints after a resume."""
    config = OnlineMergingConfig(MergeMethod.ONDARE, keep_prob=0.3, alpha=0.5)
    taus = random_taus(make_params())
    first, _ = merging_optimizer(named := make_params(), config, taus=taus)
    run_optimizer(first, [p for _, p in named], range(3))
    state, weights = first.state_dict(), [p.clone() for _, p in named]
    ends = []
    for scale in (1.0, 2.0):
        params = [(n, w.clone()) for (n, _), w in zip(named, weights, strict=True)]
        resumed, _ = merging_optimizer(params, config, taus={n: t * scale for n, t in taus.items()})
        resumed.load_state_dict(state)
        run_optimizer(resumed, [p for _, p in params], range(3, 4))
        ends.append(params[0][1])
    assert not torch.allclose(ends[0], ends[1])


def test_checkpoint_state_initialization_step_leaves_the_weights_alone():
    """torch.distributed.checkpoint initializes an empty optimizer by a step at lr 0 with zero gradients; tau' is
    added whatever the learning rate, so that step must not touch the weights."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    named = make_params()
    before = [p.clone() for _, p in named]
    optimizer, _ = merging_optimizer(named, OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.5))
    for _, param in named:
        param.requires_grad_()
    _init_optim_state(optimizer)
    assert optimizer.state and all(float(s["step"]) == 0 for s in optimizer.state.values())
    for (_, param), start in zip(named, before, strict=True):
        assert torch.equal(param.detach(), start)
    assert optimizer.param_groups[0]["lr"] == 1e-2


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
        ({"rescale": "sqrt"}, "sqrt"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs, message):
    values = {"method": "ondare", "keep_prob": 0.5, "alpha": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        OnlineMergingConfig(**values)


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
                segments.append(Segment(name, lo - begin, hi - lo, lo - offsets[name], param.numel()))
        optimizer = one_group_optimizer(named, config, taus)
        optimizer.param_groups[0]["params"] = [partition]  # what DeepSpeed does to the inner optimizer (names stay)
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


@pytest.mark.parametrize(
    "config",
    [
        OnlineMergingConfig(MergeMethod.ONDARE, 0.3, 0.05),
        OnlineMergingConfig(MergeMethod.ONTIES, 0.3, 0.05),
        OnlineMergingConfig(MergeMethod.ONTIES, 0.3, 0.05, rescale="l1"),
        OnlineMergingConfig(MergeMethod.ONDARE, 0.3, 0.05, rescale="l1"),
    ],
    ids=["ondare", "onties", "onties-l1", "ondare-l1"],
)
def test_one_flat_partition_of_whole_parameters_steps_as_the_parameters(config):
    """ZeRO with one rank: every parameter a whole segment of one flat buffer, at its offset (with padding between):
    the same selection, election and rescale per parameter as unsharded, for OnTIES too (tau' about as large as
    delta', so that both lose elections and tau's losers are gathered over several segments)."""
    taus = random_taus(make_params(), scale=0.007)
    unsharded = make_params()
    run_optimizer(one_group_optimizer(unsharded, config, taus), [p for _, p in unsharded], range(5))
    sharded = sharded_run(make_params(), taus, config, world_size=1, steps=5)
    for name, param in unsharded:
        torch.testing.assert_close(sharded[name], param, rtol=0, atol=1e-6)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ondare_masks_do_not_depend_on_the_partition_layout(world_size):
    config = OnlineMergingConfig(MergeMethod.ONDARE, keep_prob=0.3, alpha=0.05)
    taus = random_taus(make_params())
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
    optimizer.param_groups[0]["params"] = [flat, named[1][1]]
    with pytest.raises(RuntimeError, match="layout is unknown; a sharded optimizer must call register_layouts"):
        optimizer.step()


def test_a_shard_posing_as_a_whole_parameter_is_refused():
    """FSDP1 with use_orig_params hands the optimizer 1-D shards under the parameters' names: merging them as whole
    parameters (offset 0) would silently misplace masks and tau."""
    named = make_params()
    taus = random_taus(named)
    shard = named[0][1].reshape(-1)[256:].clone()  # the second half of layer.weight, as rank 1 would hold it
    shard.grad = torch.ones_like(shard)
    optimizer = one_group_optimizer([("layer.weight", shard)], OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.1), taus)
    with pytest.raises(RuntimeError, match=r"layer.weight has 256 elements in the optimizer but 512 in theta_sft"):
        optimizer.step()


def test_zero_layouts_read_deepspeed_partitions(monkeypatch):
    """The segment arithmetic of ZeRO-1/2 (one flat buffer per group, cut in equal partitions) and ZeRO-3 (every
    parameter cut in equal, zero-padded partitions), on stand-ins with the attributes DeepSpeed's optimizers have."""
    from types import SimpleNamespace

    import sfmed_lf.merging.layout as layout

    params = {name: torch.zeros(numel) for name, numel in (("module.a", 5), ("b", 7), ("c", 4))}
    names = {id(p): n for n, p in params.items()}
    a, b, c = params.values()
    zero2 = SimpleNamespace(
        single_partition_of_fp32_groups=[torch.zeros(8)],
        real_dp_process_group=["group"],
        partition_size=[8],
        round_robin_bit16_groups=[[a, b, c]],
        round_robin_bit16_offsets=[[0, 5, 12]],
        round_robin_bit16_meta=[[a, b, c]],
    )
    zero3 = SimpleNamespace(
        fp32_partitioned_groups_flat=[torch.zeros(7)],
        sub_group_process_groups=["group"],
        fp16_groups=[[SimpleNamespace(ds_numel=5), SimpleNamespace(ds_numel=8)]],
        fp16_partitioned_groups=[[SimpleNamespace(ds_numel=3), SimpleNamespace(ds_numel=4)]],
    )
    zero3_names = {id(p): n for p, n in zip(zero3.fp16_groups[0], ("a", "b"), strict=True)}
    expected = {
        0: ([Segment("a", 0, 5, 0, 5), Segment("b", 5, 3, 0, 7)], [Segment("a", 0, 3, 0, 5), Segment("b", 3, 4, 0, 8)]),
        1: ([Segment("b", 0, 4, 3, 7), Segment("c", 4, 4, 0, 4)], [Segment("a", 0, 2, 3, 5), Segment("b", 3, 4, 4, 8)]),
    }
    for rank, (zero2_segments, zero3_segments) in expected.items():
        monkeypatch.setattr(layout.dist, "get_rank", lambda group=None, rank=rank: rank)
        assert layout.zero12_layouts(zero2, names) == {id(zero2.single_partition_of_fp32_groups[0]): zero2_segments}
        assert layout.zero3_layouts(zero3, zero3_names) == {id(zero3.fp32_partitioned_groups_flat[0]): zero3_segments}


def test_wrapper_names_are_stripped_anywhere():
    from sfmed_lf.merging.layout import checkpoint_name

    assert checkpoint_name("module.module._orig_mod.model.norm.weight") == "model.norm.weight"
    wrapped = "_fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up_proj.weight"
    assert checkpoint_name(wrapped) == "model.layers.0.mlp.up_proj.weight"
    assert checkpoint_name("model.module.weight") == "model.module.weight"  # an inner module may be called `module`


def test_deepspeed_steps_one_group_at_a_time_and_the_checkpoints_stay_open_until_every_partition_has_tau():
    named = make_params()
    optimizer, source = merging_optimizer(named, OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.1), random_taus(named))
    weight, bias, head = (param.reshape(-1) for _, param in named)
    partitions = [weight.clone(), torch.cat([bias, head])]
    optimizer.register_layouts(
        {
            id(partitions[0]): [Segment("layer.weight", 0, 512, 0, 512)],
            id(partitions[1]): [Segment("layer.bias", 0, 32, 0, 32), Segment("head.weight", 32, 256, 0, 256)],
        }
    )
    groups = optimizer.param_groups
    for group, partition in zip(groups, partitions, strict=True):
        group["params"] = [partition]
        partition.grad = torch.ones_like(partition)
    for group in groups:  # DeepSpeed's ZeRO-1/2 _optimizer_step: the inner optimizer sees one group per call
        optimizer.param_groups = [group]
        optimizer.step()
        assert source.closed == (group is groups[-1])
    optimizer.param_groups = groups


def test_defaults_and_limits_are_adamws():
    params = [torch.zeros(3, requires_grad=True)]
    ours = OnlineMergingAdamW([{"params": params, "param_names": ["w"]}], OnlineMergingConfig("ondare", 0.5, 0.1), None)
    theirs = torch.optim.AdamW(params)
    for key in ("lr", "betas", "eps", "weight_decay"):
        assert ours.defaults[key] == theirs.defaults[key], key
    OnlineMergingAdamW([{"params": params, "param_names": ["w"]}], ours.config, None, lr=0.0, eps=0.0, weight_decay=0.0)
    for bad in ({"lr": -1e-9}, {"eps": -1e-12}, {"weight_decay": -0.1}, {"betas": (1.0, 0.9)}, {"betas": (0.9, -0.1)}):
        with pytest.raises(ValueError, match="invalid AdamW hyper-parameters"):
            OnlineMergingAdamW([{"params": params, "param_names": ["w"]}], ours.config, None, **bad)


def test_a_layout_resolver_is_asked_at_the_first_unknown_tensor():
    named = make_params()
    optimizer, _ = merging_optimizer(named, OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.1))
    flat = torch.zeros(512)
    flat.grad = torch.ones(512)
    calls = []

    def resolver():
        calls.append(1)
        return {id(flat): [Segment("layer.weight", 0, 512, 0, 512)]}

    optimizer.set_layout_resolver(resolver)
    optimizer.param_groups[0]["params"] = [flat]
    optimizer.step()
    optimizer.step()
    assert calls == [1] and bool((flat != 0).any())


def test_checkpoints_stay_open_while_a_parameter_has_had_no_gradient():
    named = make_params()
    optimizer, source = merging_optimizer(named, OnlineMergingConfig(MergeMethod.ONDARE, 0.5, 0.1))
    params = [p for _, p in named]
    for param, grad in zip(params[:2], grads_for(0, params[:2]), strict=True):
        param.grad = grad
    optimizer.step()
    assert not source.closed, "head.weight has no tau' yet"
    run_optimizer(optimizer, params, range(1, 2))
    assert source.closed
    assert optimizer.merged_numel() == sum(p.numel() for p in params)
