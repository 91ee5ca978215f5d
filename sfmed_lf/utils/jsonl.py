"""Resumable JSON-lines outputs.

A resumable output is appended one complete line at a time and flushed to disk, keyed by a record field. After a
kill, re-opening it drops a torn last line (the only line a kill can leave incomplete), and the step skips every key
already present: nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError


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
        for number, raw in enumerate(complete.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"{self.path}:{number}: not a line this step wrote ({error}).") from error
            if not isinstance(record, dict) or self.key not in record:
                raise DataError(f"{self.path}:{number}: not a line this step wrote (no {self.key!r}).")
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
