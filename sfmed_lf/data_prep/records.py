"""The text a data-preparation step compares: the whole record, every turn included."""

from __future__ import annotations

from typing import Any

from sfmed_lf.errors import DataError


def record_text(path: str, number: int, row: dict[str, Any]) -> str:
    """alpaca (system, history, instruction, input, output), sharegpt (every turn) or pre-training ``text``."""
    if isinstance(row.get("text"), str):
        return row["text"]
    for key in ("conversations", "messages"):
        if isinstance(row.get(key), list):
            return "\n".join(str(turn.get("value", turn.get("content", ""))) for turn in row[key])
    if "instruction" in row or "output" in row:
        history = row.get("history") or []
        if not isinstance(history, list):
            raise DataError(f"{path}: row {number}: field 'history' must be a list of [question, answer] pairs.")
        parts = [row.get("system") or "", *(text for turn in history for text in turn)]
        parts += [row.get("instruction") or "", row.get("input") or "", row.get("output") or ""]
        return "\n".join(str(part) for part in parts if part)
    raise DataError(f"{path}: row {number}: no 'text', 'conversations', 'messages' or 'instruction'/'output' field.")
