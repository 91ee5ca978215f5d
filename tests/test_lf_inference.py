"""The plugin in LLaMA-Factory's inference commands: `api` (a real OpenAI-compatible server on localhost), `chat`
and `export`, all with `template: sfmed` on the tiny model."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import VENV_BIN, cli_env, read_json, run

pytestmark = pytest.mark.slow


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


def test_api_serves_the_tiny_model_with_the_sfmed_template(pipeline, tmp_path):
    port = free_port()
    log = (tmp_path / "api.log").open("w")
    server = subprocess.Popen(
        inference_command("api", pipeline["sft"], "--infer_backend", "huggingface", "--max_new_tokens", "16"),
        env=cli_env({"API_HOST": "127.0.0.1", "API_PORT": port}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                models = http_json(f"http://127.0.0.1:{port}/v1/models")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "api.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "the API server did not come up in 120 s"
                time.sleep(1)
        assert models["object"] == "list" and models["data"]
        reply = http_json(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {
                "model": models["data"][0]["id"],
                "messages": [{"role": "user", "content": "我头疼，怎么办？"}],
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        assert reply["object"] == "chat.completion"
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        assert reply["usage"]["prompt_tokens"] > 40, "the SF-Med default system prompt must be part of the prompt"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_chat_cli_answers_with_the_sfmed_template(pipeline):
    result = subprocess.run(
        inference_command("chat", pipeline["sft"], "--max_new_tokens", "8"),
        input="我发烧了\nexit\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "User:" in result.stdout and "Assistant:" in result.stdout


def test_export_writes_the_sfmed_chat_template(pipeline, tmp_path):
    run(
        [
            "llamafactory-cli",
            "export",
            "--model_name_or_path",
            str(pipeline["sft"]),
            "--template",
            "sfmed",
            "--export_dir",
            str(tmp_path),
            "--export_size",
            "1",
        ]
    )
    config = read_json(tmp_path / "tokenizer_config.json")
    template = config.get("chat_template") or (tmp_path / "chat_template.jinja").read_text()
    assert "你是一名经验丰富的临床医生" in template
