"""Shared test helpers: subprocess runs of the real CLIs with their output kept for failure messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sfmed_lf.hparams import online_merging_off

REPO_ROOT = Path(__file__).resolve().parents[1]
# slices of public datasets beside the checkout (SOURCES.md there); tests that read them skip when it is absent
REALDATA = Path(os.environ.get("SFMED_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))
VENV_BIN = Path(sys.executable).parent


# stock LLaMA-Factory DPO from a YAML that configures online merging
NO_MERGING = online_merging_off()


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


def lf_load_dataset(model_dir: Path, dataset_info: dict, name: str, stage: str, work_dir: Path, **options):
    """Load dataset ``name`` of ``dataset_info`` through LLaMA-Factory's own loader and preprocessing, in process:
    (tokenized train dataset, tokenizer)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    dataset_dir = work_dir / f"dataset_dir_{name}"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "dataset_info.json").write_text(json.dumps(dataset_info, ensure_ascii=False))
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(model_dir),
            "stage": stage,
            "do_train": True,
            "finetuning_type": "full",
            "dataset": name,
            "dataset_dir": str(dataset_dir),
            "template": "sfmed",
            "cutoff_len": 1024,
            "output_dir": str(work_dir / "unused_output"),
            "overwrite_cache": True,
            "preprocessing_num_workers": 1,
            "report_to": "none",
            **options,
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module)
    return module["train_dataset"], tokenizer_module["tokenizer"]
