"""``sfmed doctor``: versions, and whether each LLaMA-Factory hook is active in this environment, and why not. A step
of the registry (:data:`sfmed_lf.steps.TOP_LEVEL_STEPS`) that writes nothing: it prints its report, and exits 1 when
it found problems."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from sfmed_lf import __version__, _bootstrap, integration
from sfmed_lf.errors import ProblemsFound
from sfmed_lf.steps import Step, StepConfig

PACKAGES = (
    "llamafactory",
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "peft",
    "deepspeed",
    "datasketch",
    "tokenizers",
    "safetensors",
)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _pth_locations() -> list[Path]:
    directories = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    found = {Path(d, "sfmed_lf.pth").resolve() for d in directories if d and Path(d, "sfmed_lf.pth").is_file()}
    return sorted(found)


def run_doctor() -> int:
    """Print the report; return 0 when every hook is active, 1 otherwise."""
    lines = [f"sfmed-lf {__version__} (python {sys.version.split()[0]}, {sys.executable})"]
    lines += [f"  {package:<13} {_version(package)}" for package in PACKAGES]
    lines.append(f"supported llamafactory: {integration.SUPPORTED_LLAMAFACTORY_VERSION}")

    problems: list[str] = []
    pth = _pth_locations()
    lines.append(f"start-up file sfmed_lf.pth: {', '.join(map(str, pth)) if pth else 'NOT FOUND'}")
    if not pth:
        problems.append("sfmed_lf.pth is not in any site directory: reinstall with `pip install .` or `-e .`")
    if _bootstrap.is_disabled():
        problems.append(f"kill switch {integration.KILL_SWITCH_ENV}={os.environ[integration.KILL_SWITCH_ENV]} is set")
    hook_active = any(getattr(finder, "sfmed_lf_hook", False) for finder in sys.meta_path)
    lines.append(f"import hook on sys.meta_path: {'yes' if hook_active else 'no'}")
    try:
        integration.check_llamafactory_version()
        lines.append("version guard: ok")
    except integration.UnsupportedLlamaFactoryVersion as error:
        problems.append(str(error))

    lines.append("hooks:")
    for module_name in integration.MODULE_PATCHES:
        try:
            importlib.import_module(module_name)
        except Exception as error:
            problems.append(f"{module_name}: import failed ({type(error).__name__}: {error})")
        applied = integration.APPLIED.get(module_name)
        lines.append(f"  {module_name}: {'active - ' + applied if applied else 'INACTIVE'}")
        if not applied and hook_active and not _bootstrap.is_disabled():
            problems.append(f"{module_name}: imported before the hook was installed")
    lines.append("LLaMA-Factory symbols used (integration.LF_SYMBOLS):")
    for symbol in integration.LF_SYMBOLS:
        module = sys.modules.get(symbol.module) or importlib.import_module(symbol.module)
        present = hasattr(module, symbol.name)
        lines.append(f"  {'ok' if present else 'MISSING'}  {symbol.module}.{symbol.name}: {symbol.use}")
        if not present:
            problems.append(f"{symbol.module}.{symbol.name} no longer exists")
    lines.append("problems:" if problems else "all hooks active")
    lines += [f"  - {problem}" for problem in problems]
    print("\n".join(lines))
    return 1 if problems else 0


@dataclass
class DoctorConfig(StepConfig):
    """``sfmed doctor`` takes no options."""


class Doctor(Step[DoctorConfig]):
    name, config, yaml = "doctor", DoctorConfig, False
    help = "versions, and whether each LLaMA-Factory hook is active (exit 1 when one is not)"

    def run(self, config: DoctorConfig) -> list[Path]:
        if run_doctor():
            raise ProblemsFound("problems found (listed above).")
        return []


STEP = Doctor()
