"""Real `llamafactory-cli train` runs on the embedded tiny model: the demo stages, online-merging DPO, its
equivalences, its errors, two-rank DDP and resume."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import BUNDLED_DPO, DPO_YAML, dpo, two_ranks
from tests.helpers import NO_MERGING, REPO_ROOT, lf_train, load_weights, read_json, run

pytestmark = pytest.mark.slow


def tau(pipeline) -> dict[str, torch.Tensor]:
    sft, base = load_weights(pipeline["sft"]), load_weights(pipeline["pt"])
    return {name: sft[name] - base[name] for name in sft}


@pytest.mark.parametrize("method", ["ondare", "onties"])
def test_online_merging_dpo_trains_and_reports(pipeline, tmp_path, method):
    dpo(pipeline, tmp_path, f"sfmed_merge_method={method}", "sfmed_merge_keep_prob=0.05")
    report = read_json(tmp_path / "sfmed_online_merging.json")
    assert report["method"] == method and report["keep_prob"] == 0.05
    assert report["tau_bytes_over_fp32_copy"] <= 0.10
    assert (tmp_path / "training_loss.png").is_file()
    assert read_json(tmp_path / "trainer_state.json")["global_step"] == 6
    trained, sft = load_weights(tmp_path), load_weights(pipeline["sft"])
    assert any(not torch.equal(trained[name], sft[name]) for name in sft)


def test_alpha_one_keep_all_moves_by_tau_per_step(pipeline, tmp_path):
    """With p = 1 and alpha = 1 the merged update is tau itself: theta_T = theta_sft + T * tau exactly, which
    shows that the trainer really uses the merging optimizer with tau read from the two checkpoints."""
    dpo(pipeline, tmp_path, "sfmed_merge_keep_prob=1.0", "sfmed_merge_alpha=1.0", "weight_decay=0.0")
    trained, sft, task = load_weights(tmp_path), load_weights(pipeline["sft"]), tau(pipeline)
    for name in sft:
        torch.testing.assert_close(trained[name], sft[name] + 6 * task[name], rtol=1e-5, atol=1e-5)


def test_keep_all_alpha_zero_equals_stock_adamw_dpo(pipeline, tmp_path):
    dpo(pipeline, tmp_path / "merging", "sfmed_merge_keep_prob=1.0", "sfmed_merge_alpha=0.0", "weight_decay=0.01")
    dpo(pipeline, tmp_path / "stock", *NO_MERGING, "optim=adamw_torch", "weight_decay=0.01")
    assert not (tmp_path / "stock" / "sfmed_online_merging.json").exists()
    merged, stock = load_weights(tmp_path / "merging"), load_weights(tmp_path / "stock")
    for name in stock:
        torch.testing.assert_close(merged[name], stock[name], rtol=1e-5, atol=1e-6)


def test_lora_is_rejected_before_training(pipeline, tmp_path):
    result = dpo(pipeline, tmp_path, "finetuning_type=lora", check=False)
    assert result.returncode != 0
    assert "sfmed_merge_method=ondare: needs `finetuning_type: full`, got `lora`" in result.stderr
    assert "train_loss" not in result.stdout + result.stderr


def test_mismatched_base_model_is_rejected_before_training(pipeline, tmp_path):
    other = tmp_path / "other-base"
    run(
        [
            "sfmed",
            "tiny-model",
            f"output_dir={other}",
            "tokenizer=bpe",
            "hidden_size=32",
            "intermediate_size=64",
            "num_attention_heads=4",
        ]
    )
    result = lf_train(
        DPO_YAML,
        f"model_name_or_path={pipeline['sft']}",
        f"sfmed_merge_base_model={other}",
        f"output_dir={tmp_path / 'out'}",
        "max_steps=2",
        *BUNDLED_DPO,
        check=False,
    )
    assert result.returncode != 0
    assert "model.embed_tokens.weight: shape [2048, 32] in the base (theta_base) model" in result.stderr
    assert "the policy has [2048, 64]" in result.stderr
    assert not (tmp_path / "out" / "trainer_state.json").exists()


def test_two_ddp_ranks_keep_identical_weights(pipeline, tmp_path):
    dpo(pipeline, tmp_path, "sfmed_merge_keep_prob=0.3", "sfmed_merge_alpha=0.01", "ddp_backend=gloo", env=two_ranks())
    check = read_json(tmp_path / "sfmed_replica_check.json")
    assert check["global_step"] == 6
    assert len(check["digests"]) == 2 and check["identical"] is True


def test_resume_from_checkpoint_matches_uninterrupted_run(pipeline, tmp_path):
    """OnDARE (random masks) resumed from a checkpoint whose saved RNG state is deliberately replaced: masks are keyed
    by (seed, step, name, index) and tau' is rebuilt from the checkpoints, so the global RNG the Trainer restores
    cannot matter, and the resumed run ends at the uninterrupted run's weights."""
    import random
    import shutil

    import numpy as np

    common = (
        "sfmed_merge_keep_prob=0.3",
        "sfmed_merge_alpha=0.05",
        "save_strategy=steps",
        "save_steps=3",
        "disable_shuffling=true",  # the epoch's data order must not come from the RNG state either
    )
    dpo(pipeline, tmp_path / "straight", *common)
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", checkpoint)
    saved_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert all(set(state) == {"step", "exp_avg", "exp_avg_sq"} for state in saved_state.values())
    rng = torch.load(checkpoint / "rng_state.pth", weights_only=False)
    other = {
        "python": random.Random(999).getstate(),
        "numpy": np.random.RandomState(999).get_state(),
        "cpu": torch.Generator().manual_seed(999).get_state(),
    }
    assert not torch.equal(rng["cpu"], other["cpu"])
    torch.save({**rng, **other}, checkpoint / "rng_state.pth")
    dpo(pipeline, tmp_path / "resumed", *common, f"resume_from_checkpoint={checkpoint}")
    straight, resumed = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-7)


def test_an_fsdp_config_accelerate_would_drop_is_refused(pipeline, tmp_path):
    """On CPU ranks accelerate ignores `fsdp` (with sync_module_states false, nothing complains) and trains DDP."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / DPO_YAML).read_text())
    config.update(fsdp="full_shard auto_wrap", fsdp_config={"sync_module_states": False})
    config_path = tmp_path / "dpo_fsdp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = lf_train(
        str(config_path),
        f"model_name_or_path={pipeline['sft']}",
        f"sfmed_merge_base_model={pipeline['pt']}",
        f"output_dir={tmp_path / 'out'}",
        "max_steps=2",
        "ddp_backend=gloo",
        *BUNDLED_DPO,
        env=two_ranks(),
        check=False,
    )
    assert result.returncode != 0
    assert "`fsdp: full_shard auto_wrap` is set, but accelerate is not running FSDP here" in result.stderr
    assert not (tmp_path / "out" / "trainer_state.json").exists()


def test_board_extra_arguments_reach_the_training_subprocess(pipeline, tmp_path):
    """LLaMA-Board merges its extra-arguments JSON into the run's arguments, writes them with `save_cmd` and
    starts `llamafactory-cli train <yaml>` in a subprocess (webui/runner.py); this replays that path."""
    import json

    import yaml
    from llamafactory.webui.common import save_cmd

    args = yaml.safe_load((REPO_ROOT / DPO_YAML).read_text())
    args.update(
        model_name_or_path=str(pipeline["sft"]),
        output_dir=str(tmp_path),
        max_steps=4,
        dataset_dir=str(REPO_ROOT),
        dataset="sfmed_sample_dpo_pairs",
        sfmed_merge_method="none",
    )
    extra_args = json.dumps(
        {"sfmed_merge_method": "onties", "sfmed_merge_base_model": str(pipeline["pt"]), "sfmed_merge_keep_prob": 0.2}
    )
    args.update(json.loads(extra_args))
    run(
        ["llamafactory-cli", "train", save_cmd(args)],
        env={"LLAMABOARD_ENABLED": "1", "LLAMABOARD_WORKDIR": str(tmp_path)},
    )
    report = read_json(tmp_path / "sfmed_online_merging.json")
    assert (report["method"], report["keep_prob"]) == ("onties", 0.2)
