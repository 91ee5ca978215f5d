"""The embedded tiny default: a Qwen2-architecture model (random weights until trained) with a tokenizer built from
text on this machine, so every recipe runs offline on a laptop CPU.

Two tokenizers:

* ``char`` (default): one token per character of the corpus (each Han character one token), byte tokens for
  anything else. On a few hundred thousand characters of Chinese text, a model of a few million parameters learns
  templated knowledge in minutes on two CPU cores with it, far faster than with a BPE vocabulary of the same size
  (whose tokens mostly occur too rarely to be learned on such a budget).
* ``bpe``: byte-level BPE trained on the corpus (what larger Qwen models use).

Two sizes, by name: :data:`WORLD` (the default, sized so continued pre-training and SFT on the generated world learn
it within the demo's CPU budget; see ``sfmed world generate``) and :meth:`TinyModelSpec.random_init` (a 64-wide
two-layer model for tests that need a model in milliseconds and nothing learned).

Deterministic: the same package version, corpus and seed give byte-identical files. The tokenizer carries
Qwen2/2.5's special tokens and a ChatML chat template.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from sfmed_lf.steps import Step, StepConfig

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


TOKENIZERS = ("char", "bpe")
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(256))
# printable ASCII is always in a char vocabulary: letters, digits and punctuation of prompts, ids and numbers
ASCII_CHARACTERS = "".join(chr(code) for code in range(32, 127)) + "\n"
TEXT_SUFFIXES = (".txt", ".json", ".jsonl")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TinyModelSpec:
    tokenizer: str = field(default="char", metadata=_help("char (one token per character) or bpe (byte-level BPE)"))
    corpus: tuple[str, ...] | str = field(
        default=(), metadata=_help("text files or directories of .txt/.json/.jsonl the tokenizer is built from")
    )
    vocab_size: int | None = field(
        default=None, metadata=_help("bpe: vocabulary to train; char: embedding rows (default: tokens, rounded up)")
    )
    hidden_size: int = field(default=192, metadata=_help("width of the model (a multiple of num_attention_heads)"))
    intermediate_size: int = field(default=512, metadata=_help("width of each MLP"))
    num_hidden_layers: int = field(default=4, metadata=_help("transformer layers"))
    num_attention_heads: int = field(default=6, metadata=_help("query heads (a multiple of num_key_value_heads)"))
    num_key_value_heads: int = field(default=2, metadata=_help("key/value heads (grouped-query attention)"))
    max_position_embeddings: int = field(default=2048, metadata=_help("longest sequence, in tokens"))
    seed: int = field(default=0, metadata=_help("seed of the random initial weights"))

    def __post_init__(self) -> None:
        if isinstance(self.corpus, str | list):
            object.__setattr__(self, "corpus", (self.corpus,) if isinstance(self.corpus, str) else tuple(self.corpus))
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, not {self.tokenizer!r}.")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "hidden_size must be a multiple of num_attention_heads, and num_attention_heads a "
                "multiple of num_key_value_heads."
            )
        if self.vocab_size is not None and self.vocab_size < 256 + len(QWEN_SPECIAL_TOKENS) + 1:
            raise ValueError("vocab_size must leave room for the 256 bytes and Qwen's special tokens.")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            object.__setattr__(self, "vocab_size", 2048)

    @classmethod
    def random_init(cls, **overrides: Any) -> TinyModelSpec:
        """The millisecond model: 64 wide, two layers, byte-level BPE of 2048 on the bundled corpus. Nothing it
        computes means anything; use it where a test needs a model, not a trained one."""
        preset = {"tokenizer": "bpe", "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 176}
        return cls(**{**preset, "num_hidden_layers": 2, "num_attention_heads": 4, **overrides})


@dataclass(frozen=True)
class TinyModelConfig(TinyModelSpec, StepConfig):
    """``sfmed tiny-model`` YAML: the spec plus where to write the model."""

    output_dir: str = field(default="models/sfmed-tiny", metadata=_help("the model directory (replaced atomically)"))

    def spec(self) -> TinyModelSpec:
        return TinyModelSpec(**{f.name: getattr(self, f.name) for f in fields(TinyModelSpec)})


class TinyModel(Step[TinyModelConfig]):
    """``sfmed tiny-model [CONFIG.yaml] [key=value ...]``: a step of the registry
    (:data:`sfmed_lf.steps.TOP_LEVEL_STEPS`); it writes ``output_dir``."""

    name, config = "tiny-model", TinyModelConfig
    help = "build the embedded tiny Qwen2 model and tokenizer (offline)"

    def run(self, config: TinyModelConfig) -> list[Path]:
        return [build_tiny_model(config.output_dir, config.spec())]


def bundled_corpus() -> list[str]:
    text = resources.files("sfmed_lf").joinpath("resources/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _file_texts(path: Path) -> Iterator[str]:
    from sfmed_lf.errors import DataError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"tokenizer corpus {path}: cannot read ({error}).") from error
    if path.suffix == ".txt":
        yield from text.splitlines()
        return
    try:
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else [json.loads(text)]
        )
    except json.JSONDecodeError as error:
        raise DataError(f"tokenizer corpus {path}: not valid JSON ({error.msg}, line {error.lineno}).") from error
    for row in rows:
        yield from _strings(row)


def corpus_texts(spec: TinyModelSpec) -> list[str]:
    """The texts the tokenizer is built from: every string of the corpus files (directories: their .txt, .json and
    .jsonl files, sorted), plus the bundled corpus and the package's prompts."""
    from sfmed_lf.errors import DataError
    from sfmed_lf.templates import (
        MULTI_ANSWER_PROMPT,
        MULTI_TURN_INSTRUCTION,
        SINGLE_ANSWER_PROMPT,
        SINGLE_TURN_INSTRUCTION,
    )

    texts = [
        *bundled_corpus(),
        SINGLE_TURN_INSTRUCTION,
        MULTI_TURN_INSTRUCTION,
        SINGLE_ANSWER_PROMPT,
        MULTI_ANSWER_PROMPT,
    ]
    for entry in spec.corpus:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"tokenizer corpus {path}: no such file or directory.")
        for file in files:
            texts.extend(_file_texts(file))
    return texts


def character_vocabulary(texts: list[str]) -> list[str]:
    """Characters of ``texts`` by falling frequency (ties by code point), ASCII first: a deterministic order."""
    import unicodedata

    counts = Counter(char for text in texts for char in unicodedata.normalize("NFC", text))
    ascii_set = set(ASCII_CHARACTERS)
    rest = sorted((char for char in counts if char not in ascii_set), key=lambda c: (-counts[c], ord(c)))
    return list(ASCII_CHARACTERS) + rest


def train_tokenizer(spec: TinyModelSpec):  # noqa: ANN201 - tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if spec.tokenizer == "char":
        characters = character_vocabulary(corpus_texts(spec))
        vocab = {token: index for index, token in enumerate((*BYTE_TOKENS, *characters))}
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
        return tokenizer
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
    texts = bundled_corpus() if not spec.corpus else corpus_texts(spec)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))  # after training: ids follow the learned vocabulary
    return tokenizer


def embedding_rows(spec: TinyModelSpec, tokens: int) -> int:
    """The model's vocab_size: the spec's, or the tokenizer's length rounded up to a multiple of 64."""
    if spec.vocab_size is not None:
        if spec.vocab_size < tokens:
            raise ValueError(f"vocab_size={spec.vocab_size} is smaller than the tokenizer's {tokens} tokens.")
        return spec.vocab_size
    return -(-tokens // 64) * 64


def build_tiny_model(output_dir: str | os.PathLike[str], spec: TinyModelSpec | None = None) -> Path:
    """Write tokenizer, config and random weights to ``output_dir`` (replaced atomically as a whole)."""
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from sfmed_lf.templates import SINGLE_TURN_INSTRUCTION

    spec = spec or TinyModelSpec()
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))

    tokenizer_object = train_tokenizer(spec)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
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
        vocab_size=embedding_rows(spec, len(tokenizer)),
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


STEP = TinyModel()
