"""``sfmed_dropout`` (SF-Med §4.1): the rate reaches the attention of a Qwen2 model LLaMA-Factory builds for training,
changes its train-mode forward passes, is absent when unset, stays out of the saved config, and is refused where it
cannot be honoured."""

from __future__ import annotations

import pytest
import torch
from llamafactory.hparams import get_train_args
from llamafactory.hparams.parser import _parse_train_args
from llamafactory.model import load_model, load_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from sfmed_lf.tiny_model import build_tiny_model
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("dropout") / "model")


def train_args(model_dir, tmp_path, **options):
    return {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "sfmed_sample_sft_single",
        "dataset_dir": str(REPO_ROOT),
        "template": "sfmed",
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        **options,
    }


def loaded(model_dir, tmp_path, is_trainable=True, **options):
    model_args, _, _, finetuning_args, _ = get_train_args(train_args(model_dir, tmp_path, **options))
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    return load_model(tokenizer, model_args, finetuning_args, is_trainable=is_trainable)


def forward_twice(model) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        return model(input_ids=ids).logits, model(input_ids=ids).logits


def attention_rates(model) -> set[float]:
    return {module.attention_dropout for module in model.modules() if hasattr(module, "attention_dropout")}


def test_dropout_is_active_in_training_and_absent_when_unset(tiny, tmp_path):
    torch.manual_seed(0)
    model = loaded(tiny, tmp_path, sfmed_dropout=0.1)
    assert attention_rates(model) == {0.1}
    model.train()
    first, second = forward_twice(model)
    assert (first - second).abs().max() > 1e-3  # different dropout masks
    model.eval()
    first, second = forward_twice(model)
    assert torch.equal(first, second)
    assert model.config.attention_dropout == 0.0  # the saved config keeps the checkpoint's value

    unset = loaded(tiny, tmp_path)
    assert attention_rates(unset) == {0.0}
    unset.train()
    first, second = forward_twice(unset)
    assert torch.equal(first, second)

    inference = loaded(tiny, tmp_path, is_trainable=False, sfmed_dropout=0.1)  # only models built for training
    assert attention_rates(inference) == {0.0}


def test_an_architecture_with_unknown_dropout_fields_is_refused(tiny, tmp_path):
    llama = tmp_path / "llama"
    config = LlamaConfig(
        vocab_size=2100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(llama)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (llama / name).write_bytes((tiny / name).read_bytes())
    with pytest.raises(ValueError, match=r"sfmed_dropout: the dropout fields of model type 'llama' .* not known"):
        loaded(llama, tmp_path, sfmed_dropout=0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sfmed_dropout": 1.0}, r"sfmed_dropout must lie in \[0, 1\)"),
        ({"sfmed_dropout": -0.1}, r"sfmed_dropout must lie in \[0, 1\)"),
        (
            {"sfmed_dropout": 0.1, "stage": "dpo", "dataset": "sfmed_sample_dpo_pairs"},
            "LLaMA-Factory's DPO trainer trains without dropout",
        ),
    ],
)
def test_invalid_dropout_settings_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        _parse_train_args(train_args("unused", tmp_path, **options))
