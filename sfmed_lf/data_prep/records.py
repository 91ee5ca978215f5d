"""The text a data-preparation step compares: the whole record, every turn and every answer included."""

from __future__ import annotations

from typing import Any

from sfmed_lf.errors import DataError


def _turn_text(path: str, number: int, key: str, turn: Any) -> str:
    if isinstance(turn, dict):
        value = turn.get("value", turn.get("content", ""))
        return value if isinstance(value, str) else str(value)
    if isinstance(turn, str):
        return turn
    raise DataError(f"{path}: row {number}: field '{key}' must hold messages (objects with 'value' or 'content').")


def record_text(path: str, number: int, row: dict[str, Any]) -> str:
    """pre-training ``text``; alpaca (system, history, instruction, input, output; ranking rows: chosen and
    rejected); sharegpt/openai (system, every turn; ranking rows: chosen and rejected messages)."""
    if isinstance(row.get("text"), str):
        return row["text"]
    parts: list[str] = []
    for key in ("conversations", "messages"):
        if key in row:
            if not isinstance(row[key], list):
                raise DataError(f"{path}: row {number}: field '{key}' must be a list of messages.")
            parts = [row.get("system") or "", *(_turn_text(path, number, key, turn) for turn in row[key])]
            break
    else:
        if not any(key in row for key in ("instruction", "output", "chosen")):
            raise DataError(
                f"{path}: row {number}: no 'text', 'conversations', 'messages' or 'instruction'/'output' field."
            )
        history = row.get("history") or []
        if not isinstance(history, list) or not all(isinstance(turn, list | tuple) for turn in history):
            raise DataError(f"{path}: row {number}: field 'history' must be a list of [question, answer] pairs.")
        parts = [row.get("system") or "", *(str(text) for turn in history for text in turn)]
        parts += [row.get("instruction") or "", row.get("input") or "", row.get("output") or ""]
    for key in ("chosen", "rejected"):  # ranking rows: both answers are part of what makes the row
        if key in row:
            answer = row[key]
            parts += (
                [_turn_text(path, number, key, turn) for turn in answer]
                if isinstance(answer, list)
                else [_turn_text(path, number, key, answer)]
            )
    return "\n".join(str(part) for part in parts if part)
