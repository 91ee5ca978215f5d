"""Readers for the published raw schemas of the SF-Med corpora (Tables 1–2), and the LLaMA-Factory forms they
are written in.

A raw format is a row reader plus a row parser. The parser turns one raw row into a :class:`Dialogue` (optional
system prompt, then user/assistant turns; exam questions become question + options -> answer + explanation) or a
:class:`Text` (pre-training prose). :func:`render` writes a sample in one of three LLaMA-Factory forms:

* ``pt``: ``{"text": ...}``; a dialogue as ``问：…`` / ``答：…`` lines (the system prompt is not part of the text);
* ``alpaca``: ``{"instruction", "input", "output", "history", "system"}`` — the last turn, earlier turns as history;
* ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt", "value"}], "system"}``.

A row the parser cannot read raises :class:`DataError` naming the file, the row and the field. A dialogue that
ends on an unanswered user turn keeps its answered turns; the trimmed turns are counted in the conversion report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.eval.items import cmb_item, cmexam_item
from sfmed_lf.utils.fields import optional_text, read_rows, required, required_text


@dataclass
class Dialogue:
    turns: list[tuple[str, str]]  # (user, assistant), oldest first
    system: str = ""
    trimmed_turns: int = 0  # unanswered trailing user turns left out


@dataclass
class Text:
    text: str


Sample = Dialogue | Text


class Excluded(Exception):
    """A row the dataset itself marks as not for training (e.g. webMedQA's wrong-answer candidates): counted, not
    an error."""


# ---------------------------------------------------------------------------------------------------------------
# Row readers: (row number, raw row) for one input path.


def webmedqa_rows(path: str) -> Iterator[tuple[int, Any]]:
    """webMedQA's text files: tab-separated ``id, label, category, question, answer`` (as its paper describes)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.rstrip("\n").split("\t")


def meddialog_rows(path: str) -> Iterator[tuple[int, Any]]:
    """MedDialog-CN's text dumps: blocks opened by ``id=N``, with ``Description`` and ``Dialogue`` sections."""
    block: list[str] = []
    start = 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith("id=") and block:
                yield start, block
                block = []
            if line.startswith("id="):
                start = number
            if start:
                block.append(line.rstrip("\n"))
    if block:
        yield start, block


def cmedqa2_rows(path: str) -> Iterator[tuple[int, Any]]:
    """cMedQA2 is a directory: question.csv (question_id, content) and answer.csv (ans_id, question_id, content).
    One row per answer (row numbers are answer.csv lines), with its question's text."""
    directory = Path(path)
    questions_path, answers_path = directory / "question.csv", directory / "answer.csv"
    for required_file in (questions_path, answers_path):
        if not required_file.is_file():
            raise DataError(f"{path}: cMedQA2 input must be a directory holding question.csv and answer.csv.")
    questions = {row.get("question_id", ""): row.get("content", "") for _, row in read_rows(str(questions_path))}
    for number, row in read_rows(str(answers_path)):
        question = questions.get(row.get("question_id", ""))
        yield number, {**row, "question": question, "answer_file": str(answers_path)}


def plain_text_rows(path: str, max_chars: int = 1500) -> Iterator[tuple[int, Any]]:
    """Books, crawled articles, abstracts: a .txt file (or a directory of them), paragraphs split by blank lines and
    grouped into records of at most ``max_chars`` (a longer paragraph stays whole); or .jsonl with ``text``."""
    paths = sorted(Path(path).glob("**/*.txt")) if Path(path).is_dir() else [Path(path)]
    if not paths:
        raise DataError(f"{path}: no .txt files.")
    for text_path in paths:
        if text_path.suffix != ".txt":
            yield from read_rows(str(text_path))
            continue
        record: list[str] = []
        record_start = 0
        paragraph: list[str] = []
        paragraph_start = 0
        lines = text_path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate([*lines, ""], start=1):
            if line.strip():
                paragraph_start = paragraph_start or number
                paragraph.append(line.strip())
                continue
            if not paragraph:
                continue
            text = "".join(paragraph)
            if record and sum(map(len, record)) + len(text) > max_chars:
                yield record_start, {"text": "\n".join(record), "file": str(text_path)}
                record = []
            if not record:
                record_start = paragraph_start
            record.append(text)
            paragraph, paragraph_start = [], 0
        if record:
            yield record_start, {"text": "\n".join(record), "file": str(text_path)}


# ---------------------------------------------------------------------------------------------------------------
# Row parsers: one raw row -> Sample.

_USER_ROLES = {"user", "human", "patient", "病人", "患者", "问"}
_ASSISTANT_ROLES = {"assistant", "gpt", "doctor", "医生", "答"}


def dialogue_from_messages(path: str, number: int, messages: list[tuple[str, str]], system: str = "") -> Dialogue:
    """Role-tagged messages -> turns. Consecutive messages of one speaker are joined; a leading assistant message
    is an error; trailing unanswered user messages are trimmed (and counted)."""
    merged: list[tuple[str, str]] = []
    for role, content in messages:
        if role == "system":
            system = content
            continue
        side = "user" if role in _USER_ROLES else "assistant" if role in _ASSISTANT_ROLES else None
        if side is None:
            raise DataError(f"{path}: row {number}: unknown role {role!r} in the conversation.")
        if merged and merged[-1][0] == side:
            merged[-1] = (side, f"{merged[-1][1]}\n{content}")
        else:
            merged.append((side, content))
    if not merged or merged[0][0] != "user":
        raise DataError(f"{path}: row {number}: the conversation must open with a user (patient) message.")
    trimmed = 1 if merged[-1][0] == "user" else 0
    if trimmed:
        merged.pop()
    if not merged:
        raise DataError(f"{path}: row {number}: the conversation has no answered turn.")
    turns = [(merged[i][1], merged[i + 1][1]) for i in range(0, len(merged), 2)]
    return Dialogue(turns, system, trimmed)


def _question(row: dict[str, Any], question: str, extra: str) -> str:
    extra = optional_text(row, extra)
    return f"{question}\n{extra}" if extra and extra not in question else question


def parse_alpaca(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """alpaca (alpaca-zh, BELLE train_0.5M_CN, CMtMedQA): instruction (+ input) -> output, optional history."""
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) and t.strip() for t in turn)
        for turn in history
    ):
        raise DataError(f"{path}: row {number}: field 'history' must be a list of [question, answer] text pairs.")
    question = _question(row, required_text(path, number, row, "instruction"), "input")
    turns = [(q.strip(), a.strip()) for q, a in history]
    return Dialogue([*turns, (question, required_text(path, number, row, "output"))], optional_text(row, "system"))


def parse_query_response(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """ChatMed-Consult and ShenNong-TCM: query -> response."""
    return Dialogue([(required_text(path, number, row, "query"), required_text(path, number, row, "response"))])


def parse_conversation(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """DISC-Med-SFT (``conversation``: role user/assistant, content) and ShareGPT-like rows
    (``conversations``/``messages``: from/role, value/content)."""
    messages = required(path, number, row, "conversation", "conversations", "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{path}: row {number}: field 'conversation' must be a list of role/content objects.")
    pairs = []
    for message in messages:
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if not isinstance(role, str) or not isinstance(content, str) or not content.strip():
            raise DataError(f"{path}: row {number}: field 'conversation': every message needs a role and content.")
        pairs.append((role.strip().lower(), content.strip()))
    return dialogue_from_messages(path, number, pairs, optional_text(row, "system"))


_HUATUO_PREFIX = re.compile(r"^\s*(问|答)\s*[：:]\s*")


def parse_huatuo_sft(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """HuatuoGPT-sft-data-v1: ``data``: ["问：…", "答：…", …], alternating from the patient."""
    data = required(path, number, row, "data")
    if not isinstance(data, list) or not all(isinstance(text, str) for text in data):
        raise DataError(f"{path}: row {number}: field 'data' must be a list of texts.")
    messages = []
    for position, text in enumerate(data):
        match = _HUATUO_PREFIX.match(text)
        role = match.group(1) if match else ("问" if position % 2 == 0 else "答")
        messages.append((role, text[match.end() :].strip() if match else text.strip()))
    return dialogue_from_messages(path, number, [(role, text) for role, text in messages if text])


def parse_huatuo_kgqa(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """huatuo_knowledge_graph_qa: ``questions`` (paraphrases) and ``answers`` lists; the first of each."""
    return Dialogue([(required_text(path, number, row, "questions"), required_text(path, number, row, "answers"))])


def parse_webmedqa(path: str, number: int, fields: list[str]) -> Dialogue:
    if len(fields) != 5:
        raise DataError(f"{path}: row {number}: expected 5 tab-separated fields, found {len(fields)}.")
    _id, label, _category, question, answer = (value.strip() for value in fields)
    if label != "1":
        raise Excluded("webMedQA candidate answer labelled 0 (not the accepted answer)")
    if not question or not answer:
        raise DataError(f"{path}: row {number}: field {'question' if not question else 'answer'!r} is empty.")
    return Dialogue([(question, answer)])


def _meddialog_speaker(line: str) -> tuple[str, str] | None:
    for speaker in ("病人", "医生"):
        for colon in ("：", ":"):
            if line.startswith(speaker + colon):
                return speaker, line[len(speaker) + 1 :].strip()
    return None


def parse_meddialog(path: str, number: int, block: list[str]) -> Dialogue:
    """MedDialog-CN: the patient's ``Description`` (疾病/病情描述/希望获得的帮助…) opens the dialogue when the
    first patient utterance is empty; utterances follow ``病人：`` / ``医生：`` markers (text on the same line or
    the lines after)."""
    try:
        dialogue_at = block.index("Dialogue")
    except ValueError:
        raise DataError(f"{path}: row {number}: block has no 'Dialogue' section.") from None
    description = []
    if "Description" in block:
        description = [line.strip() for line in block[block.index("Description") + 1 : dialogue_at] if line.strip()]
    messages: list[list[str]] = []
    for line in block[dialogue_at + 1 :]:
        marker = _meddialog_speaker(line.strip())
        if marker:
            messages.append([marker[0], marker[1]])
        elif line.strip() and messages:
            messages[-1][1] = f"{messages[-1][1]}\n{line.strip()}".strip()
    if messages and messages[0][0] == "病人" and not messages[0][1]:
        messages[0][1] = "\n".join(description)
    return dialogue_from_messages(path, number, [(role, text) for role, text in messages if text])


def parse_cmedqa2(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    source = row["answer_file"]
    if not row.get("question"):
        raise DataError(f"{source}: row {number}: field 'question_id' {row.get('question_id')!r} not in question.csv.")
    return Dialogue([(row["question"].strip(), required_text(source, number, row, "content"))])


def parse_toyhom(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """Chinese-medical-dialogue-data CSV: department, title, ask, answer (the ask is often the title extended;
    an ask of 无 falls back to the title)."""
    ask = optional_text(row, "ask")
    question = ask if ask and ask not in ("无", "无。") else required_text(path, number, row, "title")
    return Dialogue([(question, required_text(path, number, row, "answer"))])


def exam_dialogue(item: dict[str, Any]) -> Dialogue:
    """question + lettered options -> "正确答案：X. option text" and the explanation when there is one."""
    options = "\n".join(f"{letter}. {text}" for letter, text in item["options"].items())
    answer = "；".join(f"{letter}. {item['options'][letter]}" for letter in item["answer"])
    reply = f"正确答案：{answer}"
    if item.get("explanation"):
        reply += f"\n解析：{item['explanation']}"
    return Dialogue([(f"{item['question']}\n{options}", reply)])


def parse_cmexam(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    return exam_dialogue(cmexam_item(path, number, row, "cmexam"))


def parse_cmb(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    return exam_dialogue(cmb_item(path, number, row, "cmb"))


def parse_promptcblue(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """PromptCBLUE: a prompt ``input`` with its ``target`` (task_type etc. are metadata). The prompts end with an
    answer cue (``答：``) that the chat template's assistant turn replaces."""
    prompt = re.sub(r"\n?\s*答[：:]\s*$", "", required_text(path, number, row, "input"))
    return Dialogue([(prompt, required_text(path, number, row, "target"))])


_BELLE_TURN = re.compile(r"(Human|Assistant)\s*[:：]")


def parse_belle_multiturn(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """BELLE multiturn_chat_0.8M: ``instruction`` holds "Human: … Assistant: … Human: … Assistant:" and ``output``
    answers the last Human turn."""
    instruction = required_text(path, number, row, "instruction")
    parts = _BELLE_TURN.split(instruction)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{path}: row {number}: field 'instruction' must be 'Human: … Assistant: …' turns.")
    messages = [(parts[i].lower(), parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if messages[-1] != ("assistant", ""):
        raise DataError(f"{path}: row {number}: field 'instruction' must end with an open 'Assistant:' turn.")
    messages[-1] = ("assistant", required_text(path, number, row, "output"))
    if any(not text for _, text in messages):
        raise DataError(f"{path}: row {number}: field 'instruction' has an empty turn.")
    return dialogue_from_messages(path, number, messages)


def parse_baike2018qa(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """baike2018qa: title (+ desc) -> answer."""
    question = _question(row, required_text(path, number, row, "title"), "desc")
    return Dialogue([(question, required_text(path, number, row, "answer"))])


def parse_webtext2019zh(path: str, number: int, row: dict[str, Any]) -> Dialogue:
    """webtext2019zh: title (+ desc) -> content (a community answer)."""
    question = _question(row, required_text(path, number, row, "title"), "desc")
    return Dialogue([(question, required_text(path, number, row, "content"))])


def parse_wiki2019zh(path: str, number: int, row: dict[str, Any]) -> Text:
    """wiki2019zh: title and text."""
    text = required_text(path, number, row, "text")
    title = optional_text(row, "title")
    return Text(text if not title or text.startswith(title) else f"{title}\n{text}")


def parse_plain_text(path: str, number: int, row: dict[str, Any]) -> Text:
    return Text(required_text(row.get("file", path), number, row, "text"))


# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawFormat:
    schema: str
    parse: Callable[[str, int, Any], Sample]
    rows: Callable[[str], Iterable[tuple[int, Any]]] = read_rows  # .json, .jsonl or .csv rows
    text_only: bool = False


RAW_FORMATS: dict[str, RawFormat] = {
    "alpaca": RawFormat("instruction, input, output[, history, system]", parse_alpaca),
    "query_response": RawFormat("query, response", parse_query_response),
    "conversation": RawFormat("conversation[{role, content}] (or conversations[{from, value}])", parse_conversation),
    "huatuo_sft": RawFormat('data: ["问：…", "答：…", …]', parse_huatuo_sft),
    "huatuo_kgqa": RawFormat("questions[...], answers[...]", parse_huatuo_kgqa),
    "webmedqa": RawFormat("tab-separated id, label, category, question, answer", parse_webmedqa, webmedqa_rows),
    "meddialog_cn": RawFormat("id=N, Description, Dialogue (病人：/医生：) blocks", parse_meddialog, meddialog_rows),
    "cmedqa2": RawFormat("directory: question.csv, answer.csv", parse_cmedqa2, cmedqa2_rows),
    "toyhom_csv": RawFormat("department, title, ask, answer (CSV, GB18030 or UTF-8)", parse_toyhom),
    "cmexam": RawFormat('Question, Options ("A …\\nB …"), Answer, Explanation', parse_cmexam),
    "cmb_exam": RawFormat("question, option{A: …}, answer, explanation, question_type", parse_cmb),
    "promptcblue": RawFormat("input, target[, task_type, answer_choices]", parse_promptcblue),
    "belle_multiturn": RawFormat('instruction "Human: … Assistant:", output', parse_belle_multiturn),
    "baike2018qa": RawFormat("qid, category, title, desc, answer", parse_baike2018qa),
    "webtext2019zh": RawFormat("qid, title, desc, topic, content", parse_webtext2019zh),
    "wiki2019zh": RawFormat("id, url, title, text", parse_wiki2019zh, text_only=True),
    "plain_text": RawFormat(".txt files (paragraphs) or .jsonl with text", parse_plain_text, plain_text_rows, True),
}


def _dialogue_text(dialogue: Dialogue) -> str:
    return "\n".join(f"问：{question}\n答：{answer}" for question, answer in dialogue.turns)


def render(sample: Sample, form: str) -> dict[str, Any]:
    """One LLaMA-Factory row of ``form`` (pt, alpaca or sharegpt)."""
    if form == "pt":
        return {"text": sample.text if isinstance(sample, Text) else _dialogue_text(sample)}
    if isinstance(sample, Text):
        raise DataError(f"pre-training text has no {form} form.")
    if form == "alpaca":
        *history, (question, answer) = sample.turns
        row = {"instruction": question, "input": "", "output": answer, "history": [list(turn) for turn in history]}
    elif form == "sharegpt":
        messages = [
            {"from": side, "value": text}
            for turn in sample.turns
            for side, text in zip(("human", "gpt"), turn, strict=True)
        ]
        row = {"conversations": messages}
    else:
        raise ValueError(f"unknown form {form!r}; known: pt, alpaca, sharegpt.")
    return {**row, "system": sample.system}
