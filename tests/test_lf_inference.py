"""The plugin in LLaMA-Factory's inference commands: `api` (a real OpenAI-compatible server on localhost), `chat`
and `export`, all with `template: sfmed` on the tiny model."""

from __future__ import annotations

import queue
import subprocess
import threading
import time

import pytest

from tests.helpers import cli_env, read_json, run
from tests.servers import http_json, inference_command, llamafactory_api

pytestmark = pytest.mark.slow


def test_api_serves_the_tiny_model_with_the_sfmed_template(pipeline, tmp_path):
    with llamafactory_api(pipeline["sft"], tmp_path / "api.log", "--max_new_tokens", "16") as base_url:
        models = http_json(f"{base_url}/models")
        assert models["object"] == "list" and models["data"]
        reply = http_json(
            f"{base_url}/chat/completions",
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


def test_chat_cli_answers_with_the_sfmed_template(pipeline):
    """As a person uses it: a question, the streamed answer, then `exit` once the answer is complete. (Typing `exit`
    while LLaMA-Factory's generate() thread is still finishing makes the process abort at exit, "terminate called
    without an active exception", under load: an upstream race, not the template.)"""
    chat = subprocess.Popen(
        inference_command("chat", pipeline["sft"], "--max_new_tokens", "8"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in chat.stdout], daemon=True).start()
    threading.Thread(target=lambda: errors.extend(chat.stderr), daemon=True).start()  # LF logs a lot: drain it
    try:
        chat.stdin.write("我发烧了\n")
        chat.stdin.flush()
        answer = ""
        while "Assistant:" not in answer:  # the line ends when the streamed answer is complete
            answer = lines.get(timeout=300)
        time.sleep(2)
        chat.stdin.write("exit\n")
        chat.stdin.close()
        chat.wait(timeout=120)
    finally:
        chat.kill()
    assert chat.returncode == 0, "".join(errors)[-4000:]
    assert "User:" in answer and "Assistant:" in answer, answer


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
