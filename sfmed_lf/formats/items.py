"""Evaluation items: one JSONL schema for the questions a model is evaluated on.

Dialogue item: ``{"id", "dataset", "kind": "dialogue", "question", "history": [[q, a], ...], "system",
"reference"}``. Multiple-choice item: ``{"id", "dataset", "kind": "mcq", "question", "options": {"A": ...},
"answer": "AC", "multi_answer": bool, "explanation"}``. Both may carry ``"metadata"`` (source fields that are not
dialogue text). Items are built from raw rows by :func:`item_from_sample` (``sfmed eval convert``) and read back,
field by field, by :func:`load_items`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats import fields
from sfmed_lf.formats.conversation import Conversation, Prompt, Text
from sfmed_lf.formats.exam import ExamQuestion, exam_question
from sfmed_lf.formats.reading import Location, read_rows

KINDS = ("dialogue", "mcq")


@dataclass(frozen=True)
class EvalItem:
    id: str
    dataset: str
    prompt: Prompt  # for an mcq item: the question alone (options are shown by the evaluation's MCQ prompt)
    reference: str = ""  # dialogue items
    exam: ExamQuestion | None = None  # mcq items
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "mcq" if self.exam is not None else "dialogue"

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "dataset": self.dataset,
            "kind": self.kind,
            "question": self.prompt.question,
        }
        if self.exam is None:
            row |= {"history": [list(turn) for turn in self.prompt.history], "system": self.prompt.system}
            row["reference"] = self.reference
        else:
            row |= {"options": dict(self.exam.options), "answer": self.exam.answer}
            row["multi_answer"] = self.exam.multi_answer
            if self.exam.explanation:
                row["explanation"] = self.exam.explanation
        if self.metadata:
            row["metadata"] = dict(self.metadata)
        return row


def item_from_sample(sample: Conversation | ExamQuestion | Text, item_id: str, dataset: str) -> EvalItem:
    """A dialogue item (the last answer is the reference) or a multiple-choice item."""
    if isinstance(sample, ExamQuestion):
        return EvalItem(item_id, dataset, Prompt(sample.question), exam=sample, metadata=sample.metadata)
    if isinstance(sample, Conversation):
        return EvalItem(item_id, dataset, sample.prompt(), reference=sample.answer, metadata=sample.metadata)
    raise DataError("pre-training text has no evaluation form (neither a question with a reference nor an exam).")


def item_from_row(location: Location, row: dict[str, Any]) -> EvalItem:
    item_id = fields.text(location, row, "id")
    dataset = fields.text(location, row, "dataset")
    kind = fields.text(location, row, "kind")
    if kind not in KINDS:
        raise location.error(f"must be 'dialogue' or 'mcq', not {kind!r}.", "kind")
    question = fields.text(location, row, "question")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise location.error("must map names to texts.", "metadata")
    if kind == "mcq":
        _, options = fields.value(location, row, "options")
        if not isinstance(options, dict):
            raise location.error("must map option letters to text.", "options")
        multi = row.get("multi_answer")
        if multi is not None and not isinstance(multi, bool):
            raise location.error("must be true or false.", "multi_answer")
        exam = exam_question(
            location,
            question,
            options,
            fields.value(location, row, "answer")[1],
            multi,
            fields.optional_text(location, row, "explanation"),
        )
        return EvalItem(item_id, dataset, Prompt(question), exam=exam, metadata=metadata)
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) and t.strip() for t in turn)
        for turn in history
    ):
        raise location.error("must be a list of [question, answer] pairs of non-empty texts.", "history")
    system = fields.optional_text(location, row, "system")
    prompt = Prompt(question, tuple((q, a) for q, a in history), system)
    return EvalItem(item_id, dataset, prompt, reference=fields.text(location, row, "reference"), metadata=metadata)


def load_items(path: str | os.PathLike[str]) -> list[EvalItem]:
    """Items as ``sfmed eval convert`` writes them, checked field by field; ids are unique within the file."""
    items, seen = [], {}
    for location, row in read_rows(path):
        item = item_from_row(location, row)
        if item.id in seen:
            raise location.error(f"{item.id!r} is also the id of line {seen[item.id]}; ids must be unique.", "id")
        seen[item.id] = location.line
        items.append(item)
    if not items:
        raise DataError(f"{path}: no evaluation items.")
    return items
