"""The published raw schemas of the corpora and benchmarks SF-Med uses: one registry, :data:`RAW_SCHEMAS`, read by
``sfmed data convert`` (-> LLaMA-Factory files) and ``sfmed eval convert`` (-> evaluation items) under the same
names.

A schema is a row reader plus a row parser. The parser turns one raw row into a :class:`Conversation`, an
:class:`ExamQuestion` or a :class:`Text`, keeping every content field: dialogue text goes into the turns, every
other source field (department, category, exam subject, ids, …) into ``metadata``, so no source text is dropped.
A row the parser cannot read raises :class:`DataError` naming the file, the line and the field; a row the dataset
itself marks as not for use (webMedQA's wrong candidates) raises :class:`Excluded` and is counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats import fields
from sfmed_lf.formats.conversation import Conversation, Text, conversation_from_messages
from sfmed_lf.formats.exam import ExamQuestion, exam_question, options_from_text
from sfmed_lf.formats.reading import Location, Problems, read_rows, read_text_lines

Sample = Conversation | ExamQuestion | Text
RowReader = Callable[[str, Problems], Iterator[tuple[Location, Any]]]


class Excluded(Exception):
    """A row the dataset itself marks as not for training (e.g. webMedQA's wrong-answer candidates): counted."""


# ---------------------------------------------------------------------------------------------------------------
# Row readers: (location, raw row) for one input path.


def table_rows(path: str, problems: Problems) -> Iterator[tuple[Location, Any]]:
    """.json, .jsonl or .csv rows."""
    yield from read_rows(path, problems)


def webmedqa_rows(path: str, problems: Problems) -> Iterator[tuple[Location, Any]]:
    """webMedQA's text files: tab-separated ``id, label, category, question, answer`` (as its paper describes)."""
    for number, line in read_text_lines(path, problems):
        if line.strip():
            yield Location(path, number), line.split("\t")


def meddialog_rows(path: str, problems: Problems) -> Iterator[tuple[Location, Any]]:
    """MedDialog-CN's text dumps: blocks opened by ``id=N``, with ``Description`` and ``Dialogue`` sections."""
    block: list[str] = []
    start = 0
    for number, line in read_text_lines(path, problems):
        if line.startswith("id=") and block:
            yield Location(path, start), block
            block = []
        if line.startswith("id="):
            start = number
        elif not start and line.strip():
            raise Location(path, number).error("text before the first 'id=' line.")
        if start:
            block.append(line)
    if block:
        yield Location(path, start), block


def cmedqa2_rows(path: str, problems: Problems) -> Iterator[tuple[Location, Any]]:
    """cMedQA2 is a directory: question.csv (question_id, content) and answer.csv (ans_id, question_id, content).
    One row per answer (located in answer.csv), with its question's text."""
    directory = Path(path)
    questions_path, answers_path = directory / "question.csv", directory / "answer.csv"
    if not (questions_path.is_file() and answers_path.is_file()):
        raise DataError(f"{path}: cMedQA2 input is a directory holding question.csv and answer.csv.")
    questions: dict[str, str] = {}
    for location, row in read_rows(questions_path, problems):
        question_id = fields.text(location, row, "question_id")
        if question_id in questions:
            raise location.error(f"question_id {question_id!r} occurs twice.", "question_id")
        questions[question_id] = fields.text(location, row, "content")
    for location, row in read_rows(answers_path, problems):
        yield location, {**row, "question": questions.get(row.get("question_id", ""))}


def plain_text_rows(path: str, problems: Problems, max_chars: int = 1500) -> Iterator[tuple[Location, Any]]:
    """Books, crawled articles, abstracts: a .txt file (or a directory of them), paragraphs split by blank lines and
    grouped into records of at most ``max_chars`` (a longer paragraph stays whole); or .jsonl with ``text``."""
    root = Path(path)
    paths = sorted(root.glob("**/*.txt")) if root.is_dir() else [root]
    if not paths:
        raise DataError(f"{path}: no .txt files.")
    for text_path in paths:
        if text_path.suffix != ".txt":
            yield from read_rows(text_path, problems)
            continue
        record: list[str] = []
        record_start = paragraph_start = 0
        paragraph: list[str] = []
        lines = list(read_text_lines(text_path, problems))
        last = lines[-1][0] if lines else 0
        for number, line in [*lines, (last + 1, "")]:
            if line.strip():
                paragraph_start = paragraph_start or number
                paragraph.append(line.strip())
                continue
            if not paragraph:
                continue
            text = "".join(paragraph)
            if record and sum(map(len, record)) + len(text) > max_chars:
                yield Location(str(text_path), record_start), {"text": "\n".join(record)}
                record = []
            if not record:
                record_start = paragraph_start
            record.append(text)
            paragraph, paragraph_start = [], 0
        if record:
            yield Location(str(text_path), record_start), {"text": "\n".join(record)}


# ---------------------------------------------------------------------------------------------------------------
# Row parsers: one raw row -> Sample.


def _object(location: Location, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise location.error(f"expected an object, got {type(row).__name__}.")
    return row


def _joined(question: str, extra: str) -> str:
    """A question and its extension (ask, desc, input); an extension the question already contains adds nothing."""
    if not extra or extra in question:
        return question
    if question in extra:
        return extra
    return f"{question}\n{extra}"


def parse_alpaca(location: Location, row: Any) -> Conversation:
    """alpaca (alpaca-zh, BELLE train_0.5M_CN, CMtMedQA, Huatuo-26M as Zhongjing ships it with one-element lists):
    instruction (+ input) -> output, optional history and system."""
    row = _object(location, row)
    history = row.get("history")
    turns: list[tuple[str, str]] = []
    if history is not None:
        if not isinstance(history, list):
            raise location.error("must be a list of [question, answer] pairs.", "history")
        for index, turn in enumerate(history):
            if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) and t.strip() for t in turn)):
                raise location.error(f"turn {index} is not a [question, answer] pair of non-empty texts.", "history")
            turns.append((turn[0].strip(), turn[1].strip()))
    question = _joined(fields.text(location, row, "instruction"), fields.optional_text(location, row, "input"))
    answer = fields.text(location, row, "output")
    system = fields.optional_text(location, row, "system")
    metadata = fields.metadata(row, {"instruction", "input", "output", "history", "system"})
    return Conversation(system, (*turns, (question, answer)), metadata)


def parse_query_response(location: Location, row: Any) -> Conversation:
    """ChatMed-Consult and ShenNong-TCM: query -> response."""
    row = _object(location, row)
    turn = (fields.text(location, row, "query"), fields.text(location, row, "response"))
    return Conversation("", (turn,), fields.metadata(row, {"query", "response"}))


def parse_conversation(location: Location, row: Any) -> Conversation:
    """DISC-Med-SFT (``conversation``: role user/assistant or patient/doctor, content) and ShareGPT-like rows
    (``conversations``/``messages``: from/role, value/content)."""
    row = _object(location, row)
    name, messages = fields.value(location, row, "conversation", "conversations", "messages")
    if not isinstance(messages, list) or not messages:
        raise location.error("must be a non-empty list of role/content objects.", name)
    pairs = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise location.error(f"message {index} is not an object.", name)
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if not isinstance(role, str) or not isinstance(content, str) or not content.strip():
            raise location.error(f"message {index} needs a role and non-empty content text.", name)
        pairs.append((role.strip().lower(), content.strip()))
    system = fields.optional_text(location, row, "system")
    metadata = fields.metadata(row, {name, "system"})
    return conversation_from_messages(location, pairs, system, metadata)


_HUATUO_PREFIX = re.compile(r"^\s*(问|答)\s*[：:]\s*")


def parse_huatuo_sft(location: Location, row: Any) -> Conversation:
    """HuatuoGPT-sft-data-v1: ``data``: ["问：…", "答：…", …], alternating from the patient."""
    row = _object(location, row)
    data = fields.text_list(location, row, "data")
    messages = []
    for position, text in enumerate(data):
        match = _HUATUO_PREFIX.match(text)
        role = match.group(1) if match else ("问" if position % 2 == 0 else "答")
        content = text[match.end() :].strip() if match else text
        if not content:
            raise location.error(f"item {position} has a speaker prefix but no text.", "data")
        messages.append((role, content))
    return conversation_from_messages(location, messages, metadata=fields.metadata(row, {"data"}))


def parse_huatuo_kgqa(location: Location, row: Any) -> Conversation:
    """huatuo_knowledge_graph_qa: ``questions`` (paraphrases of one question) and ``answers``: the first of each is
    the turn; further paraphrases and answers are kept in metadata."""
    row = _object(location, row)
    questions, answers = fields.text_list(location, row, "questions"), fields.text_list(location, row, "answers")
    metadata = fields.metadata(row, {"questions", "answers"})
    if len(questions) > 1:
        metadata["other_questions"] = "\n".join(questions[1:])
    if len(answers) > 1:
        metadata["other_answers"] = "\n".join(answers[1:])
    return Conversation("", ((questions[0], answers[0]),), metadata)


def parse_webmedqa(location: Location, row: Any) -> Conversation:
    if not isinstance(row, list) or len(row) != 5:
        found = len(row) if isinstance(row, list) else 0
        raise location.error(f"expected 5 tab-separated fields (id, label, category, question, answer), found {found}.")
    item_id, label, category, question, answer = (value.strip() for value in row)
    if label not in ("0", "1"):
        raise location.error(f"label must be 0 or 1, not {label!r}.", "label")
    if label != "1":
        raise Excluded("webMedQA candidate answer labelled 0 (not the accepted answer)")
    for name, text in (("question", question), ("answer", answer)):
        if not text:
            raise location.error("is empty.", name)
    metadata = {key: value for key, value in (("id", item_id), ("category", category)) if value}
    return Conversation("", ((question, answer),), metadata)


def _meddialog_speaker(line: str) -> tuple[str, str] | None:
    for speaker in ("病人", "医生"):
        for colon in ("：", ":"):
            if line.startswith(speaker + colon):
                return speaker, line[len(speaker) + 1 :].strip()
    return None


def parse_meddialog(location: Location, block: Any) -> Conversation:
    """MedDialog-CN: the patient's ``Description`` (疾病/病情描述/希望获得的帮助…) opens the dialogue when the
    first patient utterance is empty (otherwise it is kept in metadata, as are the header lines: URL, faculty);
    utterances follow ``病人：`` / ``医生：`` markers (text on the same line or the lines after)."""
    if not isinstance(block, list) or not block or not block[0].startswith("id="):
        raise location.error("expected a block opened by an 'id=' line.")
    lines = [line.strip() for line in block]
    if "Dialogue" not in lines:
        raise location.error("block has no 'Dialogue' section.")
    dialogue_at = lines.index("Dialogue")
    description_at = lines.index("Description") if "Description" in lines[:dialogue_at] else dialogue_at
    metadata = {"id": lines[0][3:].strip()}
    header = [line for line in lines[1:description_at] if line]
    if header:
        metadata["header"] = "\n".join(header)
    description = "\n".join(line for line in lines[description_at + 1 : dialogue_at] if line)
    messages: list[list[str]] = []
    for line in lines[dialogue_at + 1 :]:
        marker = _meddialog_speaker(line)
        if marker:
            messages.append([marker[0], marker[1]])
        elif line and messages:
            messages[-1][1] = f"{messages[-1][1]}\n{line}".strip()
        elif line:
            raise location.error(f"dialogue text {line[:30]!r} before the first 病人/医生 marker.")
    if messages and messages[0][0] == "病人" and not messages[0][1] and description:
        messages[0][1] = description
    elif description:
        metadata["description"] = description
    return conversation_from_messages(location, [(role, text) for role, text in messages if text], "", metadata)


def parse_cmedqa2(location: Location, row: Any) -> Conversation:
    row = _object(location, row)
    if not row.get("question"):
        raise location.error(f"{row.get('question_id')!r} is not in question.csv.", "question_id")
    answer = fields.text(location, row, "content")
    metadata = fields.metadata(row, {"content", "question"})
    return Conversation("", ((row["question"], answer),), metadata)


_NO_ASK = ("无", "无。", "没有", "暂无")


def parse_toyhom(location: Location, row: Any) -> Conversation:
    """Chinese-medical-dialogue-data: department, title, ask, answer. The patient's question is the title and the
    ask together (the ask is often the title extended, and an ask of 无 adds nothing); the department is metadata."""
    row = _object(location, row)
    title, ask = fields.optional_text(location, row, "title"), fields.optional_text(location, row, "ask")
    if ask in _NO_ASK:
        ask = ""
    question = _joined(title, ask) if title else ask
    if not question:
        raise location.error("and 'ask' are both empty.", "title")
    metadata = fields.metadata(row, {"title", "ask", "answer"})
    if row.get("ask") in _NO_ASK:
        metadata["ask"] = row["ask"]
    return Conversation("", ((question, fields.text(location, row, "answer")),), metadata)


def parse_cmexam(location: Location, row: Any) -> ExamQuestion:
    row = _object(location, row)
    return exam_question(
        location,
        fields.text(location, row, "Question"),
        options_from_text(location, fields.text(location, row, "Options")),
        fields.text(location, row, "Answer"),
        explanation=fields.optional_text(location, row, "Explanation"),
        metadata=fields.metadata(row, {"Question", "Options", "Answer", "Explanation"}),
        options_field="Options",
        answer_field="Answer",
    )


def parse_cmb(location: Location, row: Any) -> ExamQuestion:
    row = _object(location, row)
    _, options = fields.value(location, row, "option")
    if not isinstance(options, dict):
        raise location.error("must map option letters to text.", "option")
    question_type = fields.optional_text(location, row, "question_type")
    return exam_question(
        location,
        fields.text(location, row, "question"),
        options,
        fields.value(location, row, "answer")[1],
        multi_answer=question_type.startswith("多项") if question_type else None,
        explanation=fields.optional_text(location, row, "explanation"),
        metadata=fields.metadata(row, {"question", "option", "answer", "explanation"}),
        options_field="option",
    )


_CEVAL_LETTERS = "ABCDEFGH"


def parse_ceval(location: Location, row: Any) -> ExamQuestion:
    """C-Eval / CMMLU rows: question (or Question), one column per option letter, answer (or Answer)."""
    row = _object(location, row)
    question_field, _ = fields.value(location, row, "question", "Question")
    answer_field, answer = fields.value(location, row, "answer", "Answer")
    options = {letter: row[letter] for letter in _CEVAL_LETTERS if row.get(letter) not in (None, "")}
    consumed = {question_field, answer_field, "explanation", *_CEVAL_LETTERS}
    return exam_question(
        location,
        fields.text(location, row, question_field),
        options,
        answer,
        explanation=fields.optional_text(location, row, "explanation"),
        metadata=fields.metadata(row, consumed),
        options_field="A",
        answer_field=answer_field,
    )


def parse_promptcblue(location: Location, row: Any) -> Conversation:
    """PromptCBLUE: a prompt ``input`` with its ``target`` (task_type etc. are metadata). The prompts end with an
    answer cue (``答：``) that the chat template's assistant turn replaces."""
    row = _object(location, row)
    prompt = re.sub(r"\n?\s*答[：:]\s*$", "", fields.text(location, row, "input"))
    turn = (prompt, fields.text(location, row, "target"))
    return Conversation("", (turn,), fields.metadata(row, {"input", "target"}))


_BELLE_TURN = re.compile(r"(Human|Assistant)\s*[:：]")


def parse_belle_multiturn(location: Location, row: Any) -> Conversation:
    """BELLE multiturn_chat_0.8M: ``instruction`` holds "Human: … Assistant: … Human: … Assistant:" and ``output``
    answers the last Human turn."""
    row = _object(location, row)
    instruction = fields.text(location, row, "instruction")
    parts = _BELLE_TURN.split(instruction)
    if len(parts) < 3 or parts[0].strip():
        raise location.error("must be 'Human: … Assistant: …' turns.", "instruction")
    messages = [(parts[i].lower(), parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if messages[-1] != ("assistant", ""):
        raise location.error("must end with an open 'Assistant:' turn.", "instruction")
    messages[-1] = ("assistant", fields.text(location, row, "output"))
    if any(not text for _, text in messages):
        raise location.error("has an empty turn.", "instruction")
    return conversation_from_messages(location, messages, metadata=fields.metadata(row, {"instruction", "output"}))


def parse_baike2018qa(location: Location, row: Any) -> Conversation:
    """baike2018qa: title (+ desc) -> answer; qid and category are metadata."""
    row = _object(location, row)
    question = _joined(fields.text(location, row, "title"), fields.optional_text(location, row, "desc"))
    turn = (question, fields.text(location, row, "answer"))
    return Conversation("", (turn,), fields.metadata(row, {"title", "desc", "answer"}))


def parse_webtext2019zh(location: Location, row: Any) -> Conversation:
    """webtext2019zh: title (+ desc) -> content (a community answer); qid, topic, star, … are metadata."""
    row = _object(location, row)
    question = _joined(fields.text(location, row, "title"), fields.optional_text(location, row, "desc"))
    turn = (question, fields.text(location, row, "content"))
    return Conversation("", (turn,), fields.metadata(row, {"title", "desc", "content"}))


def parse_wiki2019zh(location: Location, row: Any) -> Text:
    """wiki2019zh: title and text (the title opens the text unless the text already starts with it)."""
    row = _object(location, row)
    text = fields.text(location, row, "text")
    title = fields.optional_text(location, row, "title")
    body = text if not title or text.startswith(title) else f"{title}\n{text}"
    return Text(body, fields.metadata(row, {"text", "title"}))


def parse_plain_text(location: Location, row: Any) -> Text:
    row = _object(location, row)
    return Text(fields.text(location, row, "text"), fields.metadata(row, {"text"}))


# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSchema:
    name: str
    description: str
    parse: Callable[[Location, Any], Sample]
    rows: RowReader = table_rows
    kind: str = "dialogue"  # dialogue, exam or text

    def read(self, path: str, problems: Problems | None = None) -> Iterator[tuple[Location, Any]]:
        if not Path(path).exists():
            raise DataError(f"{path}: no such file or directory.")
        return self.rows(path, problems if problems is not None else Problems())


def _schemas(*schemas: RawSchema) -> dict[str, RawSchema]:
    return {schema.name: schema for schema in schemas}


RAW_SCHEMAS: dict[str, RawSchema] = _schemas(
    RawSchema("alpaca", "instruction, input, output[, history, system]", parse_alpaca),
    RawSchema("huatuo26m", "Huatuo-26M as Zhongjing ships it: instruction [text], output [text]", parse_alpaca),
    RawSchema("query_response", "query, response", parse_query_response),
    RawSchema("conversation", "conversation[{role, content}] (or conversations[{from, value}])", parse_conversation),
    RawSchema("huatuo_sft", 'data: ["问：…", "答：…", …]', parse_huatuo_sft),
    RawSchema("huatuo_kgqa", "questions[...], answers[...]", parse_huatuo_kgqa),
    RawSchema("webmedqa", "tab-separated id, label, category, question, answer", parse_webmedqa, webmedqa_rows),
    RawSchema("meddialog_cn", "id=N, Description, Dialogue (病人：/医生：) blocks", parse_meddialog, meddialog_rows),
    RawSchema("cmedqa2", "directory: question.csv, answer.csv", parse_cmedqa2, cmedqa2_rows),
    RawSchema("toyhom_csv", "department, title, ask, answer (CSV, GB18030 or UTF-8)", parse_toyhom),
    RawSchema("cmexam", 'Question, Options ("A …\\nB …"), Answer, Explanation', parse_cmexam, kind="exam"),
    RawSchema("cmb_exam", "question, option{A: …}, answer, explanation, question_type", parse_cmb, kind="exam"),
    RawSchema("ceval", "C-Eval/CMMLU: question, A, B, C, D, answer[, explanation]", parse_ceval, kind="exam"),
    RawSchema("promptcblue", "input, target[, task_type, answer_choices]", parse_promptcblue),
    RawSchema("belle_multiturn", 'instruction "Human: … Assistant:", output', parse_belle_multiturn),
    RawSchema("baike2018qa", "qid, category, title, desc, answer", parse_baike2018qa),
    RawSchema("webtext2019zh", "qid, title, desc, topic, content", parse_webtext2019zh),
    RawSchema("wiki2019zh", "id, url, title, text", parse_wiki2019zh, kind="text"),
    RawSchema("plain_text", ".txt files (paragraphs) or .jsonl with text", parse_plain_text, plain_text_rows, "text"),
)
RENAMED_SCHEMAS = {"cmb": "cmb_exam", "toyhom": "toyhom_csv", "meddialog": "meddialog_cn"}


def raw_schema(name: str) -> RawSchema:
    if name in RAW_SCHEMAS:
        return RAW_SCHEMAS[name]
    if name in RENAMED_SCHEMAS:
        raise DataError(f"raw schema {name!r} is now called {RENAMED_SCHEMAS[name]!r}.")
    raise DataError(f"unknown raw schema {name!r}; known: {', '.join(RAW_SCHEMAS)}.")
