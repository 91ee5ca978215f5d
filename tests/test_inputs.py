"""Inputs cannot hurt: every malformed input of tests/fixtures/malformed/cases.json through the `sfmed` commands is a
one-line error naming the file, the line and the field (exit 2) or a counted skip — never a traceback, never a silent
drop; and the examples of issue 15, each checked on the behaviour it names."""

from __future__ import annotations

import json
import os
import re
import shutil
from types import SimpleNamespace

import pytest

from sfmed_lf.cli import main
from sfmed_lf.data_prep.convert import convert_corpus
from sfmed_lf.errors import DataError
from sfmed_lf.formats.corpora import CORPORA_BY_NAME
from sfmed_lf.formats.raw import RAW_SCHEMAS, Excluded
from sfmed_lf.preference.rule_judge import rule_judge_server
from tests.helpers import REALDATA, REPO_ROOT

MALFORMED = REPO_ROOT / "tests" / "fixtures" / "malformed"
CASES = json.loads((MALFORMED / "cases.json").read_text(encoding="utf-8"))["cases"]


def sfmed(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_malformed_input_is_an_error_or_a_counted_skip(case, tmp_path, capsys):
    for target, source in case.get("files", {}).items():  # what an earlier step wrote, damaged
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MALFORMED / source, tmp_path / target)
    argv = [part.replace("{F}", str(MALFORMED)).replace("{T}", str(tmp_path)) for part in case["argv"]]
    code, out, err = sfmed(argv, capsys)  # an exception escaping here is a traceback: the test fails
    if "skipped" in case:
        assert code == 0, err
        for expected in case["expect"]:
            assert expected in out
        reports = list(tmp_path.glob("*.report.json"))
        if case["skipped"]:
            assert json.loads(reports[0].read_text())["skipped_invalid"] == case["skipped"]
    else:
        assert code == 2, (out, err)
        message = err.strip().splitlines()[-1]  # progress bars may come before it
        assert message.startswith("sfmed "), err
        for expected in case["expect"]:
            assert expected in message + out, err
    assert "Traceback" not in err
    assert not [p for p in MALFORMED.iterdir() if p.name.endswith((".report.json", ".provenance.json"))]


def test_rows_an_earlier_step_wrote_are_checked_field_by_field_never_converted():
    from typing import Literal, NotRequired

    from sfmed_lf.utils.jsonl import check_fields

    fields = {"n": int, "x": float, "pair": tuple[float, float], "by": dict[str, list[str]], "v": Literal["A"] | None}
    fields |= {"extra": NotRequired[str]}
    good = {"n": 1, "x": 2, "pair": [0.5, 1], "by": {"k": ["a"]}, "v": None}
    assert check_fields("f:1", good, fields) is good  # an int is a number; an absent NotRequired field is fine
    for change, message in [
        ({"n": True}, "field 'n': True is not an integer"),
        ({"x": "2"}, "field 'x': '2' is not a number"),
        ({"pair": [1.0]}, "field 'pair': [1.0] is not a list of 2"),
        ({"by": {"k": ["a", 3]}}, "field 'by': item 'k': item 1: 3 is not text"),
        ({"v": "B"}, "field 'v': 'B' is not 'A' | None"),
        ({"extra": 1}, "field 'extra': 1 is not text (expected str)"),
    ]:
        with pytest.raises(DataError, match=f"^f:1: {re.escape(message)}.*; `step` writes it"):
            check_fields("f:1", {**good, **change}, fields, "step")
    with pytest.raises(DataError, match=r"^f:1: field 'v': missing \(expected 'A' \| None\)"):
        check_fields("f:1", {k: value for k, value in good.items() if k != "v"}, fields)


def test_a_failed_conversion_never_replaces_a_good_output(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    good = '{"instruction": "头痛怎么办？", "input": "", "output": "注意休息。"}\n'
    output.write_text(good)
    args = ["data", "convert", "chatmed_consult", str(MALFORMED / "empty.jsonl"), str(output), "--stage", "sft"]
    code, _, err = sfmed(args, capsys)
    assert code == 2 and "no row converted" in err
    assert output.read_text() == good, "the existing output is untouched"


TOYHOM_ROW = {
    "department": "心血管科",
    "title": "高血压患者能吃党参吗？",
    "ask": "我血压偏高，最近在泡党参水。",
    "answer": "可以。",
}


def test_chinese_medical_dialogue_keeps_title_ask_and_department(tmp_path, capsys):
    source = tmp_path / "toyhom.jsonl"
    source.write_text(json.dumps(TOYHOM_ROW, ensure_ascii=False) + "\n")
    for form in ("sharegpt", "alpaca", "pt"):
        output = tmp_path / f"{form}.jsonl"
        args = ["data", "convert", "toyhom_csv", str(source), str(output), "--form", form]
        code, _, err = sfmed(args, capsys)
        assert code == 0, err
        written = json.dumps(json.loads(output.read_text(encoding="utf-8")), ensure_ascii=False)
        for text in TOYHOM_ROW.values():
            assert text in written, (form, text)


@pytest.mark.skipif(not (REALDATA / "toyhom_cmdd_im_sample.jsonl").is_file(), reason="realdata absent")
def test_real_chinese_medical_dialogue_rows_keep_the_patients_question(tmp_path, capsys):
    source = REALDATA / "toyhom_cmdd_im_sample.jsonl"
    output = tmp_path / "out.jsonl"
    assert (
        sfmed(["data", "convert", "chinese_medical_dialogue", str(source), str(output), "--stage", "sft"], capsys)[0]
        == 0
    )
    originals = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    title_not_in_ask = sum(o["title"].strip() not in o["ask"] for o in originals if o["ask"].strip() not in ("无", ""))
    assert title_not_in_ask > len(originals) / 10, "a real share of rows asks more than the ask says"
    for original, row in zip(originals, rows, strict=True):
        question = row["instruction"]
        assert original["title"].strip() in question
        assert original["ask"].strip() in question or original["ask"].strip() in ("无", "无。", "")
        assert row["metadata"]["department"] == original["department"]


FIXTURE_OF = {
    "medical_books": "medical_books.txt",
    "cmtmedqa": "cmtmedqa.jsonl",
    "chatmed_consult": "chatmed_consult.jsonl",
    "disc_med_sft": "disc_med_sft.jsonl",
    "meddiag": "meddialog.txt",
    "cmedqa2": "cmedqa2",
    "huatuo_sft": "huatuo_sft.jsonl",
    "webmedqa": "webmedqa.txt",
    "chinese_medical_dialogue": "chinese_medical_dialogue.csv",
    "shennong_tcm": "shennong_tcm.jsonl",
    "huatuo_kgqa": "huatuo_kgqa.jsonl",
    "cmexam": "cmexam.csv",
    "cmb_exam": "cmb_exam.json",
    "promptcblue": "promptcblue.jsonl",
    "crawled_articles": "crawled_articles.jsonl",
    "paper_abstracts": "paper_abstracts.txt",
    "baike2018qa": "baike2018qa.json",
    "webtext2019zh": "webtext2019zh.json",
    "wiki2019zh": "wiki_00",
    "alpaca_zh": "alpaca_zh.json",
    "belle_multiturn": "belle_multiturn.json",
    "belle_train_0_5m": "belle_train_0_5m.json",
}
# markers of the raw layout, not text of the source: speaker tags, section names, answer cues, option letters
LAYOUT_WORDS = {"Description", "Dialogue", "Human", "Assistant", "病人", "医生", "user", "assistant", "human", "gpt"}


def source_words(value: object) -> set[str]:
    """Every run of two or more letters, digits or CJK characters in a raw value (strings, lists, mappings)."""
    if isinstance(value, dict):  # the values: field names are layout
        return {word for item in value.values() for word in source_words(item)}
    if isinstance(value, list):
        return {word for item in value for word in source_words(item)}
    if value is None:
        return set()
    words = set(re.findall(r"\w{2,}", str(value)))
    return {word for word in words if word not in LAYOUT_WORDS and not re.fullmatch(r"[A-H]+", word)}


@pytest.mark.parametrize("name", sorted(FIXTURE_OF))
def test_no_source_text_is_dropped(name, tmp_path):
    """Every word of every converted raw row appears in the row written for it (dialogue text or metadata)."""

    corpus = CORPORA_BY_NAME[name]
    source = REPO_ROOT / "tests" / "fixtures" / "raw" / FIXTURE_OF[name]
    stage = "sft" if corpus.raw_schema in ("cmexam", "cmb_exam") or "sft" in corpus.stages else "pt"
    stage = "pt" if corpus.raw_schema in ("plain_text", "wiki2019zh") else stage
    output = tmp_path / "out.jsonl"
    convert_corpus(name, source, output, stage=stage)
    written = "\n".join(
        json.dumps(json.loads(line), ensure_ascii=False) for line in output.read_text(encoding="utf-8").splitlines()
    )
    schema = RAW_SCHEMAS[corpus.raw_schema]
    for location, row in schema.read(str(source)):
        try:
            schema.parse(location, row)
        except Excluded:
            continue
        missing = {word for word in source_words(row) if word not in written}
        assert not missing, f"{location}: {sorted(missing)[:5]}"


@pytest.mark.parametrize(
    ("name", "first_answer"), [("chinese_medical_dialogue", "偶发室性早搏"), ("webmedqa", "口干口苦")]
)
def test_dialogue_corpora_used_for_pretraining_have_their_sft_form(name, first_answer, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    source = REPO_ROOT / "tests" / "fixtures" / "raw" / FIXTURE_OF[name]
    assert sfmed(["data", "convert", name, str(source), str(output), "--stage", "sft"], capsys)[0] == 0
    first = json.loads(output.read_text(encoding="utf-8").splitlines()[0])
    assert first["output"].startswith(first_answer) and first["instruction"]


GOOD = "可能是胃食管反流，建议少食多餐、饭后不要平躺，症状持续请到消化内科就诊做胃镜检查，遵医嘱用药。"
SHORT = "多喝水。"


def test_judge_rerun_after_the_responses_changed_never_reuses_verdicts(tmp_path, capsys):
    """Verdicts are keyed by judge, question and both answers in order: swapping every pair's answers in
    responses.jsonl and re-running keeps the better answer chosen (c63bf2d inverted them all)."""
    out = tmp_path / "pref"
    out.mkdir()

    def responses(order: list[tuple[str, str]]) -> None:
        rows = [
            {
                "id": f"p{i}",
                "system": "",
                "history": [],
                "question": f"问题{i}：饭后反酸烧心怎么办？",
                "responses": list(pair),
            }
            for i, pair in enumerate(order)
        ]
        (out / "responses.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    server = rule_judge_server().start()
    try:
        judges = [{"url": server.base_url, "model": model} for model in ("terms", "length")]
        args = ["pref", "judge", f"output_dir={out}", f"judges={json.dumps(judges)}", "min_votes=2", "max_retries=0"]
        responses([(GOOD, SHORT)] * 4)
        code, _, err = sfmed(args, capsys)
        assert code == 0, err
        first = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
        responses([(SHORT, GOOD)] * 4)
        code, _, err = sfmed(args, capsys)
        assert code == 0, err
    finally:
        server.stop()
    second = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(first) == len(second) == 4
    assert all(pair["chosen"] == GOOD and pair["rejected"] == SHORT for pair in first + second)


def test_select_after_the_pairs_changed_never_applies_old_scores(tmp_path, capsys):
    from sfmed_lf.formats.lf_rows import ENTRY_COLUMNS, DatasetEntry
    from sfmed_lf.formats.reading import Location
    from sfmed_lf.preference.pairs import PAIRS_DATASET, register_pairs

    out = tmp_path / "pref"
    out.mkdir()
    pairs = [
        {
            "id": f"b{i}",
            "instruction": f"问题{i}",
            "input": "",
            "history": [],
            "system": "",
            "chosen": f"好{i}",
            "rejected": f"差{i}",
        }
        for i in range(10)
    ]
    (out / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    register_pairs(out / "dataset_info.json", PAIRS_DATASET, "pairs.jsonl")
    entry = DatasetEntry.parse("p", ENTRY_COLUMNS["ranking"], "x")
    keys = [entry.read(Location("x", 1), pair).key for pair in pairs]
    scores = {key: [float(i), 0.0] for i, key in enumerate(keys)}
    (out / "scores.jsonl").write_text(json.dumps({"model": 0, "fingerprint": {}, "scores": scores}) + "\n")
    args = ["pref", "select", f"output_dir={out}", "num_reward_models=1"]
    code, _, err = sfmed(args, capsys)
    assert code == 0, err
    pairs[0], pairs[9] = pairs[9], pairs[0]  # the same rows, reordered: scores follow the content
    original = pairs[5]
    pairs[5] = {**original, "chosen": "改过的回答"}  # and one pair changed: it has no score
    (out / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    code, _, err = sfmed(args, capsys)
    assert code == 2 and "no score of model 0 for pair 'b5'" in err
    pairs[5] = original
    (out / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    code, _, err = sfmed(args, capsys)
    assert code == 0, err
    audit = {row["id"]: row for row in map(json.loads, (out / "audit.jsonl").read_text().splitlines())}
    assert audit["b9"]["mean_strength"] == 9.0 and audit["b0"]["mean_strength"] == 0.0
    assert audit["b0"]["action"] == "flip" and audit["b9"]["action"] == "drop"


def test_merging_options_with_method_none_are_refused():
    from llamafactory.hparams.parser import _parse_train_args

    base = {
        "model_name_or_path": "unused",
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "sfmed_sample_dpo_pairs",
        "dataset_dir": str(REPO_ROOT),
        "template": "sfmed",
        "output_dir": "unused",
        "report_to": "none",
    }
    with pytest.raises(ValueError, match="sfmed_merge_keep_prob set, but they do nothing without online merging"):
        _parse_train_args({**base, "sfmed_merge_method": "none", "sfmed_merge_keep_prob": 0.0})
    assert _parse_train_args({**base, "sfmed_merge_method": "none"})[3].online_merging_enabled is False


def test_a_missing_preference_audit_names_the_option(tmp_path):
    from sfmed_lf.preference.lf_loader import audit_actions

    options = {"sfmed_pref_flip_fraction": 0.1, "sfmed_pref_drop_fraction": 0.1}
    options |= {"sfmed_pref_flip_below": None, "sfmed_pref_drop_above": None}
    with pytest.raises(DataError, match=r"sfmed_pref_audit: .*nope.jsonl does not exist"):
        audit_actions(SimpleNamespace(sfmed_pref_audit=str(tmp_path / "nope.jsonl"), **options))
    with pytest.raises(DataError, match=r"audit.jsonl:1: field 'mean_strength': missing \(expected float\)"):
        audit_actions(SimpleNamespace(sfmed_pref_audit=str(MALFORMED / "audit.jsonl"), **options))


def test_a_copied_project_resumes_its_own_outputs(tmp_path, capsys):
    """Provenance records content, not paths and modification times: a project moved elsewhere resumes."""
    from sfmed_lf.tiny_model import build_tiny_model

    project = tmp_path / "project"
    build_tiny_model(project / "model")
    items = project / "items.jsonl"
    item = {"id": "x", "dataset": "d", "kind": "dialogue", "question": "头痛怎么办？", "reference": "注意休息。"}
    items.write_text(json.dumps(item, ensure_ascii=False) + "\n")
    args = ["eval", "generate", "items=[items.jsonl]", "candidate_model_name_or_path=model", "max_new_tokens=2"]
    args.append("output_dir=eval")
    cwd = os.getcwd()
    try:
        os.chdir(project)
        code, _, err = sfmed(args, capsys)
        assert code == 0, err
        copy = tmp_path / "copy"
        shutil.copytree(project, copy)
        os.utime(copy / "model" / "model.safetensors", (1, 1))
        os.chdir(copy)
        code, _, err = sfmed(args, capsys)
    finally:
        os.chdir(cwd)
    assert code == 0, err
    assert (copy / "eval" / "answers" / "a.jsonl").read_text() == (project / "eval" / "answers" / "a.jsonl").read_text()


def test_answers_of_a_changed_item_are_never_reused(tmp_path, capsys):
    from tests.servers import ScriptedChatServer

    items = tmp_path / "items.jsonl"
    item = {"id": "x", "dataset": "d", "kind": "dialogue", "question": "头痛怎么办？", "reference": "注意休息。"}
    items.write_text(json.dumps(item, ensure_ascii=False) + "\n")
    with ScriptedChatServer(lambda payload: (200, "注意休息。")) as server:
        args = ["eval", "generate", f"items=[{items}]", f"output_dir={tmp_path / 'eval'}", "max_retries=0"]
        args += [f"candidate_url={server.base_url}", "candidate_model=m"]
        assert sfmed(args, capsys)[0] == 0
        items.write_text(json.dumps({**item, "question": "发热怎么办？"}, ensure_ascii=False) + "\n")
        code, _, err = sfmed(args, capsys)
        assert code == 2 and "the items ['x'] changed since they were answered" in err
        assert len(server.requests) == 1
