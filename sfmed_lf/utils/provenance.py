"""Provenance of resumable outputs: what a file's rows depend on, recorded beside it. A resumed run with other
inputs (another model, other settings) is refused instead of mixing rows of two runs into one file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import atomic_write_text


def model_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Resolved path plus size and mtime of each weight file: changes when the checkpoint is retrained."""
    weights = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
    return {
        "path": str(Path(path).resolve()),
        "weights": {w.name: [w.stat().st_size, w.stat().st_mtime_ns] for w in weights},
    }


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's content (inputs whose content, not only their name, the output depends on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_provenance(output: str | os.PathLike[str], current: dict[str, Any]) -> None:
    """Record ``current`` beside ``output`` on first use; later, refuse to resume when it differs."""
    record = Path(f"{os.fspath(output)}.provenance.json")
    if not record.exists():
        atomic_write_text(record, json.dumps(current, indent=2, ensure_ascii=False) + "\n")
        return
    recorded = json.loads(record.read_text(encoding="utf-8"))
    if recorded != current:
        changed = sorted(key for key in current.keys() | recorded.keys() if current.get(key) != recorded.get(key))
        raise DataError(
            f"{output} holds results of another model or setting (changed: {', '.join(changed)}); "
            "use a new output_dir or delete the file to start over."
        )
