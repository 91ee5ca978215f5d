"""The plugin in LLaMA-Factory's inference commands: `api` (a real OpenAI-compatible server on localhost), `chat`
and `export`, all with `template: sfmed` on the tiny model."""

from __future__ import annotations

import subprocess

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
