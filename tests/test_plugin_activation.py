"""The plugin reaches every interpreter of the environment through sfmed_lf.pth: lazily, idempotently, with a kill
switch and a version guard. Each test runs a fresh interpreter, as llamafactory-cli, torchrun workers and
LLaMA-Board's training subprocess do."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run

PYTHON = sys.executable


def python(code: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run([PYTHON, "-c", textwrap.dedent(code)], env=env, check=check)


def test_startup_installs_only_the_hook_and_imports_nothing_heavy():
    result = python("""
        import sys
        hooks = [f for f in sys.meta_path if getattr(f, "sfmed_lf_hook", False)]
        heavy = sorted(m for m in ("torch", "transformers", "llamafactory", "sfmed_lf.integration") if m in sys.modules)
        print(len(hooks), heavy)
    """)
    assert result.stdout.split("\n")[0] == "1 []"


def test_importing_llamafactory_activates_every_patch():
    result = python("""
        from llamafactory.data.template import TEMPLATES
        from llamafactory.hparams import parser
        import llamafactory.train.dpo.trainer as dpo_trainer
        print(TEMPLATES["sfmed"].default_system[:6], TEMPLATES["sfmed_multiturn"].stop_words)
        print(parser._TRAIN_ARGS[3].__name__, parser._INFER_ARGS[2].__name__, parser._EVAL_ARGS[3].__name__)
        print(dpo_trainer.CustomDPOTrainer.__name__, dpo_trainer.CustomDPOTrainer.__mro__[1].__name__)
    """)
    lines = result.stdout.strip().split("\n")[-3:]
    assert lines[0] == "你是一名经验 ['<|im_end|>']"
    assert lines[1] == "SFMedFinetuningArguments SFMedFinetuningArguments SFMedFinetuningArguments"
    assert lines[2] == "SFMedDPOTrainer CustomDPOTrainer"


def test_kill_switch_keeps_everything_out():
    result = python(
        """
        import sys
        from llamafactory.data.template import TEMPLATES
        from llamafactory.hparams import parser
        print(any(getattr(f, "sfmed_lf_hook", False) for f in sys.meta_path), "sfmed" in TEMPLATES,
              parser._TRAIN_ARGS[3].__name__, "sfmed_lf.integration" in sys.modules)
    """,
        env={"SFMED_LF_DISABLE": "1"},
    )
    assert result.stdout.strip().split("\n")[-1] == "False False FinetuningArguments False"


def test_activation_is_idempotent():
    result = python("""
        import importlib, sys
        import sfmed_lf._bootstrap as bootstrap
        importlib.reload(bootstrap)          # a .pth processed twice
        from sfmed_lf import integration
        integration.activate(); integration.activate()
        from llamafactory.hparams import parser
        from llamafactory.data.template import TEMPLATES
        importlib.reload(sys.modules["llamafactory.data.template"])
        integration.activate()
        hooks = [f for f in sys.meta_path if getattr(f, "sfmed_lf_hook", False)]
        names = [c.__name__ for c in parser._TRAIN_ARGS]
        print(len(hooks), names.count("SFMedFinetuningArguments"), names.count("SFMedDataArguments"),
              sorted(integration.APPLIED))
    """)
    assert result.stdout.strip().split("\n")[-1] == (
        "1 1 1 ['llamafactory.data.loader', 'llamafactory.data.template', 'llamafactory.extras.constants', "
        "'llamafactory.hparams.parser']"
    )


def test_explicit_activate_patches_modules_imported_before_the_hook():
    # `python -S` skips site processing, so no .pth runs: what a process without the start-up file looks like.
    site_dirs = [d for d in site.getsitepackages() if Path(d, "llamafactory").is_dir()]
    result = run(
        [
            PYTHON,
            "-S",
            "-c",
            textwrap.dedent(f"""
        import sys
        sys.path[:0] = {site_dirs!r} + [{str(REPO_ROOT)!r}]
        from llamafactory.data.template import TEMPLATES
        before = "sfmed" in TEMPLATES
        from sfmed_lf.integration import activate
        activate()
        print(before, "sfmed" in TEMPLATES)
    """),
        ]
    )
    assert result.stdout.strip().split("\n")[-1] == "False True"


def test_version_guard_names_the_versions_and_the_kill_switch(tmp_path):
    fake = tmp_path / "fake"
    (fake / "llamafactory").mkdir(parents=True)
    (fake / "llamafactory" / "__init__.py").write_text("")
    dist_info = fake / "llamafactory-0.9.4.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: llamafactory\nVersion: 0.9.4\n")
    result = python("import llamafactory", env={"PYTHONPATH": str(fake)}, check=False)
    assert result.returncode != 0
    assert "sfmed-lf supports llamafactory==0.9.5 only, but llamafactory==0.9.4 is installed" in result.stderr
    assert "SFMED_LF_DISABLE=1" in result.stderr
    assert python("import llamafactory", env={"PYTHONPATH": str(fake), "SFMED_LF_DISABLE": "1"}).returncode == 0


def test_train_help_lists_the_sfmed_options():
    result = run(["llamafactory-cli", "train", "-h"])
    for option in (
        "--sfmed_merge_method",
        "--sfmed_merge_base_model",
        "--sfmed_merge_keep_prob",
        "--sfmed_merge_alpha",
        "--sfmed_merge_rescale",
        "--sfmed_merge_seed",
    ):
        assert option in result.stdout
    assert "{none,ondare,onties}" in result.stdout


def test_doctor_reports_active_hooks():
    result = run(["sfmed", "doctor"])
    assert "all hooks active" in result.stdout
    assert "llamafactory.train.dpo.trainer: active - CustomDPOTrainer -> SFMedDPOTrainer" in result.stdout
    disabled = run(["sfmed", "doctor"], env={"SFMED_LF_DISABLE": "1"}, check=False)
    assert disabled.returncode == 1
    assert "kill switch SFMED_LF_DISABLE=1 is set" in disabled.stdout
    assert "llamafactory.data.template: INACTIVE" in disabled.stdout


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-editable"])
def test_fresh_virtualenv_install_activates_the_plugin(tmp_path, editable):
    """A new venv sees this venv's dependencies through a plain path entry (which runs none of their .pth
    files), so the only way the plugin can be active there is the .pth the install itself put in place."""
    source = tmp_path / "src"
    source.mkdir()
    for item in ("setup.py", "pyproject.toml", "README.md", "sfmed_lf"):
        copy = shutil.copytree if (REPO_ROOT / item).is_dir() else shutil.copy2
        copy(REPO_ROOT / item, source / item)
    venv = tmp_path / "venv"
    run([PYTHON, "-m", "venv", "--without-pip", str(venv)])
    venv_python = venv / "bin" / "python"
    venv_site = Path(
        run(
            [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path
        ).stdout.strip()
    )
    dependency_dirs = [d for d in site.getsitepackages() if Path(d, "llamafactory").is_dir()]
    (venv_site / "00_dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")

    before = run([str(venv_python), "-c", "import sfmed_lf"], cwd=tmp_path, check=False)
    assert before.returncode != 0, "sfmed_lf must not be importable before the install"
    install = [
        PYTHON,
        "-m",
        "pip",
        "--python",
        str(venv_python),
        "install",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        *(["-e", str(source)] if editable else [str(source)]),
    ]
    run(install, timeout=300)
    assert (venv_site / "sfmed_lf.pth").read_text() == "import sfmed_lf._bootstrap\n"

    check = run(
        [
            str(venv_python),
            "-c",
            textwrap.dedent("""
        import sfmed_lf
        from llamafactory.data.template import TEMPLATES
        from llamafactory.hparams import parser
        from sfmed_lf.tiny_model import bundled_corpus
        print(sfmed_lf.__file__)
        print("sfmed" in TEMPLATES, parser._TRAIN_ARGS[3].__name__, len(bundled_corpus()) > 100)
    """),
        ],
        cwd=tmp_path,
    )
    location, active = check.stdout.strip().split("\n")[-2:]
    assert active == "True SFMedFinetuningArguments True"
    assert location.startswith(str(source if editable else venv_site))

    run([PYTHON, "-m", "pip", "--python", str(venv_python), "uninstall", "-y", "-q", "sfmed-lf"])
    assert not (venv_site / "sfmed_lf.pth").exists()
