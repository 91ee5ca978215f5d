"""Reading data files row by row, each row with the file line it starts on, and every problem reported as a
:class:`DataError` naming the file, the line and (where there is one) the field — or counted by :class:`Problems`
when the caller skips invalid rows.

- ``.jsonl``: one JSON object per line; blank lines are ignored.
- ``.json``: a list of objects (each row's line is where the object starts), or JSON lines saved as ``.json``.
- ``.csv``: a header line, then rows; a row's line is the file line it starts on (quoted cells may span lines).
  UTF-8 (with or without BOM) or GB18030, as Chinese spreadsheets are often saved: the encoding is decided by the
  first line with non-ASCII bytes, so one bad byte in a UTF-8 file is an error at its line, never a reason to read
  the whole file as GB18030.
- text files: lines decoded one at a time (:func:`read_text_lines`).

Invalid UTF-8 is an error at its line (or a skipped row); it is never replaced or guessed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import note_input

MAX_EXAMPLES = 20


@dataclass(frozen=True)
class Location:
    """Where a row comes from: its file, the line it starts on, and its position among the file's rows (from 1;
    several rows of a JSON list can share a line, so ``row`` is what identifies a row, ``line`` what locates it)."""

    path: str
    line: int
    row: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"

    def error(self, problem: str, field: str | None = None, code: str = "invalid") -> DataError:
        where = f"{self}: field {field!r}" if field else str(self)
        return DataError(f"{where}: {problem}", code)


@dataclass
class Problems:
    """Invalid rows: raised at once, or with ``skip_invalid`` counted by reason with the first examples."""

    skip_invalid: bool = False
    reasons: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)  # DataError.code -> count
    examples: list[str] = field(default_factory=list)
    coded_examples: list[tuple[str, str]] = field(default_factory=list)

    def handle(self, error: DataError, location: Location | None = None) -> None:
        if not self.skip_invalid:
            raise error
        message = str(error)
        self.codes[error.code] += 1
        prefix = f"{location}: " if location else ""
        self.reasons[message.removeprefix(prefix) if prefix else _without_location(message)] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)
            self.coded_examples.append((error.code, message))

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def report(self) -> dict[str, Any]:
        return {
            "skipped_invalid": self.skipped,
            "skip_reasons": dict(self.reasons.most_common()),
            "skip_examples": list(self.examples),
        }


def _without_location(message: str) -> str:
    head, sep, rest = message.partition(": ")
    if sep and ":" in head and head.rsplit(":", 1)[1].isdigit():
        return rest
    return message


def _strict(problems: Problems | None) -> Problems:
    return problems if problems is not None else Problems()


def _open_binary(path: str) -> bytes:
    note_input(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file.") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error}).") from error


def _undecodable(location: Location, error: UnicodeDecodeError) -> DataError:
    byte = error.object[error.start]
    return location.error(f"invalid UTF-8 (byte 0x{byte:02x} at column {error.start + 1}).", code="invalid_utf8")


def read_text_lines(path: str | os.PathLike[str], problems: Problems | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) of a UTF-8 text file; an undecodable line is an error or, when
    skipping, left out and counted."""
    path = os.fspath(path)
    problems = _strict(problems)
    data = _open_binary(path)
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            problems.handle(_undecodable(Location(path, number), error), Location(path, number))
            continue
        yield number, text


def read_rows(path: str | os.PathLike[str], problems: Problems | None = None) -> list[tuple[Location, Any]]:
    """(location, row) of a ``.jsonl``, ``.json`` or ``.csv`` file. Rows are JSON objects (CSV rows: dicts of
    header -> cell); a row that is not is an error, or counted and left out when ``problems`` skips."""
    path = os.fspath(path)
    problems = _strict(problems)
    if path.endswith(".csv"):
        return list(_csv_rows(path, problems))
    data = _open_binary(path)
    if path.endswith(".json") and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return list(_json_array_rows(path, data, problems))
    return list(_jsonl_rows(path, data, problems))


def _jsonl_rows(path: str, data: bytes, problems: Problems) -> Iterator[tuple[Location, Any]]:
    index = 0
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        index += 1
        location = Location(path, number, index)
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            problems.handle(_undecodable(location, error), location)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problems.handle(
                location.error(f"not valid JSON ({error.msg} at column {error.colno}).", code="invalid_json"), location
            )
            continue
        if not isinstance(row, dict):
            problems.handle(
                location.error(f"expected a JSON object, got {_kind(row)}.", code="not_an_object"), location
            )
            continue
        yield location, row


def _json_array_rows(path: str, data: bytes, problems: Problems) -> Iterator[tuple[Location, Any]]:
    """Elements of a JSON list one by one, so each gets its starting line; undecodable bytes are located first."""
    text = data.decode("utf-8-sig", errors="surrogateescape")
    bad_lines = _lines_with_surrogates(text)
    decoder = json.JSONDecoder()
    position = _skip_space(text, text.index("[") + 1)
    if position < len(text) and text[position] == "]":
        return
    index = 0
    while True:
        index += 1
        line = text.count("\n", 0, position) + 1
        location = Location(path, line, index)
        try:
            row, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno}); a JSON list cannot be "
                "read past this point."
            ) from None
        end_line = text.count("\n", 0, end) + 1
        undecodable = [n for n in range(line, end_line + 1) if n in bad_lines]
        if undecodable:
            problems.handle(Location(path, undecodable[0]).error("invalid UTF-8.", code="invalid_utf8"), location)
        elif not isinstance(row, dict):
            problems.handle(
                location.error(f"expected a JSON object, got {_kind(row)}.", code="not_an_object"), location
            )
        else:
            yield location, row
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
            continue
        if position < len(text) and text[position] == "]":
            if _skip_space(text, position + 1) != len(text):
                raise DataError(f"{path}:{text.count(chr(10), 0, position) + 1}: text after the end of the list.")
            return
        raise DataError(f"{path}:{text.count(chr(10), 0, position) + 1}: not valid JSON (expected ',' or ']').")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _lines_with_surrogates(text: str) -> set[int]:
    return {number for number, line in enumerate(text.split("\n"), start=1) if _has_surrogates(line)}


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= character <= "\udcff" for character in text)


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _csv_encoding(path: str, data: bytes) -> str:
    """utf-8 or gb18030, from the first line that is not plain ASCII (see the module docstring)."""
    for number, raw in enumerate(data.splitlines(), start=1):
        if raw.isascii():
            continue
        try:
            raw.decode("utf-8-sig" if number == 1 else "utf-8")
            return "utf-8"
        except UnicodeDecodeError:
            pass
        try:
            data.decode("gb18030")
            return "gb18030"
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise DataError(f"{path}:{line}: neither UTF-8 nor GB18030 text.") from None
    return "utf-8"


def _csv_rows(path: str, problems: Problems) -> Iterator[tuple[Location, dict[str, Any]]]:
    data = _open_binary(path)
    encoding = _csv_encoding(path, data)
    text = data.decode("utf-8-sig" if encoding == "utf-8" else encoding, errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        raise DataError(f"{path}:1: not a CSV header ({error}).") from None
    location = Location(path, 1)
    if any(_has_surrogates(name) for name in header):
        raise location.error("invalid UTF-8 in the header line.")
    if len(set(header)) != len(header):
        duplicates = sorted({name for name in header if header.count(name) > 1})
        raise location.error(f"repeated column name(s) {duplicates} in the header line.")
    previous_end = reader.line_num
    index = 0
    while True:
        start = previous_end + 1
        location = Location(path, start, index + 1)
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise location.error(f"not valid CSV ({error}).") from None
        previous_end = reader.line_num
        if not cells or not any(cell.strip() for cell in cells):
            continue
        index += 1
        if any(_has_surrogates(cell) for cell in cells):
            problems.handle(location.error("invalid UTF-8.", code="invalid_utf8"), location)
            continue
        if len(cells) != len(header):
            problem = f"{len(cells)} cells for {len(header)} columns ({', '.join(header)})."
            problems.handle(location.error(problem), location)
            continue
        yield location, dict(zip(header, cells, strict=True))
