"""Corpus registry and converters (SF-Med Tables 1-2): every corpus from a fixture in its published schema (and
real slices where ../shared/realdata has one) through `sfmed data convert`, then through LLaMA-Factory's own loader
with the dataset_info.json entry the registry generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfmed_lf.data_prep.convert import convert_corpus
from sfmed_lf.data_prep.registry import merged_dataset_info, registry_entries
from sfmed_lf.errors import DataError
from sfmed_lf.formats.corpora import CORPORA, CORPORA_BY_NAME
from sfmed_lf.formats.raw import RAW_SCHEMAS, plain_text_rows
from sfmed_lf.formats.reading import Problems
from sfmed_lf.tiny_model import build_tiny_model
from tests.helpers import REALDATA, REPO_ROOT, lf_load_dataset, read_json, run

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "raw"
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
# the last answer of each fixture's first row, which must survive conversion and LF's preprocessing
FIRST_ANSWER = {
    "cmtmedqa": "您好，这可能与胃食管反流或功能性消化不良有关。",
    "chatmed_consult": "建议保持规律作息",
    "disc_med_sft": "那很可能是牙结石导致的牙龈炎。",
    "meddiag": "可以选择无痛胃镜",
    "cmedqa2": "小儿睡眠出汗多数是生理性的",
    "huatuo_sft": "接种部位疼痛是常见的局部反应",
    "webmedqa": "口干口苦可能与肝胆疾病",
    "chinese_medical_dialogue": "偶发室性早搏且没有症状",
    "shennong_tcm": "黄芪味甘、性微温",
    "huatuo_kgqa": "常见乏力、头晕、面色苍白",
    "cmexam": "正确答案：C. 去除病因\n解析：根除病因",
    "cmb_exam": "正确答案：A. 转移性右下腹痛；B. 可伴恶心呕吐",
    "promptcblue": "上述句子中的疾病名称有：高血压",
    "medical_books": "发热是指机体在致热原作用下",
    "crawled_articles": "春季是过敏性鼻炎的高发季节",
    "paper_abstracts": "探讨早期康复训练对脑卒中患者",
    "baike2018qa": "用纯净水煮",
    "webtext2019zh": "从每天十分钟开始",
    "wiki2019zh": "数学是研究数量、结构以及空间等概念的一门学科。",
    "alpaca_zh": "1. 保持规律的作息。",
    "belle_multiturn": "它以万历十五年为切面",
    "belle_train_0_5m": "相信自己",
}
CASES = [(corpus.name, stage) for corpus in CORPORA for stage in corpus.stages]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_dataset_info_holds_exactly_the_registry():
    current = json.loads((REPO_ROOT / "dataset_info.json").read_text(encoding="utf-8"))
    assert merged_dataset_info(current) == current, "run: sfmed data registry --write"
    assert run(["sfmed", "data", "registry"]).returncode == 0
    titles = {corpus.title for corpus in CORPORA}
    pretraining = {corpus.name for corpus in CORPORA if "pt" in corpus.stages}
    sft = {corpus.name for corpus in CORPORA if "sft" in corpus.stages}
    assert len(pretraining) == 19 and len(sft) == 9 and len(titles) == len(CORPORA)
    assert set(FIXTURE_OF) == set(CORPORA_BY_NAME) and all(c.raw_schema in RAW_SCHEMAS for c in CORPORA)
    for name, entry in registry_entries().items():
        assert ("hf_hub_url" in entry) == name.startswith("sfmed_hub_")


@pytest.mark.parametrize(("name", "stage"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_corpus_converts_and_loads_through_llamafactory(name, stage, tiny, tmp_path):
    corpus = CORPORA_BY_NAME[name]
    output = tmp_path / corpus.converted_file(stage)
    stage_args = ["--stage", stage] if len(corpus.stages) > 1 else []
    run(["sfmed", "data", "convert", name, str(FIXTURES / FIXTURE_OF[name]), str(output), *stage_args])
    report = read_json(Path(f"{output}.report.json"))
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert report["written"] == len(rows) >= 1 and report["skipped_invalid"] == 0
    assert report["rows_read"] == report["written"] + sum(report["excluded_by_dataset"].values())

    entry = {**registry_entries()[corpus.entry_name(stage)], "file_name": str(output)}
    # LF packs pre-training text into cutoff_len blocks and drops the remainder: small blocks for small fixtures
    options = {"cutoff_len": 16} if stage == "pt" else {}
    dataset, tokenizer = lf_load_dataset(tiny, {"it": entry}, "it", stage, tmp_path, **options)
    if stage == "pt":
        text = tokenizer.decode([token for example in dataset for token in example["input_ids"]])
    else:
        assert len(dataset) == len(rows)
        labels = [token for token in dataset[0]["labels"] if token >= 0]
        text = tokenizer.decode(labels)
    assert FIRST_ANSWER[name] in text


@pytest.mark.parametrize("name", [corpus.name for corpus in CORPORA if corpus.hub_columns])
def test_hub_entries_read_the_published_schema_like_the_converted_file(name, tiny, tmp_path):
    """The sfmed_hub_* column mapping, pointed at a file in the published schema, gives LF the same tokens as the
    converted file."""
    corpus = CORPORA_BY_NAME[name]
    converted = tmp_path / "converted.jsonl"
    convert_corpus(name, FIXTURES / FIXTURE_OF[name], converted, stage="sft")
    hub_entry = {key: value for key, value in registry_entries()[f"sfmed_hub_{name}"].items() if key != "hf_hub_url"}
    info = {
        "raw": {**hub_entry, "file_name": str(FIXTURES / FIXTURE_OF[name])},
        "converted": {**registry_entries()[corpus.entry_name("sft")], "file_name": str(converted)},
    }
    raw, _ = lf_load_dataset(tiny, info, "raw", "sft", tmp_path)
    ours, _ = lf_load_dataset(tiny, info, "converted", "sft", tmp_path)
    assert raw["input_ids"] == ours["input_ids"] and raw["labels"] == ours["labels"]


# (corpus or raw format, slice, stage, output form): pre-training corpora written in an SFT form by --form
REAL_SLICES = [
    ("cmtmedqa", "zhongjing_cmtmedqa_test.jsonl", None, "sharegpt"),
    ("disc_med_sft", "disc_medllm_train_test_examples.jsonl", "sft", "sharegpt"),
    ("chinese_medical_dialogue", "toyhom_cmdd_im_sample.jsonl", None, "alpaca"),
    ("cmexam", "cmexam_val_mirror.jsonl", "sft", "alpaca"),
    ("conversation", "medicalgpt_sft_medical.jsonl", None, "sharegpt"),  # a raw format, not a registered corpus
]


@pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent")
@pytest.mark.parametrize(("name", "file_name", "stage", "form"), REAL_SLICES, ids=[s[0] for s in REAL_SLICES])
def test_real_slices_convert_without_loss_and_load(name, file_name, stage, form, tiny, tmp_path):
    output = tmp_path / f"{name}.jsonl"
    report = convert_corpus(name, REALDATA / file_name, output, stage=stage, form=form, skip_invalid=True)
    source_rows = sum(1 for line in (REALDATA / file_name).read_text(encoding="utf-8").splitlines() if line.strip())
    assert report["rows_read"] == source_rows
    assert report["written"] + report["skipped_invalid"] == source_rows
    assert report["skipped_invalid"] <= source_rows * 0.02, report["skip_examples"]
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    if name == "cmtmedqa":  # every history turn is kept as a conversation turn
        originals = [json.loads(line) for line in (REALDATA / file_name).read_text(encoding="utf-8").splitlines()]
        assert [len(row["conversations"]) for row in rows] == [2 * (len(o["history"]) + 1) for o in originals]
    entry = {**registry_entries()["sfmed_sft_disc_med_sft" if form == "sharegpt" else "sfmed_sft_chatmed_consult"]}
    dataset, _ = lf_load_dataset(tiny, {"it": {**entry, "file_name": str(output)}}, "it", "sft", tmp_path)
    assert len(dataset) == len(rows)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_bad_rows_name_file_row_and_field_or_are_counted(tmp_path):
    good = json.dumps({"query": "头痛怎么办？", "response": "注意休息。"}, ensure_ascii=False)
    bad = write(tmp_path / "chatmed.jsonl", [good, json.dumps({"query": "只有问题"}, ensure_ascii=False), good])
    result = run(
        ["sfmed", "data", "convert", "chatmed_consult", str(bad), str(tmp_path / "out.jsonl"), "--stage", "sft"],
        check=False,
    )
    assert result.returncode == 2
    assert f"{bad}:2: missing field 'response'" in result.stderr
    assert not (tmp_path / "out.jsonl").exists(), "a failed conversion leaves no partial output"

    run(
        [
            "sfmed",
            "data",
            "convert",
            "chatmed_consult",
            str(bad),
            str(tmp_path / "out.jsonl"),
            "--stage",
            "sft",
            "--skip-invalid",
        ]
    )
    report = read_json(tmp_path / "out.jsonl.report.json")
    assert report["written"] == 2 and report["skipped_invalid"] == 1
    assert report["skip_reasons"] == {"missing field 'response'.": 1}
    assert report["skip_examples"] == [f"{bad}:2: missing field 'response'."]

    cases = {
        "disc_med_sft": ({"conversation": [{"role": "assistant", "content": "您好"}]}, "the conversation must open"),
        "belle_multiturn": ({"instruction": "你好", "output": "好"}, "field 'instruction': must be 'Human:"),
        "cmexam": ({"Question": "问", "Options": "A 甲\\nB 乙", "Answer": "F"}, "field 'Answer': 'F' is not among"),
        "huatuo_sft": ({"data": "问：一段文字"}, "field 'data': must be a non-empty list"),
    }
    for name, (row, message) in cases.items():
        path = write(tmp_path / f"{name}.jsonl", [json.dumps(row, ensure_ascii=False)])
        with pytest.raises(DataError, match=":1: " + message.replace("(", r"\(")):
            convert_corpus(name, path, tmp_path / f"{name}.out.jsonl", stage="sft")


def test_dataset_exclusions_and_trimmed_turns_are_reported(tmp_path):
    report = convert_corpus("webmedqa", FIXTURES / "webmedqa.txt", tmp_path / "w.jsonl")
    assert report["excluded_by_dataset"] == {"webMedQA candidate answer labelled 0 (not the accepted answer)": 1}
    report = convert_corpus("meddiag", FIXTURES / "meddialog.txt", tmp_path / "m.jsonl", stage="sft")
    assert report["unanswered_last_turns"] == 1  # "谢谢医生" after the last answer, kept in metadata
    first = json.loads((tmp_path / "m.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["conversations"][0]["value"].startswith("疾病：\n慢性胃炎")  # the Description opens the dialogue
    assert len(first["conversations"]) == 4


def test_usage_errors_are_clear(tmp_path):
    for args, message in [
        (["meddiag", "x", "y"], "registered for stages pt, sft: pass --stage"),
        (["nope", "x", "y"], "unknown corpus or raw schema 'nope'"),
        (["conversation", "x", "y"], "is a raw schema, not a registered corpus: pass --form"),
        (["wiki2019zh", str(FIXTURES / "wiki_00"), "y", "--form", "alpaca"], "is pre-training text"),
        (["alpaca_zh", str(tmp_path / "missing.json"), "y"], "missing.json does not exist"),
    ]:
        result = run(["sfmed", "data", "convert", *args], check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_plain_text_groups_paragraphs_up_to_the_limit(tmp_path):
    paragraphs = [f"第{i}段。" + "内容" * 40 for i in range(10)]  # 84-85 characters each
    source = write(tmp_path / "book.txt", [line for p in paragraphs for line in (p, "")])
    records = list(plain_text_rows(str(source), Problems(), max_chars=200))
    assert [len(r["text"].split("\n")) for _, r in records] == [2, 2, 2, 2, 2]
    assert [location.line for location, _ in records] == [1, 5, 9, 13, 17]
    assert "\n".join(r["text"] for _, r in records).split("\n") == paragraphs
