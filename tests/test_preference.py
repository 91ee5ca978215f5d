"""Preference data (SF-Med §3.3): sampling from real servers (`llamafactory-cli api`, LF's ChatModel in process),
judging by rule judges over HTTP with the order swap, a reward ensemble trained by `llamafactory-cli`, scores equal to
LF's own predictions, and the flip/drop both offline and as a plugin inside LLaMA-Factory's loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from sfmed_lf.cli import main as sfmed_main
from sfmed_lf.formats.conversation import Prompt
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.preference.judge import decide, parse_verdict
from sfmed_lf.preference.pairs import PAIRS_DATASET, load_pairs, register_pairs
from sfmed_lf.preference.rule_judge import rule_judge_server, rules, verdict
from sfmed_lf.preference.scoring import heldout_accuracy
from sfmed_lf.preference.selection import select_actions, strengths
from sfmed_lf.tiny_model import TinyModelSpec, build_tiny_model
from tests.helpers import NO_MERGING, REALDATA, REPO_ROOT, lf_load_dataset, lf_train, read_json, run
from tests.servers import ScriptedChatServer, llamafactory_api


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TinyModelSpec.random_init())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_config(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("分析……\n[[A]]", "A"),
        ("先看B……最终 [[ B ]]", "B"),
        ("[[A]] 不对，应该是 [[B]]", "B"),  # the last bracketed verdict counts
        ("更好的回答是B。", "B"),
        ("我选择 A", "A"),
        ("The better answer is a", "A"),
        ("B", "B"),
        ("A和B都不错", None),  # both letters, no verdict: unparseable, never guessed
        ("两个回答都很好。", None),
        ("", None),
    ],
)
def test_verdict_parsing(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_majority_rule():
    assert decide(["0", "0", None], 2) == (0, None)
    assert decide(["1", "1", "0"], 2) == (1, None)
    assert decide(["0", "1", None], 2) == (None, "tie")
    assert decide(["0", None, None], 2) == (None, "too_few_consistent_votes")
    assert decide([None, None, None], 2) == (None, "no_consistent_votes")


def test_flip_and_drop_rule():
    mean = np.array([0.5, -2.0, 3.0, 0.1, 0.1, 1.0, -0.5, 2.5, 0.0, 0.2])
    assert select_actions(mean, 0.1, 0.1) == ["keep", "flip", "drop", *["keep"] * 7]
    actions = select_actions(mean, 0.2, 0.0)  # Wang et al.: bottom 20 % flipped, nothing dropped
    assert [i for i, a in enumerate(actions) if a == "flip"] == [1, 6] and "drop" not in actions
    assert select_actions(mean, flip_below=0.0, drop_above=2.0).count("flip") == 2
    ties = select_actions(np.zeros(10), 0.2, 0.2)  # equal strengths: pair order decides, deterministically
    assert ties == ["flip", "flip", *["keep"] * 6, "drop", "drop"]
    with pytest.raises(ValueError, match="overlap"):
        select_actions(mean, flip_below=5.0, drop_above=-5.0)
    mean_strength, spread = strengths(np.array([[2.0, 4.0]]), np.array([[1.0, 1.0]]))
    assert mean_strength.tolist() == [2.0] and spread.tolist() == [1.0]


GOOD = "可能是胃食管反流，建议少食多餐、饭后不要平躺，症状持续请到消化内科就诊做胃镜检查，遵医嘱用药。"
SHORT = "多喝水。"
GARBLED = "建议胃镜检查\ufffd\ufffd到消化内科就诊"
SAME_TERMS_LONGER = "这个问题比较常见，不用太担心，平时注意规律作息、适当活动、保持好心情，一般过一阵子会慢慢好转的。"


def crafted_responses(out: Path) -> None:
    """Pairs whose votes under the three rule judges (terms, length, clean) are known in advance."""
    prompts = [
        ("p1", [GOOD, SHORT]),  # all three prefer GOOD (clean ties -> A in both orders -> abstains): 2 votes
        ("p2", [SHORT, GOOD]),  # the same with GOOD second: chosen must still be GOOD
        ("p3", [GOOD, GOOD]),  # identical: skipped before judging
        ("p4", [GOOD, ""]),  # empty: skipped before judging
        ("p5", [SHORT, SAME_TERMS_LONGER]),  # terms tie (0, 0), length prefers the second, clean ties: 1 vote
        ("p6", [GARBLED, SAME_TERMS_LONGER]),  # terms -> first, length -> second, clean -> second: 2 votes
    ]
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": pid, "system": "", "history": [], "question": "饭后反酸烧心怎么办？", "responses": responses}
        for pid, responses in prompts
    ]
    (out / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def judge_config(tmp_path: Path, out: Path, url: str) -> Path:
    judges = [{"url": url, "model": model} for model in ("terms", "length", "clean")]
    return write_config(tmp_path / f"{out.name}.yaml", output_dir=str(out), judges=judges, max_retries=0)


def test_heldout_accuracy_per_model_for_the_ensemble_and_by_error_kind():
    def pair(index: int, kind: str | None) -> PreferencePair:
        metadata = {"error": kind} if kind else {}
        return PreferencePair(f"p{index}", Prompt(f"question {index}"), "right", "wrong", metadata)

    pairs = [pair(0, "wrong_drug"), pair(1, "wrong_drug"), pair(2, "repeated_follow_up"), pair(3, None)]
    # [chosen, rejected] per pair and model: model 0 ranks pairs 0, 2 and 3 right, model 1 pairs 0 and 1; their mean
    # ranks pairs 0, 1 (2.0 against 1.5) and 3 right, pair 2 wrong (1.0 against 1.5)
    scores = [[[1, 0], [0, 1], [1, 0], [1, 0]], [[1, 0], [4, 2], [1, 3], [0, -2]]]
    records = [{"heldout": {p.key: s for p, s in zip(pairs, model, strict=True)}} for model in scores]
    result = heldout_accuracy(records, pairs)
    assert result["pairs"] == 4 and result["accuracy_per_model"] == [0.75, 0.75] and result["ensemble_accuracy"] == 0.75
    kinds = result["by_error_kind"]
    assert list(kinds) == ["repeated_follow_up", "unlabelled", "wrong_drug"]
    assert kinds["wrong_drug"] == {"pairs": 2, "accuracy_per_model": [0.5, 1.0], "ensemble_accuracy": 1.0}
    assert kinds["repeated_follow_up"]["ensemble_accuracy"] == 0.0 and kinds["unlabelled"]["pairs"] == 1
    assert "by_error_kind" not in heldout_accuracy(records, [pairs[3]])  # pairs that name no kind: no breakdown


def test_judges_vote_in_both_orders_and_resume(tmp_path):
    server = rule_judge_server().start()
    try:
        whole = tmp_path / "whole"
        crafted_responses(whole)
        run(["sfmed", "pref", "judge", str(judge_config(tmp_path, whole, server.base_url))])
    finally:
        server.stop()
    report = read_json(whole / "judge_report.json")
    assert report["pairs_judged"] == 4 and report["pairs_kept"] == 3
    assert report["skipped"] == {"identical_responses": 1, "empty_response": 1, "too_few_consistent_votes": 1}
    assert report["judges"]["clean"]["inconsistent"] >= 2, "a tie answers A in both orders: counted, not a vote"
    pairs = {row["id"]: row for row in lines(whole / "pairs.jsonl")}
    assert sorted(pairs) == ["p1-0", "p2-0", "p6-0"]
    assert pairs["p1-0"]["chosen"] == GOOD == pairs["p2-0"]["chosen"]
    assert pairs["p6-0"]["chosen"] == SAME_TERMS_LONGER
    votes = {v["judge"]: v for v in pairs["p6-0"]["votes"]}
    assert (votes["terms"]["vote"], votes["length"]["vote"], votes["clean"]["vote"]) == ("0", "1", "1")
    assert read_json(whole / "dataset_info.json")[PAIRS_DATASET]["ranking"] is True

    # judges failing midway: the re-run asks only the missing requests and ends with the same pairs
    resumed = tmp_path / "resumed"
    crafted_responses(resumed)
    server = rule_judge_server().start()
    calls = []

    def flaky(payload: dict) -> tuple[int, str]:
        calls.append(payload)
        if len(calls) > 10:
            return 400, "judge unavailable"
        return 200, verdict(rules()[payload["model"]], payload["messages"][-1]["content"])

    try:
        with ScriptedChatServer(flaky) as broken:
            failed = run(["sfmed", "pref", "judge", str(judge_config(tmp_path, resumed, broken.base_url))], check=False)
            assert failed.returncode == 2 and "judge unavailable" in failed.stderr
        done_before = len(lines(resumed / "judgments.jsonl"))
        assert 0 < done_before < 18
        run(["sfmed", "pref", "judge", str(judge_config(tmp_path, resumed, server.base_url))])  # same judges, new URL
    finally:
        server.stop()
    keys = [row["key"] for row in lines(resumed / "judgments.jsonl")]
    # 4 pairs x 3 judges x 2 orders, none twice; p1 (GOOD, SHORT) and p2 (SHORT, GOOD) ask the same 6 requests
    assert len(keys) == len(set(keys)) == 18
    assert [(r["id"], r["chosen"]) for r in lines(resumed / "pairs.jsonl")] == [
        (r["id"], r["chosen"]) for r in lines(whole / "pairs.jsonl")
    ]


def test_sampling_from_llamafactory_api_and_in_process(tiny, tmp_path):
    with llamafactory_api(tiny, tmp_path / "api.log") as base_url:
        config = write_config(
            tmp_path / "api.yaml",
            output_dir=str(tmp_path / "api"),
            datasets=["sfmed_sample_sft_single"],
            max_prompts=3,
            policy_url=base_url,
            num_responses=4,
            max_new_tokens=16,
        )
        run(["sfmed", "pref", "sample", str(config)])
    rows = lines(tmp_path / "api" / "responses.jsonl")
    assert [r["id"] for r in rows] == [
        "sfmed_sample_sft_single:1",
        "sfmed_sample_sft_single:2",
        "sfmed_sample_sft_single:3",
    ] and all(len(r["responses"]) == 4 for r in rows)
    assert rows[0]["question"].startswith("医生您好")

    config = write_config(
        tmp_path / "local.yaml",
        output_dir=str(tmp_path / "local"),
        datasets=["sfmed_sample_sft_single"],
        max_prompts=2,
        model_name_or_path=str(tiny),
        num_responses=2,
        max_new_tokens=16,
    )
    run(["sfmed", "pref", "sample", str(config)])
    rows = lines(tmp_path / "local" / "responses.jsonl")
    assert len(rows) == 2 and all(len(r["responses"]) == 2 for r in rows)


def bundled_pairs(out: Path, count: int) -> list[dict]:
    pairs = json.loads((REPO_ROOT / "data" / "sfmed_dpo_pairs.json").read_text(encoding="utf-8"))[:count]
    rows = [{"id": f"b{i}", "history": [], "system": "", **pair} for i, pair in enumerate(pairs)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    register_pairs(out / "dataset_info.json", PAIRS_DATASET, "pairs.jsonl")
    return rows


def test_bad_pairs_are_errors_naming_the_row(tmp_path):
    rows = bundled_pairs(tmp_path, 3)
    rows[1]["rejected"] = rows[1]["chosen"]
    rows[2]["instruction"] = ""
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    result = run(["sfmed", "pref", "score", f"output_dir={tmp_path}"], check=False)
    assert result.returncode == 2
    assert f"{tmp_path / 'pairs.jsonl'}:2: field 'chosen': chosen and rejected are the same answer." in result.stderr
    missing = run(["sfmed", "pref", "train-rms", f"output_dir={tmp_path}"], check=False)
    assert missing.returncode == 2 and "this step needs rm_yaml" in missing.stderr


def test_reward_ensemble_scores_selection_and_loader_plugin(tiny, tmp_path):
    out = tmp_path / "pref"
    pairs = bundled_pairs(out, 30)
    base = {
        "output_dir": str(out),
        "rm_yaml": "examples/yaml/tiny/rm.yaml",
        "rm_overrides": [f"model_name_or_path={tiny}", "num_train_epochs=1"],
        "num_reward_models": 2,
        "cutoff_len": 256,
        "register_in": str(tmp_path / "project" / "dataset_info.json"),
    }
    broken = write_config(tmp_path / "broken.yaml", **{**base, "rm_overrides": ["learning_rate=not-a-number"]})
    result = run(["sfmed", "pref", "train-rms", str(broken)], check=False)
    assert result.returncode == 2 and "reward model(s) [0, 1] failed" in result.stderr
    assert read_json(out / "ensemble.json")["models"]["0"]["status"] == "failed"

    config = write_config(tmp_path / "pref.yaml", **base)
    run(["sfmed", "pref", "train-rms", str(config)])
    first_head = (out / "rms" / "rm_0" / "value_head.safetensors").stat().st_mtime_ns
    config = write_config(tmp_path / "pref.yaml", **{**base, "num_reward_models": 3})
    run(["sfmed", "pref", "train-rms", str(config)])  # trains only the new third model
    assert (out / "rms" / "rm_0" / "value_head.safetensors").stat().st_mtime_ns == first_head
    assert read_json(out / "ensemble.json")["models"]["2"]["status"] == "done"
    other_seed = write_config(tmp_path / "other.yaml", **{**base, "data_seed_base": 7})
    refused = run(["sfmed", "pref", "train-rms", str(other_seed)], check=False)
    assert refused.returncode == 2 and "changed: data_seed_base" in refused.stderr

    run(["sfmed", "pref", "score", str(config)])
    keys = [pair.key for pair in load_pairs(out)]  # scores are keyed by each pair's content
    scores = [
        {side: [row["scores"][key][index] for key in keys] for index, side in enumerate(("chosen", "rejected"))}
        for row in sorted(lines(out / "scores.jsonl"), key=lambda row: row["model"])
    ]
    assert [len(row["chosen"]) for row in scores] == [30, 30, 30]
    assert scores[0]["chosen"] != scores[1]["chosen"], "different data orders give different reward models"

    # LF's own predictions of model 0, rounded to two decimals, agree with the full-precision scores
    predicted = tmp_path / "predict"
    lf_train(
        "examples/yaml/tiny/rm.yaml",
        f"model_name_or_path={out / 'rms' / 'rm_0'}",
        "do_train=false",
        "do_predict=true",
        f"dataset_dir={out}",
        f"dataset={PAIRS_DATASET}",
        f"eval_dataset={PAIRS_DATASET}",
        f"output_dir={predicted}",
        "per_device_eval_batch_size=4",
    )
    lf_scores = lines(predicted / "generated_predictions.jsonl")
    assert len(lf_scores) == 30
    assert np.allclose([r["chosen"] for r in lf_scores], scores[0]["chosen"], atol=0.0051)
    assert np.allclose([r["rejected"] for r in lf_scores], scores[0]["rejected"], atol=0.0051)

    run(["sfmed", "pref", "select", str(config)])
    report = read_json(out / "selection_report.json")
    assert report["actions"] == {"keep": 24, "flip": 3, "drop": 3}
    assert sum(decile["pairs"] for decile in report["deciles"]) == 30
    audit = lines(out / "audit.jsonl")
    flipped = {row["id"] for row in audit if row["action"] == "flip"}
    assert max(r["mean_strength"] for r in audit if r["action"] == "flip") <= min(
        r["mean_strength"] for r in audit if r["action"] != "flip"
    )
    selected = {row["id"]: row for row in lines(out / "selected.jsonl")}
    original = {row["id"]: row for row in pairs}
    assert len(selected) == 27 and all(selected[i]["chosen"] == original[i]["rejected"] for i in flipped)
    assert (out / "strength_histogram.png").read_bytes().startswith(b"\x89PNG")
    registered = read_json(tmp_path / "project" / "dataset_info.json")["sfmed_dpo_selected"]
    assert (tmp_path / "project" / registered["file_name"]).resolve() == (out / "selected.jsonl").resolve()

    # the same flip/drop inside LLaMA-Factory's loader, from the audit, gives the offline dataset token for token
    info = {
        "selected": {**registered, "file_name": str(out / "selected.jsonl")},
        "pairs": {**read_json(out / "dataset_info.json")[PAIRS_DATASET], "file_name": str(out / "pairs.jsonl")},
    }
    offline, _ = lf_load_dataset(tiny, info, "selected", "rm", tmp_path, cutoff_len=256)
    audit_option = {"sfmed_pref_audit": str(out / "audit.jsonl")}
    plugin, _ = lf_load_dataset(tiny, info, "pairs", "rm", tmp_path, cutoff_len=256, **audit_option)
    for column in ("chosen_input_ids", "rejected_input_ids"):
        assert plugin[column] == offline[column]

    # and through `llamafactory-cli train` (DPO), where the options live in the YAML
    trained = lf_train(
        "examples/yaml/tiny/dpo.yaml",
        f"model_name_or_path={tiny}",
        *NO_MERGING,
        f"dataset_dir={out}",
        f"dataset={PAIRS_DATASET}",
        f"sfmed_pref_audit={out / 'audit.jsonl'}",
        f"output_dir={tmp_path / 'dpo'}",
        "max_steps=1",
    )
    assert "Num examples = 27" in trained.stdout + trained.stderr  # 30 pairs, 3 dropped while loading


MEDICALGPT = REALDATA / "medicalgpt_reward_medical_legacy.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(not MEDICALGPT.is_file(), reason=f"{MEDICALGPT} is absent")
def test_reward_ensemble_flips_and_drops_an_existing_ranking_dataset(tiny, tmp_path):
    """MedicalGPT's reward file as it is published (question / response_chosen / response_rejected), registered by
    a dataset_info name with its column mapping: train-rms, score and select run on it without conversion."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(MEDICALGPT, data / MEDICALGPT.name)
    columns = {"prompt": "question", "chosen": "response_chosen", "rejected": "response_rejected"}
    (data / "dataset_info.json").write_text(
        json.dumps({"medicalgpt_reward": {"file_name": MEDICALGPT.name, "ranking": True, "columns": columns}})
    )
    out = tmp_path / "pref"
    config = write_config(
        tmp_path / "pref.yaml",
        output_dir=str(out),
        pairs_dataset="medicalgpt_reward",
        dataset_dir=str(data),
        rm_yaml="examples/yaml/tiny/rm.yaml",
        rm_overrides=[f"model_name_or_path={tiny}", "num_train_epochs=1", "cutoff_len=128"],
        num_reward_models=1,
        cutoff_len=128,
    )
    for step in ("train-rms", "score", "select"):  # in process: one interpreter start for the three steps
        assert sfmed_main(["pref", step, str(config)]) == 0
    source = lines(MEDICALGPT)
    report = read_json(out / "selection_report.json")
    assert report["pairs"] == len(source) == 60 and report["actions"] == {"keep": 48, "flip": 6, "drop": 6}
    selected = lines(out / "selected.jsonl")
    audit = {row["id"]: row for row in lines(out / "audit.jsonl")}
    assert len(selected) == 54 and {row["instruction"] for row in selected} <= {row["question"] for row in source}
    by_id = {f"medicalgpt_reward:{number}": row for number, row in enumerate(source, start=1)}
    for row in selected:
        original, action = by_id[row["id"]], audit[row["id"]]["action"]
        flipped = (original["response_rejected"], original["response_chosen"])
        expected = flipped if action == "flip" else (original["response_chosen"], original["response_rejected"])
        assert (row["chosen"], row["rejected"]) == expected
