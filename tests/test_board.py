"""LLaMA-Board additions without a browser: the controls follow the hparams, the model entries follow the demo and
the recipe, datasets with missing files are found, and the checks before a run name the problem."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from sfmed_lf import board
from sfmed_lf.hparams import OnlineMergingArguments, PreferenceSelectionArguments
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize("arguments", [OnlineMergingArguments, PreferenceSelectionArguments])
def test_every_option_has_a_control_whose_text_gives_back_its_default(arguments):
    options = board.options_of(arguments)
    assert [option.name for option in options] == [field.name for field in dataclasses.fields(arguments)]
    for option, field in zip(options, dataclasses.fields(arguments), strict=True):
        assert option.default == field.default and option.help == field.metadata["help"]
        assert board.parse_value(option, board.control_text(option.default), option.name) == option.default
        for lang in ("en", "zh"):
            assert option.name in board.LABELS and board.label_of(option.name, lang), (option.name, lang)
        assert option.name in board.ZH_HELP, f"{option.name} has no Chinese help"


def test_choices_come_from_the_option_types():
    merging = {option.name: option for option in board.options_of(OnlineMergingArguments)}
    method, rescale = merging["sfmed_merge_method"], merging["sfmed_merge_rescale"]
    assert set(method.choices) == {"none", "ondare", "onties"}
    assert set(rescale.choices) >= {"none", "inverse_p", "l1"}
    assert board.parse_value(method, "onties", "m") == "onties"
    with pytest.raises(board.BoardInputError, match="'odare' is not one of"):
        board.parse_value(method, "odare", "m")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("sfmed_merge_keep_prob", "abc", "Keep: 'abc' is not a number."),
        ("sfmed_merge_seed", "1.5", "Keep: '1.5' is not a whole number."),
        ("sfmed_merge_alpha", " ", "Keep: needs a value."),
    ],
)
def test_typed_values_are_parsed_or_refused_by_name(name, text, message):
    option = next(o for o in board.options_of(OnlineMergingArguments) if o.name == name)
    with pytest.raises(board.BoardInputError) as error:
        board.parse_value(option, text, "Keep")
    assert str(error.value) == message


def test_empty_optional_boxes_mean_the_option_default():
    seed = next(o for o in board.options_of(OnlineMergingArguments) if o.name == "sfmed_merge_seed")
    assert seed.optional and board.parse_value(seed, "", "seed") is None


def test_model_entries_point_at_what_the_demo_and_the_recipe_write():
    written = set()
    for path in (REPO_ROOT / "examples" / "yaml").rglob("*.yaml"):
        output_dir = (yaml.safe_load(path.read_text()) or {}).get("output_dir")
        if isinstance(output_dir, str):
            written.add(output_dir)
        for stage in (yaml.safe_load(path.read_text()) or {}).get("stages") or []:  # a recipe's overrides
            if isinstance(stage, dict) and isinstance((stage.get("set") or {}).get("output_dir"), str):
                written.add(stage["set"]["output_dir"])
    assert set(board.SFMED_MODELS.values()) <= written, set(board.SFMED_MODELS.values()) - written
    sft = yaml.safe_load((REPO_ROOT / "examples" / "yaml" / "tiny" / "sft.yaml").read_text())
    assert sft["model_name_or_path"] == board.SFMED_MODELS[board.BASE_MODEL_EXAMPLE], "θ_base = what SFT started from"


def test_entries_select_the_sfmed_template():
    from llamafactory.extras.constants import DEFAULT_TEMPLATE, SUPPORTED_MODELS

    for name in board.SFMED_MODELS:
        assert name in SUPPORTED_MODELS and DEFAULT_TEMPLATE[name] == "sfmed"


def test_datasets_with_missing_files_are_found_and_remote_ones_kept(tmp_path):
    (tmp_path / "here.json").write_text("[]")
    (tmp_path / "folder").mkdir()
    info = {
        "here": {"file_name": "here.json"},
        "folder": {"file_name": "folder"},
        "gone": {"file_name": "converted/gone.jsonl"},
        "hub": {"hf_hub_url": "owner/name"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    assert board.missing_dataset_files(str(tmp_path)) == {"gone": str(tmp_path / "converted" / "gone.jsonl")}
    note = board.hidden_datasets_note(board.missing_dataset_files(str(tmp_path)))
    assert note.startswith("1 dataset(s) not listed") and "converted/gone.jsonl" in note


def merging_args(tmp_path: Path, **overrides) -> dict:
    (tmp_path / "pt").mkdir(exist_ok=True)
    args = {
        "stage": "dpo",
        "finetuning_type": "full",
        "sfmed_merge_method": "ondare",
        "sfmed_merge_base_model": str(tmp_path / "pt"),
        "sfmed_merge_keep_prob": 0.3,
        "sfmed_merge_alpha": 0.01,
    }
    return {**args, **overrides}


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({}, ""),
        ({"finetuning_type": "lora"}, "needs `finetuning_type: full`"),
        ({"sfmed_merge_alpha": 1.5}, "alpha must be in [0, 1]"),
        ({"use_galore": True}, "`use_galore` selects another optimizer"),
        ({"sfmed_merge_base_model": None}, "set `sfmed_merge_base_model`"),
        (
            {"sfmed_merge_base_model": "saves/tiny/missing"},
            "sfmed_merge_base_model 'saves/tiny/missing' does not exist",
        ),
        ({"sfmed_merge_sft_model": "Qwen/Qwen2.5-7B"}, ""),  # a hub id is not checked here
    ],
)
def test_merging_checks_are_the_hparams_own_plus_the_paths(tmp_path, overrides, problem):
    found = board.merging_problem(merging_args(tmp_path, **overrides))
    assert (problem in found) if problem else found == ""


def test_preference_checks_read_and_rank_the_audit(tmp_path):
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps({"key": f"k{i}", "mean_strength": i}) + "\n" for i in range(10)))
    args = {"sfmed_pref_audit": str(audit), "sfmed_pref_flip_fraction": 0.2, "sfmed_pref_drop_fraction": 0.2}
    assert board.preference_problem(args) == ""
    assert "overlap" in board.preference_problem({**args, "sfmed_pref_flip_fraction": 0.9})
    assert "must lie in [0, 1)" in board.preference_problem({**args, "sfmed_pref_drop_fraction": 1.0})
    assert "none.jsonl does not exist" in board.preference_problem(
        {**args, "sfmed_pref_audit": str(tmp_path / "none.jsonl")}
    )
    audit.write_text('{"key": "k0"}\n')
    assert board.preference_problem(args).startswith(f"{audit}:1: field 'mean_strength': missing (expected float)")


def test_summary_reads_the_trainer_report(tmp_path):
    alerts = {"info_sfmed_merge_summary": {"en": board.MESSAGES["info_sfmed_merge_summary"]["en"]}}
    assert board.merging_summary(str(tmp_path), "en", alerts) == ""
    (tmp_path / board.MERGE_REPORT_NAME).write_text(json.dumps({"method": "onties", "keep_prob": 0.2}))
    summary = board.merging_summary(str(tmp_path), "en", alerts)
    assert summary.startswith("Online merging summary (sfmed_online_merging.json):") and '"keep_prob": 0.2' in summary


def test_dpo_gets_the_merging_log_only_with_merging():
    seen = []
    run_dpo = board.with_merging_state_log(lambda *args: seen.append(args[4]))
    run_dpo(None, None, None, OnlineMergingArguments(), ["lf"])
    run_dpo(None, None, None, OnlineMergingArguments(sfmed_merge_method="ondare"), ["lf"])
    assert seen[0] == ["lf"]
    assert seen[1][0] == "lf" and type(seen[1][1]).__name__ == "MergingStateLog"


def test_the_run_log_states_the_merging_settings_with_the_applied_rescale():
    import logging
    from types import SimpleNamespace

    import torch

    from sfmed_lf.merging.config import OnlineMergingConfig
    from sfmed_lf.merging.optimizer import OnlineMergingAdamW

    weight = torch.nn.Parameter(torch.zeros(4))
    config = OnlineMergingConfig(method="ondare", keep_prob=0.5, alpha=0.1, seed=3)
    optimizer = OnlineMergingAdamW([{"params": [weight], "param_names": ["w"]}], config, task_vector_source=None)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    lf_root = logging.getLogger("llamafactory")  # the Board's log box handler sits here
    lf_root.addHandler(handler)
    try:
        callback = board.merging_state_callback()
        callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True), None, optimizer=optimizer)
    finally:
        lf_root.removeHandler(handler)
    assert records == [
        "SF-Med online merging: method=ondare p=0.5 alpha=0.1 rescale=authors (inverse_p for ondare) seed=3; tau' = "
        "sparsified theta_sft - theta_base is built at the first optimizer step."
    ]
