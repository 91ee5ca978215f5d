"""JSON-lines files: reading with errors that name the file and line, and resumable appending.

A resumable output is appended one complete line at a time and flushed to disk, keyed by a record field. After a
kill, re-opening it drops a torn last line (the only line a kill can leave incomplete), and the step skips every key
already present: nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; a line that is not a JSON object is a DataError."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg}).") from error
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}.")
            yield number, record


def read_records(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Records of a .jsonl file, or of a .json file holding a list of objects or JSON lines (rows from 1)."""
    if str(path).endswith(".json"):
        try:
            content = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            if error.msg == "Extra data":  # JSON lines saved as .json, as many corpora ship them
                return list(iter_jsonl(path))
            raise DataError(f"{path}: not valid JSON ({error}).") from error
        if not isinstance(content, list) or not all(isinstance(row, dict) for row in content):
            raise DataError(f"{path}: expected a JSON list of objects.")
        return list(enumerate(content, start=1))
    return list(iter_jsonl(path))


class ResumableJsonl:
    """Append-only JSONL output keyed by ``key``; see the module docstring for the kill-and-re-run contract."""

    def __init__(self, path: str | os.PathLike[str], key: str = "id") -> None:
        self.path, self.key = Path(path), key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a torn last line from a killed run
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{self.path}:{number}: not valid JSON ({error.msg}).") from error
                self.records[str(record[self.key])] = record

    def __contains__(self, key: object) -> bool:
        return str(key) in self.records

    def append(self, record: dict[str, Any]) -> None:
        key = str(record[self.key])
        if key in self.records:
            raise ValueError(f"{self.path}: {self.key}={key!r} is already written.")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[key] = record
