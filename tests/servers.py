"""Servers the tests talk to over real HTTP on localhost: `llamafactory-cli api` serving a model, and a small
OpenAI-compatible server of our own whose replies a test decides (deterministic judges, failures, delays)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from sfmed_lf.serving.chat_server import ChatCompletionServer
from tests.conftest import free_port
from tests.helpers import VENV_BIN, cli_env


def http_json(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def inference_command(command: str, model: Path, *flags: str) -> list[str]:
    """`llamafactory-cli api|chat` on ``model`` with the SF-Med template (without a YAML, LF parses --flags)."""
    return [
        str(VENV_BIN / "llamafactory-cli"),
        command,
        "--model_name_or_path",
        str(model),
        "--template",
        "sfmed",
        *flags,
    ]


@contextlib.contextmanager
def llamafactory_api(model: Path, log_path: Path, *flags: str) -> Iterator[str]:
    """`llamafactory-cli api` on ``model`` with the sfmed template; yields the base URL (…/v1) once it answers."""
    with serve_api(inference_command("api", model, "--infer_backend", "huggingface", *flags), log_path) as base_url:
        yield base_url


@contextlib.contextmanager
def serve_api(argv: list[str], log_path: Path) -> Iterator[str]:
    """Any `llamafactory-cli api ...` command line on a free port; yields the base URL once /v1/models answers."""
    port = free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen(
            argv, env=cli_env({"API_HOST": "127.0.0.1", "API_PORT": port}), stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                http_json(f"{base_url}/models")
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "the API server did not come up in 120 s"
                time.sleep(1)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


# a server whose replies the test decides: ScriptedChatServer(lambda payload: (200, "text")) as server
ScriptedChatServer = ChatCompletionServer
