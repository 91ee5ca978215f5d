"""OpenAI-compatible endpoints of a recipe: started by the runner (``vllm serve``, ``llamafactory-cli api``,
``sfmed pref rule-judge``, ...) on a free port of 127.0.0.1, polled until ``GET /v1/models`` answers, logged to
``<state_dir>/logs/endpoint-<name>.log``, and stopped (the whole process group: SIGTERM, then SIGKILL) when no
stage needs them, when a stage fails, or when the runner is interrupted. A server also receives SIGTERM if the runner
dies without stopping it (Linux's parent-death signal), so a killed runner leaves no server behind. A given URL is
only checked for an answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sfmed_lf.recipe.spec import LOCALHOST, Endpoint, substitute

POLL_S = 1.0
STOP_GRACE_S = 20.0


class EndpointFailed(RuntimeError):
    """An endpoint did not come up (exited, or no answer in time)."""


def llamafactory_cli() -> str:
    """The llamafactory-cli of this interpreter's environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "llamafactory-cli"
    return str(beside) if beside.exists() else (shutil.which("llamafactory-cli") or "llamafactory-cli")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def answers(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RunningEndpoint:
    def __init__(self, endpoint: Endpoint, url: str, process: subprocess.Popen | None, log: Path | None) -> None:
        self.endpoint = endpoint
        self.url = url
        self.process = process
        self.log = log

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(endpoint: Endpoint, log_dir: Path, say: Callable[[str], None]) -> RunningEndpoint:
    """Start (or check) ``endpoint``; returns once it answers. Raises :class:`EndpointFailed` otherwise."""
    if endpoint.serve is None:
        assert endpoint.url is not None
        if not answers(endpoint.url):
            raise EndpointFailed(f"endpoint {endpoint.name}: {endpoint.url} does not answer GET /models.")
        return RunningEndpoint(endpoint, endpoint.url, None, None)
    port = free_port()

    def resolve(name: str) -> str | None:
        return str(port) if name == "port" else None

    where = f"endpoint {endpoint.name}"
    argv = [substitute(part, resolve, where) for part in endpoint.serve]
    env = {**os.environ, **{key: substitute(value, resolve, where) for key, value in endpoint.env.items()}}
    if argv[0] == "sfmed":  # this environment's commands, whatever PATH holds
        argv = [sys.executable, "-m", "sfmed_lf.cli", *argv[1:]]
    elif argv[0] == "llamafactory-cli":
        argv = [llamafactory_cli(), *argv[1:]]
    url = f"http://{LOCALHOST}:{port}/v1"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"endpoint-{endpoint.name}.log"
    say(f"  endpoint {endpoint.name}: {' '.join(argv)} -> {url} (log {log})")
    with open(log, "ab") as handle:
        try:
            process = subprocess.Popen(
                argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        except OSError as error:
            raise EndpointFailed(f"{where}: cannot start {argv[0]} ({error}).") from error
    running = RunningEndpoint(endpoint, url, process, log)
    deadline = time.monotonic() + endpoint.ready_timeout_s
    while not answers(url):
        if process.poll() is not None:
            raise EndpointFailed(
                f"{where} exited with code {process.returncode} before answering; {log}:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            running.stop()
            raise EndpointFailed(f"{where} did not answer within {endpoint.ready_timeout_s:g} s; {log}:\n{_tail(log)}")
        time.sleep(POLL_S)
    say(f"  endpoint {endpoint.name} ready at {url}")
    return running
