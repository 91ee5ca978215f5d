"""Online merging under FSDP1 (``use_orig_params`` True and False) and FSDP2 (``fully_shard``), driven directly on two
CPU ranks over gloo by torchrun (tests/fsdp_merging_worker.py): every layout ends at the single-process weights, for
OnDARE with p < 1 (keyed masks) and OnTIES with p = 1, and a sharded torch.distributed.checkpoint save/resume ends at
the uninterrupted run's weights. accelerate enables FSDP on accelerators only, so llamafactory-cli cannot drive this
on CPU; tests/test_lf_training.py checks that it refuses instead of silently training DDP."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import free_port
from tests.helpers import REPO_ROOT, run

pytestmark = pytest.mark.slow
WORKER = REPO_ROOT / "tests" / "fsdp_merging_worker.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, float]:
    directory = tmp_path_factory.mktemp("fsdp")
    run([sys.executable, str(WORKER), str(directory)])
    output = directory / "results.json"
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(WORKER),
            str(directory),
            str(output),
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    return json.loads(output.read_text())


@pytest.mark.parametrize("config", ["ondare-p0.3", "onties-p1"])
@pytest.mark.parametrize("layout", ["fsdp1-orig-params", "fsdp1-flat-params", "fsdp2"])
def test_fsdp_layouts_end_at_the_single_process_weights(results, layout, config):
    assert results[f"moved/{config}"] > 0.05, "training must move the weights"
    assert results[f"{layout}/{config}"] < 2e-6


@pytest.mark.parametrize("layout", ["fsdp1-orig-params", "fsdp2"])
def test_sharded_checkpoint_resume_ends_at_the_uninterrupted_weights(results, layout):
    assert results[f"resume/{layout}"] == 0.0
