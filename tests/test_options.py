"""SF-Med options parsed by LLaMA-Factory's own argument parser: accepted values and clear errors."""

from __future__ import annotations

import pytest
from llamafactory.hparams.parser import _parse_train_args

BASE_ARGS = {
    "model_name_or_path": "unused",
    "stage": "dpo",
    "do_train": True,
    "finetuning_type": "full",
    "dataset": "sfmed_dpo_pairs",
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
