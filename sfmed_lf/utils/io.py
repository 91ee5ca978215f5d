"""Atomic file output: a reader sees the old file or the complete new one, never a partial write. And an output
never replaces an input: inside :func:`inputs_protected` (every ``sfmed`` step runs in one), every file a reader of
:mod:`sfmed_lf.formats.reading` opened is refused as an output."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

import numpy as np

from sfmed_lf.errors import DataError

_READ_INPUTS: ContextVar[dict[Path, str] | None] = ContextVar("sfmed_read_inputs", default=None)


@contextmanager
def inputs_protected() -> Iterator[None]:
    """Within the block, a file noted by :func:`note_input` cannot be replaced by :func:`atomic_open`."""
    token = _READ_INPUTS.set({})
    try:
        yield
    finally:
        _READ_INPUTS.reset(token)


def note_input(path: str | os.PathLike[str]) -> None:
    inputs = _READ_INPUTS.get()
    if inputs is not None:
        inputs[Path(path).resolve()] = os.fspath(path)


def refuse_to_overwrite(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], option: str = "output_dir"
) -> None:
    """Fail before any work when ``output`` is one of ``inputs`` (the option that set it is named)."""
    target = Path(output).resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise DataError(f"{option}: writing {output} would overwrite the input {source}; choose another {option}.")


def require_file(path: str | os.PathLike[str] | None, option: str) -> Path:
    """``path`` as a Path, or an error naming the option that pointed there."""
    if path is None or not Path(path).exists():
        raise DataError(f"{option}: {path} does not exist.")
    if Path(path).is_dir():
        raise DataError(f"{option}: {path} is a directory, not a file.")
    return Path(path)


def _check_not_an_input(path: Path) -> None:
    inputs = _READ_INPUTS.get()
    if inputs and (source := inputs.get(path.resolve())) is not None:
        raise DataError(f"refusing to write {path}: it is an input of this step ({source}); choose another output.")


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8", updates_input: bool = False
) -> Iterator[IO]:
    """A file handle whose content replaces ``path`` only when the block completes (streamed, for large outputs).
    ``updates_input``: the file is a registry read and rewritten with its content kept (a dataset_info.json)."""
    path = Path(path)
    if not updates_input:
        _check_not_an_input(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, updates_input: bool = False) -> None:
    with atomic_open(path, "wb", updates_input=updates_input) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, updates_input: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), updates_input)


def atomic_write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | os.PathLike[str], written_by: str = "") -> Any:
    """A JSON file an earlier step wrote (a report, a status, a database's metadata). A missing, undecodable or
    invalid file is a :class:`DataError` naming it (JSON errors carry line and column) and the step that writes it."""
    path = Path(path)
    hint = f"; `{written_by}` writes it" if written_by else ""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"{path}: missing{hint}.") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON file ({error}){hint}.") from error
