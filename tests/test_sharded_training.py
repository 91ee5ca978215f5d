"""Online merging under every data-parallel layout, through `llamafactory-cli train` on CPU over gloo:
single process, DDP, DeepSpeed ZeRO-2 and ZeRO-3 (2 ranks each) and a two-node launch simulated on loopback.

Masks are keyed by parameter name and element index (sfmed_lf/merging/masks.py), so OnDARE draws the same mask
whatever slice of a parameter a rank holds: all layouts must end at the same weights, for p < 1 too. OnTIES ranks
magnitudes within each rank's slice of a parameter, so for p < 1 its selection depends on the layout; at p = 1 it
keeps everything and all layouts agree again."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.conftest import dpo, free_port, two_ranks
from tests.helpers import load_weights, read_json

pytestmark = pytest.mark.slow
GLOBAL_BATCH = 8
LAYOUTS = {
    "single": ((f"per_device_train_batch_size={GLOBAL_BATCH}",), None),
    "ddp": (("ddp_backend=gloo",), "two"),
    "zero2": (("deepspeed=examples/deepspeed/ds_z2_config.json",), "two"),
    "zero3": (("deepspeed=examples/deepspeed/ds_z3_config.json",), "two"),
}
MERGING = {
    "ondare-p0.3": ("sfmed_merge_method=ondare", "sfmed_merge_keep_prob=0.3", "sfmed_merge_alpha=0.05"),
    "onties-p1": ("sfmed_merge_method=onties", "sfmed_merge_keep_prob=1.0", "sfmed_merge_alpha=0.05"),
}


def train(pipeline, output_dir: Path, layout: str, merging: tuple[str, ...], *extra: str) -> dict:
    overrides, ranks = LAYOUTS[layout]
    per_device = () if layout == "single" else (f"per_device_train_batch_size={GLOBAL_BATCH // 2}",)
    dpo(
        pipeline,
        output_dir,
        "max_steps=5",
        *merging,
        *per_device,
        *overrides,
        *extra,
        env=two_ranks() if ranks else None,
    )
    return load_weights(output_dir)


def assert_same_weights(actual: dict, expected: dict, atol: float = 2e-6) -> None:
    for name, tensor in expected.items():  # DeepSpeed also saves the tied lm_head; the shared names suffice
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("merging", sorted(MERGING))
def test_all_layouts_end_at_the_same_weights(pipeline, tmp_path, merging):
    weights = {layout: train(pipeline, tmp_path / layout, layout, MERGING[merging]) for layout in LAYOUTS}
    sft = load_weights(pipeline["sft"])
    assert any((weights["single"][n] - sft[n]).abs().max() > 1e-3 for n in sft), "training must move the weights"
    for layout in ("ddp", "zero2", "zero3"):
        assert_same_weights(weights[layout], weights["single"])
        report = read_json(tmp_path / layout / "sfmed_online_merging.json")
        assert report["zero_stage"] == {"ddp": 0, "zero2": 2, "zero3": 3}[layout]
        if layout != "ddp":  # each rank merges its own partition only
            assert report["merged_elements_rank0"] < sum(t.numel() for t in sft.values())


def test_onties_top_p_under_zero2_keeps_replicas_identical(pipeline, tmp_path):
    train(pipeline, tmp_path, "zero2", ("sfmed_merge_method=onties", "sfmed_merge_keep_prob=0.3"))
    check = read_json(tmp_path / "sfmed_replica_check.json")
    assert check["identical"] is True and len(check["digests"]) == 2


def test_resume_from_a_zero3_checkpoint_matches_the_uninterrupted_run(pipeline, tmp_path):
    merging = MERGING["ondare-p0.3"]
    saving = ("save_strategy=steps", "save_steps=3", "max_steps=6")
    straight = train(pipeline, tmp_path / "straight", "zero3", merging, *saving)
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert list(checkpoint.glob("global_step3/*optim_states.pt")), "DeepSpeed must checkpoint the optimizer"
    resumed = train(pipeline, tmp_path / "resumed", "zero3", merging, *saving, f"resume_from_checkpoint={checkpoint}")
    assert_same_weights(resumed, straight, atol=1e-7)


def test_two_node_launch_on_loopback(pipeline, tmp_path):
    """LLaMA-Factory's multi-node variables, two node ranks of one process each on this machine."""
    port, results = free_port(), {}

    def node(rank: int) -> None:
        env = {
            "FORCE_TORCHRUN": "1",
            "NNODES": "2",
            "NODE_RANK": str(rank),
            "NPROC_PER_NODE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "HF_DATASETS_CACHE": str(tmp_path / f"cache{rank}"),
        }
        results[rank] = dpo(
            pipeline,
            tmp_path / "run",
            "max_steps=5",
            *MERGING["ondare-p0.3"],
            "ddp_backend=gloo",
            f"per_device_train_batch_size={GLOBAL_BATCH // 2}",
            env=env,
            check=False,
        )

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rank, result in results.items():
        assert result.returncode == 0, f"node {rank}:\n{result.stderr[-4000:]}"
    check = read_json(tmp_path / "run" / "sfmed_replica_check.json")
    assert check["identical"] is True and len(check["digests"]) == 2
    single = train(pipeline, tmp_path / "single", "single", MERGING["ondare-p0.3"])
    assert_same_weights(load_weights(tmp_path / "run"), single)
