"""Provenance of resumable outputs: what a file's rows depend on, recorded beside it, by content. A resumed run
with other inputs (another model, other data, other settings) is refused instead of mixing rows of two runs into
one file; a project copied or moved elsewhere resumes its own outputs, because nothing recorded is a path or a
modification time.

Digests of large files (model weights) are remembered per (path, size, mtime) in a small cache under
``~/.cache/sfmed-lf`` (``SFMED_DIGEST_CACHE`` to move it), so a re-run does not hash 15 GB again; the cache only
saves time, the recorded value is always the content digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import atomic_write_text

# what decides a model's outputs besides its weights
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")
MODEL_WEIGHTS = ("*.safetensors", "*.bin")
_CACHE_LOCK = threading.Lock()


def _cache_path() -> Path:
    default = Path.home() / ".cache" / "sfmed-lf" / "digests.json"
    return Path(os.environ.get("SFMED_DIGEST_CACHE", default))


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content."""
    stat = os.stat(path)
    key = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _cache_path()
    large = stat.st_size >= 1 << 24
    if large:
        with _CACHE_LOCK:
            try:
                cached = json.loads(cache_file.read_text()).get(key)
            except (OSError, ValueError):
                cached = None
        if cached:
            return cached
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    result = digest.hexdigest()
    if large:
        with _CACHE_LOCK:
            try:
                known = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                known = {}
            known[key] = result
            with contextlib.suppress(OSError):  # an unwritable cache only costs time
                atomic_write_text(cache_file, json.dumps(known))
    return result


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Content digests of a local checkpoint's weights, config and tokenizer files (a hub id is kept as it is)."""
    directory = Path(path)
    if not directory.is_dir():
        return {"hub_id": os.fspath(path)}
    files = sorted({p for pattern in MODEL_WEIGHTS for p in directory.glob(pattern)})
    files += [directory / name for name in MODEL_FILES if (directory / name).is_file()]
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise DataError(f"{path}: no model weights (*.safetensors or *.bin).")
    return {"files": {p.name: file_digest(p) for p in files}}


def check_provenance(output: str | os.PathLike[str], current: dict[str, Any]) -> None:
    """Record ``current`` beside ``output`` on first use; later, refuse to resume when it differs."""
    record = Path(f"{os.fspath(output)}.provenance.json")
    current = json.loads(json.dumps(current, ensure_ascii=False))  # compared as it is stored (tuples -> lists)
    if not record.exists():
        atomic_write_text(record, json.dumps(current, indent=2, ensure_ascii=False) + "\n")
        return
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{record}: unreadable provenance ({error}); delete it and {output} to start over.") from None
    if recorded != current:
        changed = sorted(key for key in current.keys() | recorded.keys() if current.get(key) != recorded.get(key))
        raise DataError(
            f"{output} holds results of another model or setting (changed: {', '.join(changed)}); "
            "use a new output_dir or delete the file to start over."
        )
