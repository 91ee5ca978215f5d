"""The embedded tiny default: a Qwen2-architecture model with random weights and a byte-level BPE tokenizer
trained on text bundled with the package, so every recipe runs offline on a laptop CPU.

Deterministic: the same package version and seed give byte-identical files. The tokenizer carries Qwen2/2.5's
special tokens and a ChatML chat template; the model is small enough that a DPO step takes milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Qwen2/2.5's special tokens, in their vocabulary order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"

# ChatML, the format of Qwen's chat models; the default system prompt is SF-Med's single-turn instruction.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "hidden_size must be a multiple of num_attention_heads, and num_attention_heads a "
                "multiple of num_key_value_heads."
            )
        if self.vocab_size < 256 + len(QWEN_SPECIAL_TOKENS) + 1:
            raise ValueError("vocab_size must leave room for the 256 bytes and Qwen's special tokens.")


@dataclass(frozen=True)
class TinyModelConfig(TinyModelSpec):
    """``sfmed tiny-model`` YAML: the spec plus where to write the model."""

    output_dir: str = "models/sfmed-tiny"


def bundled_corpus() -> list[str]:
    text = resources.files("sfmed_lf").joinpath("resources/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def train_tokenizer(spec: TinyModelSpec):  # noqa: ANN201 - tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - len(QWEN_SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(bundled_corpus(), trainer=trainer)
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))  # after training: ids follow the learned vocabulary
    return tokenizer


def build_tiny_model(output_dir: str | os.PathLike[str], spec: TinyModelSpec | None = None) -> Path:
    """Write tokenizer, config and random weights to ``output_dir`` (replaced atomically as a whole)."""
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from sfmed_lf.templates import SINGLE_TURN_INSTRUCTION

    spec = spec or TinyModelSpec()
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=spec.max_position_embeddings,
        chat_template=CHAT_TEMPLATE.replace("default_system", json.dumps(SINGLE_TURN_INSTRUCTION, ensure_ascii=False)),
        additional_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(staging)

    config = Qwen2Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(staging, safe_serialization=True)

    staging.chmod(0o755)
    for written in staging.iterdir():
        written.chmod(0o644)
    if output_dir.exists():  # swap, then delete the old copy: readers never see a half-written model
        retired = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.old."))
        output_dir.rename(retired / "model")
        os.replace(staging, output_dir)
        shutil.rmtree(retired)
    else:
        os.replace(staging, output_dir)
    return output_dir
