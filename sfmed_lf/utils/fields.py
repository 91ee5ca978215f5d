"""Field access on raw rows with errors that name the file, the row and the field."""

from __future__ import annotations

import csv
import os
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.jsonl import read_records

Row = tuple[int, dict[str, Any]]


def required(path: str, number: int, row: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``row`` (not None)."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise DataError(f"{path}: row {number}: missing field {' or '.join(repr(n) for n in names)}.")


def required_text(path: str, number: int, row: dict[str, Any], *names: str) -> str:
    """Non-empty stripped text; a one-element list (Huatuo-26M as Zhongjing ships it) gives its first element."""
    value = required(path, number, row, *names)
    if isinstance(value, list):
        value = value[0] if value else ""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: row {number}: field {names[0]!r} must be non-empty text.")
    return value.strip()


def optional_text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    return value.strip() if isinstance(value, str) else ""


def read_rows(path: str | os.PathLike[str]) -> list[Row]:
    """Rows of a .csv (UTF-8, or GB18030 as Chinese spreadsheets are often saved), .json or .jsonl file."""
    path = os.fspath(path)
    if not path.endswith(".csv"):
        return read_records(path)
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            with open(path, encoding=encoding, newline="") as handle:
                return list(enumerate(csv.DictReader(handle), start=2))  # row numbers are file lines; 1 is the header
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: neither UTF-8 nor GB18030 text.")
