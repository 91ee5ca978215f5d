"""Evaluation items: one normalised JSONL schema, and converters from the benchmarks' published schemas.

Dialogue item: ``{"id", "dataset", "kind": "dialogue", "question", "history": [[q, a], ...], "reference"}``.
Multiple-choice item: ``{"id", "dataset", "kind": "mcq", "question", "options": {"A": ...}, "answer": "AC",
"multi_answer": bool}`` (plus ``"explanation"`` where the source has one).

Converters (``sfmed eval convert FORMAT INPUT OUTPUT [--dataset NAME]``):

==========  ==========================================================================================
huatuo26m   Huatuo-26M test as Zhongjing ships it: instruction [list], output [list] (first element used)
cmtmedqa    CMtMedQA test: instruction, output, history [[q, a], ...]
webmedqa    webMedQA txt: tab-separated ``id, label, category, question, answer`` per the paper; label 1 rows
alpaca      instruction (+ input), output, optional history — any LLaMA-Factory alpaca file
cmexam      CMExam: Question, Options ("A text\\nB text"; literal "\\n" accepted), Answer ("AC"), Explanation
cmb         CMB-Exam: question, option {"A": ...}, answer, question_type (多项选择题 = multi-answer)
ceval       C-Eval / CMMLU CSV rows: question (or Question), A, B, C, D, answer (or Answer), explanation
==========  ==========================================================================================

A row missing a field, or with an answer letter that is not among its options, raises :class:`DataError` naming
the file, the row and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.fields import Row, optional_text, read_rows, required, required_text
from sfmed_lf.utils.jsonl import read_records


def _dialogue(dataset: str, item_id: str, question: str, reference: str, history: list) -> dict[str, Any]:
    return {
        "id": item_id,
        "dataset": dataset,
        "kind": "dialogue",
        "question": question,
        "history": history,
        "reference": reference,
    }


def _history(path: str, number: int, row: dict[str, Any]) -> list[list[str]]:
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
    ):
        raise DataError(f"{path}: row {number}: field 'history' must be a list of [question, answer] pairs.")
    return history


def convert_instruction_rows(path: str, rows: list[Row], dataset: str) -> Iterator[dict[str, Any]]:
    """huatuo26m, cmtmedqa and alpaca: the question is instruction (+ input), the reference is output."""
    for number, row in rows:
        question = required_text(path, number, row, "instruction")
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            question = f"{question}\n{extra.strip()}"
        reference = required_text(path, number, row, "output")
        item_id = str(row.get("id") or f"{dataset}-{number}")
        yield _dialogue(dataset, item_id, question, reference, _history(path, number, row))


def convert_webmedqa(path: str, dataset: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 5:
                raise DataError(f"{path}: row {number}: expected 5 tab-separated fields, found {len(fields)}.")
            item_id, label, _category, question, answer = fields
            if label.strip() == "1" and question.strip() and answer.strip():
                yield _dialogue(dataset, f"{dataset}-{item_id}", question.strip(), answer.strip(), [])


_OPTION_LINE = re.compile(r"^\s*([A-Z])[\s.、:：)）]+(.*)$")


def options_from_text(path: str, number: int, text: str) -> dict[str, str]:
    options = {}
    for line in text.replace("\\n", "\n").splitlines():
        if not line.strip():
            continue
        match = _OPTION_LINE.match(line)
        if not match:
            raise DataError(f"{path}: row {number}: field 'Options': cannot read option line {line!r}.")
        options[match.group(1)] = match.group(2).strip()
    return options


def _mcq(
    path: str,
    number: int,
    dataset: str,
    item_id: str,
    question: str,
    options: dict[str, str],
    answer: str,
    multi_answer: bool | None,
    explanation: str = "",
) -> dict[str, Any]:
    letters = "".join(sorted({c for c in answer.upper() if c.isalpha()}))
    if not options:
        raise DataError(f"{path}: row {number}: field 'options' is empty.")
    if not letters or any(letter not in options for letter in letters):
        raise DataError(f"{path}: row {number}: field 'answer' {answer!r} is not among the options {sorted(options)}.")
    return {
        "id": item_id,
        "dataset": dataset,
        "kind": "mcq",
        "question": question,
        "options": dict(sorted(options.items())),
        "answer": letters,
        "multi_answer": len(letters) > 1 if multi_answer is None else multi_answer,
        **({"explanation": explanation} if explanation else {}),
    }


def cmexam_item(path: str, number: int, row: dict[str, Any], dataset: str) -> dict[str, Any]:
    return _mcq(
        path,
        number,
        dataset,
        str(row.get("id") or f"{dataset}-{number}"),
        required_text(path, number, row, "Question"),
        options_from_text(path, number, required_text(path, number, row, "Options")),
        required_text(path, number, row, "Answer"),
        None,
        optional_text(row, "Explanation"),
    )


def cmb_item(path: str, number: int, row: dict[str, Any], dataset: str) -> dict[str, Any]:
    options = required(path, number, row, "option")
    if not isinstance(options, dict):
        raise DataError(f"{path}: row {number}: field 'option' must map letters to text.")
    options = {k.strip(): str(v).strip() for k, v in options.items() if str(v).strip()}
    return _mcq(
        path,
        number,
        dataset,
        f"{dataset}-{row.get('id', number)}",
        required_text(path, number, row, "question"),
        options,
        required_text(path, number, row, "answer"),
        str(row.get("question_type", "")).startswith("多项"),
        optional_text(row, "explanation"),
    )


def convert_ceval(path: str, rows: list[Row], dataset: str) -> Iterator[dict[str, Any]]:
    for number, row in rows:
        options = {letter: str(row[letter]).strip() for letter in "ABCDEF" if str(row.get(letter) or "").strip()}
        yield _mcq(
            path,
            number,
            dataset,
            f"{dataset}-{row.get('id') or number}",
            required_text(path, number, row, "question", "Question"),
            options,
            required_text(path, number, row, "answer", "Answer"),
            None,
            optional_text(row, "explanation"),
        )


CONVERTERS: dict[str, Callable[[str, str], Iterator[dict[str, Any]]]] = {
    "huatuo26m": lambda path, name: convert_instruction_rows(path, read_rows(path), name),
    "cmtmedqa": lambda path, name: convert_instruction_rows(path, read_rows(path), name),
    "alpaca": lambda path, name: convert_instruction_rows(path, read_rows(path), name),
    "webmedqa": convert_webmedqa,
    "cmexam": lambda path, name: (cmexam_item(path, n, row, name) for n, row in read_rows(path)),
    "cmb": lambda path, name: (cmb_item(path, n, row, name) for n, row in read_rows(path)),
    "ceval": lambda path, name: convert_ceval(path, read_rows(path), name),
}


def convert(format_name: str, input_path: str | os.PathLike[str], dataset: str | None = None) -> list[dict[str, Any]]:
    if format_name not in CONVERTERS:
        raise DataError(f"unknown evaluation format {format_name!r}; known: {', '.join(sorted(CONVERTERS))}.")
    path = os.fspath(input_path)
    items = list(CONVERTERS[format_name](path, dataset or Path(path).stem))
    seen: set[str] = set()
    for item in items:
        if item["id"] in seen:
            raise DataError(f"{path}: id {item['id']!r} occurs twice; ids key resumable outputs and must be unique.")
        seen.add(item["id"])
    return items


def load_items(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Normalised items (as ``convert`` writes them), checked field by field."""
    items = []
    for number, row in read_records(path):
        for name in ("id", "dataset", "kind", "question"):
            required(os.fspath(path), number, row, name)
        if row["kind"] not in ("dialogue", "mcq"):
            raise DataError(f"{path}: row {number}: field 'kind' must be 'dialogue' or 'mcq', not {row['kind']!r}.")
        required(os.fspath(path), number, row, *(("reference",) if row["kind"] == "dialogue" else ("options",)))
        if row["kind"] == "mcq":
            required(os.fspath(path), number, row, "answer")
        items.append(row)
    return items
