"""Multiple-choice exam questions (CMExam, CMB, C-Eval/CMMLU): question, lettered options, gold letters.

A question is checked when it is built: option letters are single capitals and unique (a repeated letter would
silently overwrite an option), option texts are non-empty text, and every gold letter is among the options.
As an SFT dialogue a question becomes question + options -> "正确答案：X. option text" and its explanation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sfmed_lf.formats.conversation import Conversation
from sfmed_lf.formats.reading import Location

_OPTION_LINE = re.compile(r"^\s*([A-Z])(?:[\s.、:：)）]+|$)(.*)$")


@dataclass(frozen=True)
class ExamQuestion:
    question: str
    options: Mapping[str, str]  # letter -> text, sorted by letter
    answer: str  # sorted gold letters, e.g. "AC"
    multi_answer: bool
    explanation: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def conversation(self) -> Conversation:
        options = "\n".join(f"{letter}. {text}" for letter, text in self.options.items())
        answer = "；".join(f"{letter}. {self.options[letter]}" for letter in self.answer)
        reply = f"正确答案：{answer}" + (f"\n解析：{self.explanation}" if self.explanation else "")
        return Conversation("", ((f"{self.question}\n{options}", reply),), dict(self.metadata))


def exam_question(
    location: Location,
    question: str,
    options: Mapping[str, Any],
    answer: Any,
    multi_answer: bool | None = None,
    explanation: str = "",
    metadata: Mapping[str, str] | None = None,
    options_field: str = "options",
    answer_field: str = "answer",
) -> ExamQuestion:
    checked: dict[str, str] = {}
    for letter, text in options.items():
        if not isinstance(letter, str) or not re.fullmatch(r"[A-Z]", letter.strip()):
            raise location.error(f"option letter {letter!r} is not one capital letter.", options_field)
        if not isinstance(text, str):
            raise location.error(f"option {letter} must be text, got {type(text).__name__}.", options_field)
        if text.strip():
            checked[letter.strip()] = text.strip()
    if not checked:
        raise location.error("no option with text.", options_field)
    if not isinstance(answer, str):
        raise location.error(f"must be option letters as text, got {type(answer).__name__}.", answer_field)
    letters = re.sub(r"[\s,，、;；/]+", "", answer.upper())
    if not letters or not letters.isalpha() or not letters.isascii():
        raise location.error(f"{answer!r} is not option letters.", answer_field)
    if len(set(letters)) != len(letters):
        raise location.error(f"{answer!r} repeats a letter.", answer_field)
    unknown = [letter for letter in letters if letter not in checked]
    if unknown:
        raise location.error(f"{answer!r} is not among the options {sorted(checked)}.", answer_field)
    gold = "".join(sorted(letters))
    return ExamQuestion(
        question=question,
        options=dict(sorted(checked.items())),
        answer=gold,
        multi_answer=len(gold) > 1 if multi_answer is None else multi_answer,
        explanation=explanation,
        metadata=dict(metadata or {}),
    )


def options_from_text(location: Location, text: str, field_name: str = "Options") -> dict[str, str]:
    """ "A 原发病\\nB 出血部位" (a literal backslash-n as in CMExam's files is accepted): one option per line; a
    letter given twice is an error, never an overwrite."""
    options: dict[str, str] = {}
    for line in text.replace("\\n", "\n").splitlines():
        if not line.strip():
            continue
        match = _OPTION_LINE.match(line)
        if not match:
            raise location.error(f"cannot read option line {line.strip()!r}.", field_name)
        letter = match.group(1)
        if letter in options:
            raise location.error(f"option {letter} is given twice.", field_name)
        options[letter] = match.group(2).strip()
    return options
