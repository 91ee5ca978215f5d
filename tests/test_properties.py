"""Property-based tests (Hypothesis) over every reader and converter: for arbitrary rows and files the outcome is a
correct conversion, a DataError naming the file and line (and the field where there is one), or a counted skip —
never another exception, never silent loss. Deterministic (derandomize) and bounded, so CI cannot flake."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfmed_lf.data_prep.convert import convert_corpus
from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Text
from sfmed_lf.formats.exam import ExamQuestion, options_from_text
from sfmed_lf.formats.lf_rows import ENTRY_COLUMNS, DatasetEntry, infer_entry, render
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.formats.raw import RAW_SCHEMAS, Excluded
from sfmed_lf.formats.reading import Location, Problems, read_rows

PROPERTY = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
HERE = Location("rows.jsonl", 1, 1)
# the words a row's texts are made of: CJK, latin, digits, punctuation, whitespace (incl. newlines)
TEXT = st.text(alphabet=st.sampled_from("头痛发热问答医生患者abcXYZ019 \n，。：:、?？"), max_size=12)
NONEMPTY = TEXT.filter(lambda text: text.strip())
SCALAR = st.one_of(TEXT, st.integers(-5, 5), st.booleans(), st.none(), st.floats(allow_nan=False, width=16))
VALUE = st.recursive(
    SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6
)


def fields_of(schema_name: str) -> list[str]:
    """The field names a schema reads, and a few others."""
    names = {
        "alpaca": ["instruction", "input", "output", "history", "system", "id"],
        "huatuo26m": ["instruction", "input", "output", "id"],
        "query_response": ["query", "response", "id"],
        "conversation": ["conversation", "conversations", "messages", "system", "_id"],
        "huatuo_sft": ["data"],
        "huatuo_kgqa": ["questions", "answers"],
        "cmedqa2": ["question", "content", "question_id", "ans_id"],
        "toyhom_csv": ["department", "title", "ask", "answer"],
        "cmexam": ["Question", "Options", "Answer", "Explanation"],
        "cmb_exam": ["question", "option", "answer", "explanation", "question_type"],
        "ceval": ["question", "A", "B", "C", "D", "answer", "explanation"],
        "promptcblue": ["input", "target", "task_type"],
        "belle_multiturn": ["instruction", "output"],
        "baike2018qa": ["title", "desc", "answer", "category"],
        "webtext2019zh": ["title", "desc", "content", "topic"],
        "wiki2019zh": ["title", "text", "url"],
        "plain_text": ["text"],
    }
    return names[schema_name]


def field_value(name: str) -> st.SearchStrategy:
    """Mostly plausible values for a field (so conversions succeed often), sometimes anything at all."""
    plausible = {
        "history": st.lists(st.lists(NONEMPTY, min_size=2, max_size=2), max_size=2),
        "conversation": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "patient", "doctor"]), "content": NONEMPTY}
            ),
            min_size=1,
            max_size=4,
        ),
        "data": st.lists(
            st.one_of(NONEMPTY, NONEMPTY.map(lambda t: "问：" + t), NONEMPTY.map(lambda t: "答：" + t)),
            min_size=1,
            max_size=4,
        ),
        "questions": st.lists(NONEMPTY, min_size=1, max_size=3),
        "answers": st.lists(NONEMPTY, min_size=1, max_size=3),
        "Options": st.lists(NONEMPTY, min_size=1, max_size=4).map(
            lambda texts: "\\n".join(f"{'ABCD'[i]} {t.strip()}" for i, t in enumerate(texts))
        ),
        "option": st.dictionaries(st.sampled_from("ABCD"), NONEMPTY, min_size=1, max_size=4),
        "Answer": st.sampled_from(["A", "B", "AC", "E"]),
        "answer": st.one_of(st.sampled_from(["A", "B", "AC"]), NONEMPTY),
        "instruction": st.one_of(NONEMPTY, NONEMPTY.map(lambda t: f"Human: {t} Assistant: ")),
    }
    several_texts = st.lists(NONEMPTY, min_size=1, max_size=3)  # Zhongjing wraps texts in lists; more is an error
    return st.one_of(plausible.get(name, NONEMPTY), several_texts, VALUE)


@st.composite
def raw_rows(draw: st.DrawFn, schema_name: str) -> dict:
    names = fields_of(schema_name)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, min_size=0, max_size=len(names)))
    row = {name: draw(field_value(name)) for name in chosen}
    row.update(draw(st.dictionaries(st.sampled_from(["extra", "note", "分类"]), VALUE, max_size=1)))
    return row


def words(value: object) -> set[str]:
    if value is None or (isinstance(value, bool | int | float) and not isinstance(value, str)):
        return set(re.findall(r"\w{2,}", json.dumps(value))) if value is not None else set()
    if isinstance(value, dict):
        return {w for item in value.values() for w in words(item)}
    if isinstance(value, list):
        return {w for item in value for w in words(item)}
    layout = {"Human", "Assistant", "user", "assistant", "patient", "doctor", "human", "gpt"}
    return {w for w in re.findall(r"\w{2,}", value) if w not in layout and not re.fullmatch(r"[A-E]+", w)}


def written_text(sample: Conversation | ExamQuestion | Text) -> str:
    if isinstance(sample, ExamQuestion):
        sample = sample.conversation()
    form = "pt" if isinstance(sample, Text) else "sharegpt"
    return json.dumps(render(sample, form), ensure_ascii=False)


def assert_located(error: DataError, path: str = "rows.jsonl") -> None:
    assert str(error).startswith(f"{path}:"), str(error)
    assert isinstance(error.code, str) and error.code


TABLE_SCHEMAS = [name for name, schema in RAW_SCHEMAS.items() if schema.rows.__name__ == "table_rows"]


def test_every_table_schema_is_covered():
    assert set(TABLE_SCHEMAS) | {"webmedqa", "meddialog_cn", "cmedqa2", "plain_text"} == set(RAW_SCHEMAS)


@pytest.mark.parametrize("schema_name", [*TABLE_SCHEMAS, "cmedqa2", "plain_text"])
def test_raw_rows_convert_fully_or_fail_with_a_location(schema_name):
    schema = RAW_SCHEMAS[schema_name]

    @settings(PROPERTY, max_examples=30)
    @given(row=raw_rows(schema_name))
    def check(row: dict) -> None:
        try:
            sample = schema.parse(HERE, row)
        except DataError as error:
            assert_located(error)
            return
        output = written_text(sample)
        content = {k: v for k, v in row.items() if k not in ("question_id", "ans_id")}
        if schema_name == "promptcblue" and isinstance(
            content.get("input"), str
        ):  # the answer cue is a prompt artefact
            content["input"] = re.sub(r"\n?\s*答[：:]\s*$", "", content["input"])
        missing = {word for word in words(content) if word not in output}
        assert not missing, (row, output)

    check()


@PROPERTY
@given(fields=st.lists(TEXT, min_size=0, max_size=7))
def test_webmedqa_lines(fields):
    try:
        sample = RAW_SCHEMAS["webmedqa"].parse(HERE, fields)
    except Excluded:
        assert fields[1].strip() == "0"
        return
    except DataError as error:
        assert_located(error)
        return
    assert len(fields) == 5 and all(word in written_text(sample) for word in words(fields[3:]))


@PROPERTY
@given(
    lines=st.lists(
        st.one_of(TEXT, st.sampled_from(["Description", "Dialogue", "病人：", "医生：", "病人：好", "医生：嗯"])),
        max_size=8,
    )
)
def test_meddialog_blocks(lines):
    try:
        sample = RAW_SCHEMAS["meddialog_cn"].parse(HERE, ["id=1", *lines])
    except DataError as error:
        assert_located(error)
        return
    output = written_text(sample) + json.dumps(dict(sample.metadata), ensure_ascii=False)
    assert all(word in output for word in words(lines) - {"Description", "Dialogue", "病人", "医生"})


ENTRIES = {
    **{form: ENTRY_COLUMNS[form] for form in ("pt", "alpaca", "sharegpt", "ranking")},
    "openai": {"formatting": "openai", "columns": {"messages": "messages", "system": "system"}},
    "sharegpt_ranking": {
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "medicalgpt": {
        "ranking": True,
        "columns": {"prompt": "question", "chosen": "response_chosen", "rejected": "response_rejected"},
    },
}
MESSAGE = st.fixed_dictionaries(
    {"from": st.sampled_from(["human", "gpt", "system", "observation", "x"]), "value": st.one_of(NONEMPTY, VALUE)}
)
LF_ROW = st.dictionaries(
    st.sampled_from(
        [
            "text",
            "instruction",
            "input",
            "output",
            "history",
            "system",
            "conversations",
            "messages",
            "chosen",
            "rejected",
            "question",
            "response_chosen",
            "response_rejected",
        ]
    ),
    st.one_of(
        NONEMPTY,
        VALUE,
        st.lists(MESSAGE, max_size=4),
        MESSAGE,
        st.lists(st.lists(NONEMPTY, min_size=2, max_size=2), max_size=2),
    ),
    max_size=6,
)
CODES = {
    "missing_field",
    "wrong_type",
    "empty_turn",
    "turn_order",
    "unknown_role",
    "chosen_equals_rejected",
    "missing_system_key",
    "invalid",
}


@PROPERTY
@given(row=LF_ROW)
def test_llamafactory_rows_read_as_llamafactory_reads_them_or_fail_with_a_code(row):
    for name, entry_info in ENTRIES.items():
        entry = DatasetEntry.parse(name, entry_info, "dataset_info.json")
        try:
            sample = entry.read(HERE, row)
        except DataError as error:
            assert_located(error)
            assert error.code in CODES, error.code
            continue
        if isinstance(sample, PreferencePair):
            assert sample.chosen.strip() != sample.rejected.strip() and sample.prompt.question.strip()
        elif isinstance(sample, Conversation):
            assert all(user.strip() and answer.strip() for user, answer in sample.turns)
        else:
            assert isinstance(sample, Text) and sample.text.strip()


@PROPERTY
@given(row=LF_ROW)
def test_inferred_entries_never_crash(row):
    try:
        infer_entry("file.jsonl", HERE, row).read(HERE, row)
    except DataError as error:
        assert_located(error)


TURNS = st.lists(st.tuples(NONEMPTY, NONEMPTY), min_size=1, max_size=3)


@PROPERTY
@given(system=TEXT, turns=TURNS)
def test_conversations_survive_every_written_form(system, turns):
    conversation = Conversation(system, tuple(turns))
    for form in ("alpaca", "sharegpt"):
        entry = DatasetEntry.parse("it", ENTRY_COLUMNS[form], "dataset_info.json")
        assert entry.read(HERE, json.loads(json.dumps(render(conversation, form)))) == conversation


@PROPERTY
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["A", "B", "C", "a", "AB", ""]), st.sampled_from([" ", ". ", "、", ""]), TEXT),
        max_size=5,
    )
)
def test_option_lines_parse_or_fail_never_overwrite(lines):
    text = "\n".join(letter + separator + option for letter, separator, option in lines)
    try:
        options = options_from_text(HERE, text)
    except DataError as error:
        assert_located(error)
        return
    letters = [letter for letter, _, option in lines if (letter + option).strip()]
    assert len(options) == len([line for line in text.splitlines() if line.strip()]) <= len(letters)


FILE_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.one_of(
            st.just(b'{"query": "\xe5\xa4\xb4\xe7\x97\x9b", "response": "ok"}'),
            st.binary(max_size=30),
            st.just(b"[1]"),
            st.just(b""),
        ),
        max_size=6,
    ).map(b"\n".join),
)


@PROPERTY
@given(data=FILE_BYTES, suffix=st.sampled_from([".jsonl", ".json", ".csv"]), skip=st.booleans())
def test_files_of_any_bytes_read_or_fail_with_their_name_and_line(data, suffix, skip):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"rows{suffix}"
        path.write_bytes(data)
        problems = Problems(skip_invalid=skip)
        try:
            rows = read_rows(path, problems)
        except DataError as error:
            assert str(error).startswith(f"{path}"), str(error)
            return
        lines = max(data.count(b"\n") + 1, 1)
        assert all(isinstance(row, dict) and 1 <= location.line <= lines for location, row in rows)
        assert skip or not problems.skipped


@settings(PROPERTY, max_examples=25)
@given(
    lines=st.lists(
        st.one_of(
            st.builds(lambda q, r: json.dumps({"query": q, "response": r}, ensure_ascii=False), VALUE, VALUE),
            st.builds(lambda q, r: json.dumps({"query": q, "response": r}, ensure_ascii=False), NONEMPTY, NONEMPTY),
            st.just("{broken"),
            st.just("[]"),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_conversion_counts_every_row(lines):
    """rows read = written + skipped + excluded, and the output holds exactly the written rows."""
    with tempfile.TemporaryDirectory() as directory:
        source, output = Path(directory) / "in.jsonl", Path(directory) / "out.jsonl"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            report = convert_corpus("chatmed_consult", source, output, stage="sft", skip_invalid=True)
        except DataError as error:
            assert "no row converted" in str(error) and not output.exists()
            return
        assert report["rows_read"] == len(lines)
        assert report["written"] + report["skipped_invalid"] + sum(report["excluded_by_dataset"].values()) == len(lines)
        assert len(output.read_text(encoding="utf-8").splitlines()) == report["written"]


ITEM_ROW = st.fixed_dictionaries(
    {
        "id": st.one_of(NONEMPTY, VALUE),
        "dataset": st.one_of(NONEMPTY, VALUE),
        "kind": st.sampled_from(["dialogue", "mcq", "essay"]),
        "question": st.one_of(NONEMPTY, VALUE),
    },
    optional={
        "reference": st.one_of(NONEMPTY, VALUE),
        "history": st.one_of(st.lists(st.lists(NONEMPTY, min_size=2, max_size=2), max_size=2), VALUE),
        "options": st.one_of(st.dictionaries(st.sampled_from("ABCDa"), st.one_of(NONEMPTY, VALUE), max_size=4), VALUE),
        "answer": st.one_of(st.sampled_from(["A", "BC", "E"]), VALUE),
        "multi_answer": st.one_of(st.booleans(), VALUE),
    },
)


@PROPERTY
@given(row=ITEM_ROW)
def test_evaluation_items_read_back_or_fail_with_a_location(row):
    from sfmed_lf.formats.items import item_from_row

    try:
        item = item_from_row(HERE, row)
    except DataError as error:
        assert_located(error)
        return
    assert item_from_row(HERE, json.loads(json.dumps(item.row()))) == item
