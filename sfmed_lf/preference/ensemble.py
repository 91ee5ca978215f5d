"""``sfmed pref train-rms``: K reward models on the judged pairs, through ``llamafactory-cli train`` (stage rm).

All K share the base YAML and its ``seed`` (so the value head starts the same); model i differs by
``data_seed = data_seed_base + i``, the order in which the trainer's sampler shuffles the pairs. Each run writes
``rms/rm_<i>/`` and its log; ``ensemble.json`` records each run's status. A finished run (status done and its
value head on disk) is not trained again, so a failed run is re-run alone by running the command again; other
pairs, another base YAML or other overrides are refused (start a new output_dir) rather than mixed. With
``gpus`` the runs are spread over the devices (``gpus_per_model`` each, one run per slot at a time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.preference.pairs import load_pairs, pairs_digest
from sfmed_lf.utils.io import atomic_write_text, read_json, require_file
from sfmed_lf.utils.provenance import file_digest

# LF saves the value head beside the model: .safetensors, or .bin with `save_safetensors: false` (transformers 4)
VALUE_HEAD_FILES = ("value_head.safetensors", "value_head.bin")


def value_head_file(directory: Path) -> Path | None:
    return next((directory / name for name in VALUE_HEAD_FILES if (directory / name).is_file()), None)


def rm_dir(config: PreferenceConfig, index: int) -> Path:
    return config.out / "rms" / f"rm_{index}"


def finished(config: PreferenceConfig, index: int, status: dict[str, Any]) -> bool:
    return status.get(str(index), {}).get("status") == "done" and value_head_file(rm_dir(config, index)) is not None


def _cli() -> str:
    """llamafactory-cli of this interpreter's environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "llamafactory-cli"
    return str(beside) if beside.exists() else (shutil.which("llamafactory-cli") or "llamafactory-cli")


def train_reward_models(config: PreferenceConfig) -> list[Path]:
    config.require("rm_yaml")
    require_file(config.rm_yaml, "rm_yaml")
    pairs_dir, pairs_name = config.pairs_source()
    pairs = load_pairs(pairs_dir, pairs_name)  # every pair readable before any training starts
    status_path = config.out / "ensemble.json"
    inputs = {
        "pairs": pairs_digest(pairs),
        "rm_yaml": file_digest(Path(config.rm_yaml)),
        "rm_overrides": config.rm_overrides,
        "data_seed_base": config.data_seed_base,
    }
    recorded: dict[str, Any] = read_json(status_path, "sfmed pref train-rms") if status_path.exists() else {}
    status: dict[str, Any] = recorded.get("models", {})
    if any(entry["status"] == "done" for entry in status.values()) and recorded.get("inputs") != inputs:
        changed = sorted(key for key in inputs if inputs[key] != recorded.get("inputs", {}).get(key))
        raise DataError(
            f"{status_path}: reward models were trained with other inputs (changed: {', '.join(changed)}); "
            "use a new output_dir or delete rms/ and ensemble.json to start over."
        )
    todo = [i for i in range(config.num_reward_models) if not finished(config, i, status)]
    slots = [None]
    if config.gpus:
        per = config.gpus_per_model
        slots = [config.gpus[s : s + per] for s in range(0, len(config.gpus) - per + 1, per)]
        if not slots:
            raise DataError(f"gpus {config.gpus} cannot hold {per} GPUs per model.")

    def train(index: int, devices: list[int] | None) -> dict[str, Any]:
        output = rm_dir(config, index)
        output.mkdir(parents=True, exist_ok=True)
        argv = [
            _cli(),
            "train",
            config.rm_yaml,
            *config.rm_overrides,
            "stage=rm",
            f"dataset_dir={pairs_dir}",
            f"dataset={pairs_name}",
            f"output_dir={output}",
            f"data_seed={config.data_seed_base + index}",
            "overwrite_output_dir=true",
        ]
        env = dict(os.environ)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
            if len(devices) > 1:  # one torchrun per model, on its own rendezvous port
                env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(len(devices)), MASTER_PORT=str(29500 + devices[0]))
        with open(output / "train.log", "w") as log:
            returncode = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        ok = returncode == 0 and value_head_file(output) is not None
        return {"status": "done" if ok else "failed", "returncode": returncode, "log": str(output / "train.log")}

    lock = threading.Lock()

    def run_slot(slot_index: int) -> None:
        for index in todo[slot_index :: len(slots)]:
            result = train(index, slots[slot_index])
            with lock:
                status[str(index)] = result
                atomic_write_text(status_path, json.dumps({"inputs": inputs, "models": status}, indent=2) + "\n")

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        for future in [pool.submit(run_slot, s) for s in range(len(slots))]:
            future.result()
    failed = [i for i in range(config.num_reward_models) if status[str(i)]["status"] != "done"]
    if failed:
        logs = ", ".join(status[str(i)]["log"] for i in failed)
        raise DataError(f"reward model(s) {failed} failed; see {logs}. Re-run the command to train only those.")
    return [status_path]
