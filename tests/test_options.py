"""SF-Med options parsed by LLaMA-Factory's own argument parser: accepted values and clear errors."""

from __future__ import annotations

import json

import pytest
import yaml
from llamafactory.hparams.parser import _parse_train_args

from tests.helpers import REPO_ROOT

BASE_ARGS = {
    "model_name_or_path": "unused",
    "stage": "dpo",
    "do_train": True,
    "finetuning_type": "full",
    "dataset": "sfmed_sample_dpo_pairs",
    "dataset_dir": str(REPO_ROOT),
    "template": "sfmed",
    "output_dir": "unused",
    "report_to": "none",
    "sfmed_merge_method": "ondare",
    "sfmed_merge_base_model": "base",
}


def parse(**changes):
    return _parse_train_args({**BASE_ARGS, **changes})


def test_valid_options_reach_finetuning_args():
    finetuning_args = parse(
        sfmed_merge_method="onties",
        sfmed_merge_keep_prob=0.05,
        sfmed_merge_alpha=0.5,
        sfmed_merge_rescale="l1",
        sfmed_merge_seed=7,
    )[3]
    config = finetuning_args.online_merging_config(default_seed=42)
    assert (config.method.value, config.keep_prob, config.alpha, config.rescale.value, config.seed) == (
        "onties",
        0.05,
        0.5,
        "l1",
        7,
    )
    assert finetuning_args.online_merging_config(default_seed=42).seed == 7
    assert parse(sfmed_merge_seed=None)[3].online_merging_config(default_seed=42).seed == 42
    assert parse(sfmed_merge_method="none", sfmed_merge_base_model=None)[3].online_merging_enabled is False


@pytest.mark.parametrize(("method", "applied"), [("ondare", "inverse_p"), ("onties", "none")])
def test_the_default_rescale_is_the_authors_per_method(method, applied):
    config = parse(sfmed_merge_method=method)[3].online_merging_config(default_seed=42)
    assert (config.rescale.value, config.applied_rescale.value) == ("authors", applied)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"finetuning_type": "lora"}, "needs `finetuning_type: full`, got `lora`"),
        ({"finetuning_type": "freeze"}, "needs `finetuning_type: full`, got `freeze`"),
        ({"stage": "sft"}, "implemented for `stage: dpo`, got `stage: sft`"),
        ({"sfmed_merge_base_model": None}, "set `sfmed_merge_base_model`"),
        ({"sfmed_merge_keep_prob": 0.0}, r"keep_prob \(p\) must be in \(0, 1\]"),
        ({"sfmed_merge_alpha": 2.0}, r"alpha must be in \[0, 1\]"),
        ({"use_galore": True}, "`use_galore` selects another optimizer"),
        ({"use_adam_mini": True}, "`use_adam_mini` selects another optimizer"),
    ],
)
def test_invalid_combinations_fail_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        parse(**changes)


def test_unknown_choice_is_rejected_by_the_parser():
    with pytest.raises(ValueError, match="sfmed_merge_method"):
        parse(sfmed_merge_method="slerp")


@pytest.mark.parametrize(
    "config",
    sorted((REPO_ROOT / "examples" / "yaml").rglob("*.yaml")),
    ids=lambda p: p.relative_to(REPO_ROOT).as_posix(),
)
def test_example_configs_parse(config, monkeypatch):
    values = yaml.safe_load(config.read_text())
    if "stage" not in values:  # `sfmed` subcommand configs are tested with their commands
        return
    deepspeed = values.pop("deepspeed", None)  # HF would initialise DeepSpeed here; check the file instead
    if deepspeed is not None:
        assert json.loads((REPO_ROOT / deepspeed).read_text())["zero_optimization"]["stage"] in (2, 3)
    values.pop("bf16", None)  # needs a bf16-capable device at parse time
    # the datasets of the 7B YAMLs are written by the recipe's stages: tests/test_recipe.py checks them
    monkeypatch.setattr("sfmed_lf.hparams.check_datasets_produced", lambda data_args: None)
    finetuning_args = _parse_train_args(values)[3]
    assert finetuning_args.stage == values["stage"]
