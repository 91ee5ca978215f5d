"""Datasets by their dataset_info.json name, as LLaMA-Factory finds them: ``dataset_dir``/dataset_info.json holds
the entry, ``file_name`` is relative to ``dataset_dir`` (a file, or a directory of files). Every error names the
dataset_info.json, the dataset and the option that pointed there."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.lf_rows import DatasetEntry, LFRow, infer_entry
from sfmed_lf.formats.reading import Location, Problems, read_rows
from sfmed_lf.utils.io import atomic_write_text, note_input

DATASET_INFO = "dataset_info.json"
READABLE_SUFFIXES = (".json", ".jsonl", ".csv")


def load_dataset_info(dataset_dir: str | os.PathLike[str], option: str = "dataset_dir") -> tuple[Path, dict[str, Any]]:
    path = Path(dataset_dir) / DATASET_INFO
    note_input(path)
    if not path.is_file():
        raise DataError(f"{option}: {path} does not exist.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{option}: {path}: cannot read ({error}).") from error
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from error
    if not isinstance(info, dict):
        raise DataError(f"{path}: must map dataset names to entries.")
    return path, info


@dataclass(frozen=True)
class LocalDataset:
    """A dataset_info entry whose data are local files."""

    entry: DatasetEntry | None  # None: files read without a dataset_info.json entry, each row's form inferred
    info_path: Path | None
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.entry.name if self.entry else self.files[0].name

    def rows(self, problems: Problems | None = None) -> Iterator[tuple[Location, dict[str, Any]]]:
        for path in self.files:
            yield from read_rows(path, problems)

    def records(self, problems: Problems | None = None) -> Iterator[tuple[Location, dict[str, Any], LFRow]]:
        """(location, raw row, what LLaMA-Factory reads from it); bad rows raise or are counted by ``problems``."""
        problems = problems if problems is not None else Problems()
        for location, row in self.rows(problems):
            try:
                entry = self.entry or infer_entry(self.name, location, row)
                yield location, row, entry.read(location, row)
            except DataError as error:
                problems.handle(error, location)


def local_dataset(dataset_dir: str | os.PathLike[str], name: str, option: str = "datasets") -> LocalDataset:
    """The entry ``name`` of ``dataset_dir``/dataset_info.json and its files."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{option}: {name!r} is not a dataset name.")
    info_path, info = load_dataset_info(dataset_dir)
    if name not in info:
        close = [known for known in info if name in known or known in name][:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        if name.endswith((*READABLE_SUFFIXES, ".txt")) or "/" in name:
            hint += "; datasets are dataset_info.json names (with dataset_dir), not file paths: register the file"
        raise DataError(f"{option}: no dataset {name!r} in {info_path}{hint}.")
    entry = DatasetEntry.parse(name, info[name], str(info_path))
    if entry.file_name is None:
        raise DataError(
            f"{option}: {info_path}: {name} is not a local file (hub or script entry); download it and register "
            "its file_name."
        )
    root = Path(dataset_dir) / entry.file_name
    if root.is_dir():
        files = tuple(sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in READABLE_SUFFIXES))
        if not files:
            raise DataError(f"{option}: {info_path}: {name}: {root} holds no {', '.join(READABLE_SUFFIXES)} files.")
    elif root.is_file():
        files = (root,)
    else:
        raise DataError(f"{option}: {info_path}: {name}: {root} does not exist.")
    unreadable = [str(p) for p in files if p.suffix not in READABLE_SUFFIXES]
    if unreadable:
        raise DataError(f"{option}: {info_path}: {name}: cannot read {unreadable[0]} (use .json, .jsonl or .csv).")
    return LocalDataset(entry, info_path, files)


def dataset_from_file(path: str | os.PathLike[str]) -> LocalDataset:
    """A data file without a dataset_info.json entry: each row is read in the form its shape shows
    (:func:`sfmed_lf.formats.lf_rows.infer_entry`)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file.")
    return LocalDataset(None, None, (Path(path),))


def register(info_path: str | os.PathLike[str], name: str, entry: dict[str, Any]) -> None:
    """Add (or replace) ``name`` in a dataset_info.json, keeping its other entries (written atomically)."""
    path = Path(info_path)
    info: dict[str, Any] = {}
    if path.exists():
        _, info = load_dataset_info(path.parent, option=str(path))
    info[name] = entry
    atomic_write_text(path, json.dumps(info, ensure_ascii=False, indent=2) + "\n", updates_input=True)
