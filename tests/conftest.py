"""Session fixtures shared by the tests that run `llamafactory-cli train` for real.

Two kinds of model, named for what they are:

* ``pipeline``: the random-init tiny model (:meth:`TinyModelSpec.random_init`) after one epoch of CPT and SFT on the
  bundled data — milliseconds per step, nothing learned. For tests of mechanics (online merging, sharding, resume,
  serving) that need a model, not a trained one.
* ``tiny_recipe``: the demo itself — ``sfmed recipe run examples/yaml/tiny/recipe.yaml`` in a project directory
  of its own (world -> tiny model -> data steps -> CPT -> SFT -> preference stage -> DPO -> evaluation -> audit ->
  guard -> report). For the end-to-end and effect tests. Run once per test session; kept in a cache keyed by every
  input it depends on (the package, the tiny YAMLs, the library versions), so a second session on the same
  checkout reuses it. ``SFMED_TEST_CACHE=off`` runs it afresh; ``SFMED_TEST_CACHE=DIR`` moves the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from sfmed_lf.tiny_model import TinyModelSpec, build_tiny_model
from tests.helpers import REPO_ROOT, lf_train, run

DPO_YAML = "examples/yaml/tiny/dpo.yaml"
BUNDLED_PT = ("dataset_dir=.", "dataset=sfmed_sample_pt_medical,sfmed_sample_pt_general")
BUNDLED_SFT = ("dataset_dir=.", "dataset=sfmed_sample_sft_single,sfmed_sample_sft_multiturn")
BUNDLED_DPO = ("dataset_dir=.", "dataset=sfmed_sample_dpo_pairs")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """random-init tiny model -> CPT -> SFT on the bundled data (one epoch each): a model, not a trained one."""
    root = tmp_path_factory.mktemp("pipeline")
    paths = {name: root / name for name in ("model", "pt", "sft")}
    build_tiny_model(paths["model"], TinyModelSpec.random_init())
    common = ("num_train_epochs=1", "per_device_train_batch_size=4", "learning_rate=2e-3", "logging_steps=2")
    lf_train(
        "examples/yaml/tiny/pt.yaml",
        f"model_name_or_path={paths['model']}",
        f"output_dir={paths['pt']}",
        *BUNDLED_PT,
        *common,
    )
    lf_train(
        "examples/yaml/tiny/sft.yaml",
        f"model_name_or_path={paths['pt']}",
        f"output_dir={paths['sft']}",
        "cutoff_len=256",
        *BUNDLED_SFT,
        *common,
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
        *BUNDLED_DPO,
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


# ---- the tiny recipe, run as the demo runs it ------------------------------------------------------------------------
TINY_RECIPE = "examples/yaml/tiny/recipe.yaml"
# what its outputs depend on: the whole package (every stage runs) and the tiny YAMLs (plus library versions)
TINY_RECIPE_INPUTS = ("sfmed_lf", "examples/yaml/tiny")


def content_key(paths: tuple[str, ...], *extra: str) -> str:
    """SHA-256 over the named files (directories: their .py/.txt/.yaml files, sorted) and ``extra``."""
    digest = hashlib.sha256()
    for name in paths:
        root = REPO_ROOT / name
        files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".txt", ".yaml")) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0" + file.read_bytes())
    for value in extra:
        digest.update(value.encode() + b"\0")
    return digest.hexdigest()[:20]


def _versions() -> str:
    return ",".join(f"{p}={metadata.version(p)}" for p in ("torch", "transformers", "llamafactory", "tokenizers"))


def cached_build(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """``build(directory)`` once per key: in a cache directory (renamed into place when complete, so a killed build
    is never reused), or in a temporary one with SFMED_TEST_CACHE=off."""
    setting = os.environ.get("SFMED_TEST_CACHE", "")
    if setting == "off":
        directory = Path(tempfile.mkdtemp(prefix=f"sfmed-{name}-"))
        build(directory)
        return directory
    cache = Path(setting) if setting else Path.home() / ".cache" / "sfmed-lf" / "test-models"
    target = cache / f"{name}-{key}"
    if (target / "COMPLETE").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-{key}."))
    build(staging)
    (staging / "COMPLETE").write_text(key + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def run_tiny_recipe(project: Path) -> None:
    """`sfmed recipe run examples/yaml/tiny/recipe.yaml` in a project directory of its own: every stage of the demo
    (world, tiny model, data steps, CPT, SFT, preference stage, DPO x2, evaluation, measures, audit, guard, report)."""
    shutil.copytree(REPO_ROOT / "examples" / "yaml" / "tiny", project / "examples" / "yaml" / "tiny")
    run(["sfmed", "recipe", "run", TINY_RECIPE], cwd=project, timeout=5400)


@pytest.fixture(scope="session")
def tiny_recipe() -> Path:
    """The project directory the tiny recipe ran in (saves/tiny/..., models/sfmed-tiny)."""
    return cached_build("tiny-recipe", content_key(TINY_RECIPE_INPUTS, _versions()), run_tiny_recipe)
