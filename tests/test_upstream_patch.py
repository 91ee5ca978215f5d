"""patches/: 0001, LLaMA-Factory with entry-point plugin discovery activates sfmed-lf without the start-up .pth;
0002, a full-tuned reward model with tied embeddings saves with the patch alone (sfmed-lf switched off)."""

from __future__ import annotations

import json
import shutil
import site
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from sfmed_lf.tiny_model import TinyModelSpec, build_tiny_model
from tests.helpers import REPO_ROOT, run

PATCH = REPO_ROOT / "patches" / "0001-plugin-entry-points.patch"
RM_SAVE_PATCH = REPO_ROOT / "patches" / "0002-rm-save-tied-embeddings.patch"


@pytest.fixture(scope="module")
def patched_llamafactory(tmp_path_factory) -> Path:
    """A copy of the installed LLaMA-Factory, laid out as its repository (src/llamafactory), with the patch."""
    root = tmp_path_factory.mktemp("lf")
    installed = next(Path(d, "llamafactory") for d in site.getsitepackages() if Path(d, "llamafactory").is_dir())
    shutil.copytree(installed, root / "src" / "llamafactory", ignore=shutil.ignore_patterns("__pycache__"))
    run(["git", "init", "-q"], cwd=root)
    run(["git", "apply", str(PATCH)], cwd=root)
    return root


def isolated_env(patched: Path) -> dict[str, str]:
    """`python -S` skips site processing, so no .pth file (sfmed_lf.pth included) runs; dependencies, the
    editable sfmed_lf and its entry-point metadata are reached through plain path entries instead."""
    paths = [str(patched / "src"), *site.getsitepackages(), str(REPO_ROOT)]
    return {"PYTHONPATH": ":".join(paths)}


def test_entry_point_activates_the_plugin_without_the_pth(patched_llamafactory):
    code = (
        "import sys, llamafactory; from llamafactory.data.template import TEMPLATES; "
        "from llamafactory.hparams import parser; "
        "print(llamafactory.__file__.startswith(sys.argv[1]), 'sfmed' in TEMPLATES, parser._TRAIN_ARGS[3].__name__)"
    )
    env = isolated_env(patched_llamafactory)
    result = run([sys.executable, "-S", "-c", code, str(patched_llamafactory)], env=env)
    assert result.stdout.strip().split("\n")[-1] == "True True SFMedFinetuningArguments"
    disabled = run([sys.executable, "-S", "-c", code, str(patched_llamafactory)], env={**env, "DISABLE_PLUGINS": "1"})
    assert disabled.stdout.strip().split("\n")[-1] == "True False FinetuningArguments"


def test_patch_brings_its_own_passing_tests(patched_llamafactory):
    run(
        [
            sys.executable,
            "-S",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(patched_llamafactory / "tests" / "extras" / "test_plugins.py"),
        ],
        env=isolated_env(patched_llamafactory),
        cwd=patched_llamafactory,
    )


def test_reward_model_with_tied_embeddings_saves_with_the_patch_alone(tmp_path):
    """Stock LF 0.9.5 cannot save it; the patched copy can, with sfmed-lf's own fix switched off."""
    root = tmp_path / "lf"
    installed = next(Path(d, "llamafactory") for d in site.getsitepackages() if Path(d, "llamafactory").is_dir())
    shutil.copytree(installed, root / "src" / "llamafactory", ignore=shutil.ignore_patterns("__pycache__"))
    model = build_tiny_model(tmp_path / "model", TinyModelSpec.random_init())
    assert json.loads((model / "config.json").read_text())["tie_word_embeddings"] is True
    train = [
        sys.executable,
        "-c",
        "import sys; from llamafactory.cli import main; sys.argv[0] = 'llamafactory-cli'; sys.exit(main())",
        "train",
        "examples/yaml/tiny/rm.yaml",
        f"model_name_or_path={model}",
        "template=qwen",  # the sfmed templates are part of the switched-off plugin
        "max_steps=1",
        "dataset_dir=.",
        "dataset=sfmed_sample_dpo_pairs",
    ]
    off = {"SFMED_LF_DISABLE": "1", "PYTHONPATH": str(root / "src")}
    stock = run([*train, f"output_dir={tmp_path / 'stock'}"], env=off, check=False)
    assert stock.returncode != 0 and "share memory" in stock.stdout + stock.stderr

    run(["git", "init", "-q"], cwd=root)
    run(["git", "apply", str(RM_SAVE_PATCH)], cwd=root)
    run([*train, f"output_dir={tmp_path / 'patched'}"], env=off)
    assert (tmp_path / "patched" / "value_head.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "patched")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
