"""The embedded tiny model and the SF-Med templates, through LLaMA-Factory's own template code."""

from __future__ import annotations

import hashlib

import pytest
from llamafactory.data.template import TEMPLATES
from transformers import AutoTokenizer

from sfmed_lf.cli import main as sfmed_main
from sfmed_lf.templates import MULTI_TURN_INSTRUCTION, SINGLE_TURN_INSTRUCTION
from sfmed_lf.tiny_model import QWEN_SPECIAL_TOKENS, TinyModelSpec, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic_and_atomic(tiny, tmp_path):
    again = build_tiny_model(tmp_path / "model")
    assert digest(again) == digest(tiny)
    rebuilt = build_tiny_model(tmp_path / "model")  # replacing an existing model leaves no staging dirs behind
    assert digest(rebuilt) == digest(tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_tokenizer_has_qwen_special_tokens_and_chat_template(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for token in QWEN_SPECIAL_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    text = "医生您好，我这两天鼻塞、流清鼻涕。Hello!"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "头疼"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        f"<|im_start|>system\n{SINGLE_TURN_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>user\n头疼<|im_end|>\n<|im_start|>assistant\n"
    )


def test_sfmed_templates_encode_chatml_with_the_doctor_instructions(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    messages = [{"role": "user", "content": "我发烧了"}, {"role": "assistant", "content": "量一下体温。"}]
    for name, instruction in (("sfmed", SINGLE_TURN_INSTRUCTION), ("sfmed_multiturn", MULTI_TURN_INSTRUCTION)):
        prompt_ids, answer_ids = TEMPLATES[name].encode_oneturn(tokenizer, messages)
        assert tokenizer.decode(prompt_ids) == (
            f"<|im_start|>system\n{instruction}<|im_end|>\n"
            "<|im_start|>user\n我发烧了<|im_end|>\n<|im_start|>assistant\n"
        )
        assert tokenizer.decode(answer_ids) == "量一下体温。<|im_end|>\n"
        qwen_prompt, _ = TEMPLATES["qwen"].encode_oneturn(tokenizer, messages, system=instruction)
        assert qwen_prompt == prompt_ids


def test_spec_validation():
    with pytest.raises(ValueError, match="num_attention_heads"):
        TinyModelSpec(hidden_size=60, num_attention_heads=8)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyModelSpec(vocab_size=200)


def test_cli_config_errors_name_the_file_and_option(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("output_dir: x\nhidden_sizes: 64\n")
    assert sfmed_main(["tiny-model", str(config)]) == 2
    assert f"{config}: unknown option(s) hidden_sizes" in capsys.readouterr().err
    config.write_text("- not a mapping\n")
    assert sfmed_main(["tiny-model", str(config)]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    assert sfmed_main(["tiny-model", "hidden_size=60", "num_attention_heads=8"]) == 2
    assert "command line: hidden_size must be a multiple of num_attention_heads" in capsys.readouterr().err
