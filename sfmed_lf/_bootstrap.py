"""Start-up hook, imported by ``sfmed_lf.pth`` in every interpreter of the environment.

LLaMA-Factory has no plugin mechanism (patches/0001 proposes one), and torchrun workers and LLaMA-Board's
training subprocess run no user code. The only way in is interpreter start-up: this module puts a finder on
``sys.meta_path`` that does nothing until a ``llamafactory`` module is imported, then hands that module to
``sfmed_lf.integration`` right after it executes. Processes that never import llamafactory pay for one tiny
module and a string comparison per import.

Set ``SFMED_LF_DISABLE=1`` to keep the hook out entirely.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

KILL_SWITCH_ENV = "SFMED_LF_DISABLE"
_WATCHED_PACKAGE = "llamafactory"


def is_disabled() -> bool:
    return os.environ.get(KILL_SWITCH_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class _PostExecLoader(Loader):
    """Delegates to the real loader, then lets the integration patch the freshly executed module."""

    def __init__(self, wrapped: Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        from sfmed_lf import integration

        integration.on_module_executed(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for inspect and tracebacks
        return getattr(self._wrapped, name)


class LlamaFactoryImportHook(MetaPathFinder):
    """Finds nothing itself; wraps the loader of the llamafactory modules the integration wants to patch."""

    sfmed_lf_hook = True  # marker that survives module reloads, for idempotent installation

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != _WATCHED_PACKAGE and not fullname.startswith(_WATCHED_PACKAGE + "."):
            return None
        from sfmed_lf import integration

        if fullname == _WATCHED_PACKAGE:
            integration.check_llamafactory_version()
        if fullname not in integration.MODULE_PATCHES:
            return None
        spec = self._find_with_other_finders(fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PostExecLoader(spec.loader)
        return spec

    def _find_with_other_finders(self, fullname: str, path: Any, target: ModuleType | None) -> ModuleSpec | None:
        for finder in sys.meta_path:
            if getattr(finder, "sfmed_lf_hook", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is not None and (spec := find_spec(fullname, path, target)) is not None:
                return spec
        return None


def install() -> bool:
    """Put the hook first on sys.meta_path once; return whether it is (now) installed."""
    if is_disabled():
        return False
    if not any(getattr(finder, "sfmed_lf_hook", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, LlamaFactoryImportHook())
    return True


install()
