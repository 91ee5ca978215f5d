"""Session fixtures shared by the tests that run `llamafactory-cli train` for real."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import lf_train, run

DPO_YAML = "examples/yaml/tiny/dpo.yaml"


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """tiny model -> CPT -> SFT, as the demo runs it (one epoch each)."""
    root = tmp_path_factory.mktemp("pipeline")
    paths = {name: root / name for name in ("model", "pt", "sft")}
    run(["sfmed", "tiny-model", "examples/yaml/tiny/tiny_model.yaml", f"output_dir={paths['model']}"])
    lf_train(
        "examples/yaml/tiny/pt.yaml",
        f"model_name_or_path={paths['model']}",
        f"output_dir={paths['pt']}",
        "num_train_epochs=1",
    )
    lf_train(
        "examples/yaml/tiny/sft.yaml",
        f"model_name_or_path={paths['pt']}",
        f"output_dir={paths['sft']}",
        "num_train_epochs=1",
    )
    for stage in ("pt", "sft"):
        assert (paths[stage] / "training_loss.png").is_file()
    return paths


def dpo(pipeline: dict[str, Path], output_dir: Path, *overrides: str, env=None, check=True):
    return lf_train(
        DPO_YAML,
        f"model_name_or_path={pipeline['sft']}",
        f"sfmed_merge_base_model={pipeline['pt']}",
        f"output_dir={output_dir}",
        "max_steps=6",
        *overrides,
        env=env,
        check=check,
    )


def free_port() -> str:
    """A free port for torch.distributed's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def two_ranks(**extra: str) -> dict[str, str]:
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": free_port(), **extra}
