"""Which model a high-risk database belongs to: a digest of the model's files by content.

The database holds the served model's own hidden states and the thresholds calibrated on its answers, so a
database built for another checkpoint (the DPO model's database behind the SFT model, or a model retrained in
place) would compare embeddings of two different spaces. The fingerprint hashes the weights, the config and the
tokenizer files (SHA-256 of each, as the resumable outputs' provenance does), so a copy of the same model elsewhere
matches and a retrained one does not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.provenance import model_fingerprint


def model_directory(name_or_path: str | os.PathLike[str]) -> Path:
    """A local model directory, or the hub cache's snapshot of a hub id (no download)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception as error:  # any failure means: no local files to fingerprint
        raise DataError(
            f"{name_or_path}: no local model files to fingerprint ({error}); use a local path or a cached hub id."
        ) from error


def model_content_fingerprint(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """{"path": where it was read (for messages), "files": {name: sha256} of the weights, config and tokenizer
    (utils.provenance.model_fingerprint), "digest": sha256 over them}."""
    directory = model_directory(name_or_path)
    files = model_fingerprint(directory)["files"]
    digest = hashlib.sha256("".join(f"{name}\0{files[name]}\n" for name in sorted(files)).encode()).hexdigest()
    return {"path": str(directory.resolve()), "files": files, "digest": digest}


def served_fingerprint(model_name_or_path: str, adapters: list[str] | str | None = None) -> dict[str, Any]:
    """The fingerprint of what a chat engine serves: the model, and its adapters in order when there are any."""
    fingerprint = model_content_fingerprint(model_name_or_path)
    if isinstance(adapters, str):
        adapters = [part for part in adapters.split(",") if part]
    if adapters:
        parts = [model_content_fingerprint(adapter) for adapter in adapters]
        fingerprint = {
            "path": " + ".join([fingerprint["path"], *(part["path"] for part in parts)]),
            "files": fingerprint["files"],
            "adapters": [part["files"] for part in parts],
            "digest": hashlib.sha256(
                "".join([fingerprint["digest"], *(part["digest"] for part in parts)]).encode()
            ).hexdigest(),
        }
    return fingerprint


def check_same_model(database: str | os.PathLike[str], built_for: dict[str, Any], served: dict[str, Any]) -> None:
    """Refuse a database built for another model, naming both."""
    if built_for.get("digest") == served["digest"]:
        return
    if "digest" not in built_for:
        raise DataError(
            f"{database}: this high-risk database carries no content fingerprint (built by an older version); "
            f"rebuild it with `sfmed privacy build-db` for the served model {served['path']}."
        )
    same_place = built_for.get("path") == served["path"]
    changed = sorted(
        name
        for name in set(built_for.get("files", {})) | set(served["files"])
        if built_for.get("files", {}).get(name) != served["files"].get(name)
    )
    raise DataError(
        f"{database}: the high-risk database was built for the model {built_for.get('path')} "
        f"(digest {built_for['digest'][:12]}) but the served model is {served['path']} "
        f"(digest {served['digest'][:12]})"
        + (" — the same directory, retrained or replaced since" if same_place else "")
        + (f"; differing files: {', '.join(changed[:6])}" if changed else "")
        + ". Its embeddings and thresholds belong to the other model: run `sfmed privacy audit` and "
        "`sfmed privacy build-db` for the served model."
    )
