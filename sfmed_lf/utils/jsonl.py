"""Resumable JSON-lines outputs, and the fields of the rows one step writes and a later step reads.

A resumable output is appended one complete line at a time and flushed to disk, keyed by a record field. After a
kill, the step that writes it re-opens it, drops a torn last line (the only line a kill can leave incomplete) before
its first append, and skips every key already present: nothing is lost and nothing is written twice. A later step
that only reads it (``read_only``) never changes it: a torn last line there is an error asking for the writer to be
run again.

The rows of such an intermediate file (responses, verdicts, scores, audit results, answers) are checked field by field
where they are read (:func:`check_fields`, with the types a config option is checked against): a missing field or a
value of another type is an error naming the file, the line, the field and what was expected, never a traceback
further on and never a conversion.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sfmed_lf.config_files import field_type_name, type_problem
from sfmed_lf.errors import DataError

# field name -> its type: ``str``, ``float``, ``list[str]``, ``Literal["A", "B"] | None`` (present, maybe null),
# ``NotRequired[X]`` (may be absent)
Fields = Mapping[str, Any]


def check_fields(where: str, row: dict[str, Any], fields: Fields, written_by: str = "") -> dict[str, Any]:
    """``row`` (read at ``where``, ``FILE:LINE``) when each of ``fields`` is present (unless ``NotRequired``) with a
    value of its type. Otherwise a :class:`DataError` naming the file, the line, the field, what it holds and what was
    expected (and ``written_by``, the step that writes the file). Other fields are not looked at."""
    hint = f"; `{written_by}` writes it" if written_by else ""
    for name, annotation in fields.items():
        required = typing.get_origin(annotation) is not typing.NotRequired
        annotation = annotation if required else typing.get_args(annotation)[0]
        expected = field_type_name(annotation)
        if name not in row:
            if not required:
                continue
            raise DataError(f"{where}: field {name!r}: missing (expected {expected}){hint}.")
        problem = type_problem(row[name], annotation)
        if problem:
            raise DataError(f"{where}: field {name!r}: {problem} (expected {expected}){hint}.")
    return row


class ResumableJsonl:
    """Append-only JSONL output keyed by ``key``; see the module docstring for the kill-and-re-run contract. With
    ``fields``, every line read back is checked (:func:`check_fields`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: str = "id",
        fields: Fields | None = None,
        written_by: str = "",
        read_only: bool = False,
    ) -> None:
        self.path, self.key = Path(path), key
        self.fields, self.written_by, self.read_only = fields or {}, written_by, read_only
        self.records: dict[str, dict[str, Any]] = {}
        self._complete_bytes: int | None = None  # set when a torn last line waits to be dropped by the first append
        if self.path.exists():
            self._load()
        elif not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a torn last line from a killed run
            if self.read_only:
                by = f"`{self.written_by}`" if self.written_by else "the step that writes it"
                line = complete.count(b"\n") + 1
                raise DataError(
                    f"{self.path}:{line}: incomplete last line (a killed run); run {by} again to complete the file."
                )
            self._complete_bytes = len(complete)
        for number, raw in enumerate(complete.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"{self.path}:{number}: not a line this step wrote ({error}).") from error
            if not isinstance(record, dict) or self.key not in record:
                raise DataError(f"{self.path}:{number}: not a line this step wrote (no {self.key!r}).")
            key = str(record[self.key])
            if key in self.records:  # never appended twice: a second line would silently replace the first
                raise DataError(f"{self.path}:{number}: field {self.key!r}: {key!r} is on an earlier line too.")
            self.records[key] = check_fields(f"{self.path}:{number}", record, self.fields, self.written_by)

    def __contains__(self, key: object) -> bool:
        return str(key) in self.records

    def append(self, record: dict[str, Any]) -> None:
        if self.read_only:
            raise ValueError(f"{self.path}: opened read-only.")
        key = str(record[self.key])
        if key in self.records:
            raise ValueError(f"{self.path}: {self.key}={key!r} is already written.")
        if self._complete_bytes is not None:  # drop the torn line so the new one starts on a line of its own
            with open(self.path, "r+b") as handle:
                handle.truncate(self._complete_bytes)
            self._complete_bytes = None
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[key] = record
