"""The package's layers: every module imports on its own, and the import-linter contracts of pyproject.toml hold
(stages never import each other; shared layers import no stage; merging imports nothing of the package; only the
modules integration.py names import LLaMA-Factory)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import tomllib

import sfmed_lf
from sfmed_lf import integration
from tests.helpers import REPO_ROOT, VENV_BIN, cli_env

# Each module is imported in a fresh child of a process that preloaded only third-party libraries (torch,
# transformers, ...): no module of this package or of LLaMA-Factory is loaded before the one under test, exactly as in
# `python -c "import MODULE"`, but without paying torch's start-up once per module.
FORK_SERVER = r"""
import importlib, json, os, sys, traceback
import numpy, torch, transformers, transformers.trainer, datasets, yaml, httpx, tqdm, safetensors
assert not [m for m in sys.modules if m.startswith(("llamafactory", "sfmed_lf.")) and m != "sfmed_lf._bootstrap"]
failures, running = {}, {}

def reap():
    pid, status = os.wait()
    name, read = running.pop(pid)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read().decode()
    if status:
        failures[name] = output or f"exit status {status}"

for name in json.loads(sys.argv[1]):
    if len(running) >= (os.cpu_count() or 1):
        reap()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc()[-3000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    running[pid] = (name, read)
while running:
    reap()
print(json.dumps(failures))
"""


def package_modules() -> list[str]:
    return sorted(
        module.name
        for module in pkgutil.walk_packages(sfmed_lf.__path__, "sfmed_lf.")
        if ".metrics." not in module.name  # Hugging Face `evaluate` scripts, loaded by path
    )


def test_every_module_imports_on_its_own():
    modules = package_modules()
    assert "sfmed_lf.hparams" in modules and "sfmed_lf.formats.conversation" in modules
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", FORK_SERVER, json.dumps(modules)],
        env=cli_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"{name}:\n{output}" for name, output in failures.items())


def test_import_contracts_hold():
    result = subprocess.run(
        [str(VENV_BIN / "lint-imports")], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_contracts_cover_the_package_and_name_the_lf_modules_integration_names():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {contract["type"]: contract for contract in config["contracts"] if contract["type"] != "forbidden"}
    assert sorted(contracts["protected"]["allowed_importers"]) == sorted(integration.LF_CLIENT_MODULES)
    stages = set(contracts["independence"]["modules"])
    top_level = {module.name for module in pkgutil.iter_modules(sfmed_lf.__path__, "sfmed_lf.") if module.ispkg}
    shared = {"sfmed_lf.formats", "sfmed_lf.text", "sfmed_lf.serving", "sfmed_lf.utils", "sfmed_lf.merging"}
    on_top = {"sfmed_lf.recipe"}  # beside cli.py: runs the stages, no stage imports it (a forbidden contract)
    assert top_level - shared - on_top == stages, "a new package is a stage (independent), a shared layer or on top"
