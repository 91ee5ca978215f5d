"""Shared test helpers: subprocess runs of the real CLIs with their output kept for failure messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
# slices of public datasets beside the checkout (SOURCES.md there); tests that read them skip when it is absent
REALDATA = Path(os.environ.get("SFMED_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))
VENV_BIN = Path(sys.executable).parent


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the real CLIs run in: offline, this venv's tools first on PATH."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra or {}),
    }


def run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    full_env = cli_env(env)
    if args[0] in {"llamafactory-cli", "sfmed", "python", "pip"}:
        args = [str(VENV_BIN / args[0]), *args[1:]]
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}\n"
            f"--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def lf_train(
    yaml_path: str, *overrides: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    return run(["llamafactory-cli", "train", yaml_path, *overrides], env=env, check=check)


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def save_weights(model_dir: Path, weights: dict[str, torch.Tensor]) -> None:
    save_file(weights, str(Path(model_dir) / "model.safetensors"), metadata={"format": "pt"})


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
