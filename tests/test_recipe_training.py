"""``sfmed recipe run`` through training stages: killed with kill -9 (the runner's whole process group) in the middle of
SFT, a re-run skips the finished CPT stage, trains SFT again and ends at the weights of an uninterrupted run (the
session's ``pipeline`` fixture trains the same stages with the same options)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT, VENV_BIN, cli_env, load_weights

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# what the `pipeline` fixture trains with (tests/conftest.py), so the resumed run must end at its weights
PIPELINE_SETTINGS = {
    "dataset_dir": ".",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-3,
    "logging_steps": 2,
}


def test_a_run_killed_during_training_resumes_with_the_same_outputs(pipeline, tmp_path):
    state = tmp_path / "state"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(state),
                "stages": [
                    {
                        "name": "cpt",
                        "train": "examples/yaml/tiny/pt.yaml",
                        "set": {
                            "model_name_or_path": str(pipeline["model"]),
                            "output_dir": str(tmp_path / "pt"),
                            **PIPELINE_SETTINGS,
                            "dataset": "sfmed_sample_pt_medical,sfmed_sample_pt_general",
                        },
                    },
                    {
                        "name": "sft",
                        "train": "examples/yaml/tiny/sft.yaml",
                        "set": {
                            "model_name_or_path": str(tmp_path / "pt"),
                            "output_dir": str(tmp_path / "sft"),
                            **PIPELINE_SETTINGS,
                            "dataset": "sfmed_sample_sft_single,sfmed_sample_sft_multiturn",
                            "cutoff_len": 256,
                        },
                    },
                ],
            }
        )
    )
    command = [str(VENV_BIN / "sfmed"), "recipe", "run", str(recipe)]
    runner = subprocess.Popen(
        command, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        record = state / "stages" / "sft.json"
        log = state / "logs" / "sft.log"
        # SFT has started training: its record says started and the Trainer logs its first steps
        wait_for(lambda: record.is_file() and log.is_file() and "'loss'" in log.read_text(), 600, "SFT to train")
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    assert json.loads(record.read_text())["status"] == "started"
    assert json.loads((state / "stages" / "cpt.json").read_text())["status"] == "finished"
    assert not (tmp_path / "sft" / "model.safetensors").exists()

    status = subprocess.run(
        [*command[:2], "status", str(recipe)], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True
    )
    assert "was killed during stage sft" in status.stdout and "[2/2] unfinished" in status.stdout

    rerun = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "[1/2] cpt: done, skipped" in rerun.stdout
    assert "[2/2] sft: running again (an earlier attempt did not finish)" in rerun.stdout
    assert "all 2 stages done (1 run, 1 already done)" in rerun.stdout
    assert json.loads(record.read_text())["status"] == "finished"
    for stage in ("pt", "sft"):  # the same weights as the uninterrupted fixture run
        ours, reference = load_weights(tmp_path / stage), load_weights(Path(pipeline[stage]))
        assert ours.keys() == reference.keys()
        assert all((ours[name] == reference[name]).all() for name in ours), stage
