"""The conversation layer: LLaMA-Factory rows read as LLaMA-Factory reads them and written so it reads them back,
and evaluation prompts encoded by LLaMA-Factory's template token for token as training encodes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfmed_lf.errors import DataError
from sfmed_lf.eval.config import EvalConfig
from sfmed_lf.eval.generate import LocalGenerator, generate_answers, item_prompt
from sfmed_lf.formats.conversation import Conversation, Prompt, Text
from sfmed_lf.formats.items import EvalItem
from sfmed_lf.formats.lf_rows import ENTRY_COLUMNS, DatasetEntry, infer_entry, render
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.formats.reading import Location
from sfmed_lf.tiny_model import build_tiny_model
from tests.helpers import lf_load_dataset

HERE = Location("rows.jsonl", 1, 1)
CONVERSATION = Conversation(
    "你是一名全科医生。",
    (("我头痛三天了。", "有没有发热？"), ("没有发热，但是睡不好。", "可能是紧张性头痛，注意休息。")),
    {"department": "神经内科"},
)
PAIR = PreferencePair("p1", CONVERSATION.prompt(), "可能是紧张性头痛，注意休息。", "多喝热水。")
# a chat template unlike the one training used (LLaMA-Factory's `sfmed`, ChatML): a checkpoint whose tokenizer
# carries another format must still be evaluated on the tokens it was trained on
FOREIGN_TEMPLATE = (
    "{% for m in messages %}{{ '[' + m['role'] + ']: ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant]: ' }}{% endif %}"
)


@pytest.mark.parametrize("form", ["alpaca", "sharegpt"])
def test_conversations_round_trip_through_every_form(form):
    entry = DatasetEntry.parse("it", ENTRY_COLUMNS[form], "dataset_info.json")
    row = render(CONVERSATION, form)
    assert row["metadata"] == {"department": "神经内科"}, "source fields that are not dialogue travel along"
    assert entry.read(HERE, row) == CONVERSATION, "and come back when the row is read"
    assert infer_entry("file", HERE, row).read(HERE, row) == entry.read(HERE, row)


def test_pairs_and_text_round_trip():
    ranking = DatasetEntry.parse("it", ENTRY_COLUMNS["ranking"], "dataset_info.json")
    row = render(PAIR, "ranking")
    assert ranking.read(HERE, row) == PAIR and ranking.read(HERE, row).key == PAIR.key
    labelled = PreferencePair("p2", PAIR.prompt, PAIR.chosen, PAIR.rejected, {"error": "wrong_drug"})
    assert ranking.read(HERE, render(labelled, "ranking")) == labelled  # what the measures group by
    assert DatasetEntry.parse("t", ENTRY_COLUMNS["pt"], "x").read(HERE, render(Text("正文", {"k": "v"}), "pt")) == Text(
        "正文", {"k": "v"}
    )
    assert render(Text("正文"), "pt") == {"text": "正文"}
    with pytest.raises(DataError, match="pre-training text has no alpaca form"):
        render(Text("正文"), "alpaca")


def test_column_mappings_are_read_as_llamafactory_reads_them():
    """MedicalGPT's reward files: question / response_chosen / response_rejected."""
    entry = DatasetEntry.parse(
        "medicalgpt",
        {
            "ranking": True,
            "columns": {"prompt": "question", "chosen": "response_chosen", "rejected": "response_rejected"},
        },
        "dataset_info.json",
    )
    row = {"question": "头痛怎么办？", "response_chosen": "注意休息。", "response_rejected": "不知道。"}
    pair = entry.read(HERE, row)
    assert (pair.prompt, pair.chosen, pair.rejected) == (Prompt("头痛怎么办？"), "注意休息。", "不知道。")
    sharegpt = DatasetEntry.parse(
        "openai",
        {
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        },
        "dataset_info.json",
    )
    messages = [{"role": "system", "content": "系统"}, {"role": "user", "content": "问"}]
    messages.append({"role": "assistant", "content": "答"})
    assert sharegpt.read(HERE, {"messages": messages}) == Conversation("系统", (("问", "答"),))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"conversations": [{"from": "gpt", "value": "答"}, {"from": "human", "value": "问"}]}, "turn_order"),
        ({"conversations": [{"from": "human", "value": "问"}, {"from": "doctor", "value": "答"}]}, "unknown_role"),
        ({"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "答"}]}, "empty_turn"),
        ({"conversations": [{"from": "human", "value": "问"}]}, "turn_order"),
        ({"conversations": "问"}, "wrong_type"),
    ],
)
def test_rows_llamafactory_would_skip_silently_are_errors(row, message):
    entry = DatasetEntry.parse("it", ENTRY_COLUMNS["sharegpt"], "dataset_info.json")
    with pytest.raises(DataError) as error:
        entry.read(HERE, {**row, "system": ""})
    assert error.value.code == message and str(error.value).startswith("rows.jsonl:1: field 'conversations'")


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory) -> Path:
    model = build_tiny_model(tmp_path_factory.mktemp("foreign") / "model")
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = FOREIGN_TEMPLATE
    config_path.write_text(json.dumps(config, ensure_ascii=False))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    return model


def test_evaluation_prompts_are_the_tokens_training_saw(foreign_model, tmp_path):
    """A multi-turn item with a system prompt: the ids `sfmed eval generate` feeds a local model are the prompt part of
    LLaMA-Factory's own supervised encoding of the same conversation (system and history included)."""
    item = EvalItem("x", "d", CONVERSATION.prompt(), reference=CONVERSATION.answer)
    row = render(item.prompt.answered(item.reference), "alpaca")
    (tmp_path / "row.json").write_text(json.dumps([row], ensure_ascii=False))
    entry = {"file_name": str(tmp_path / "row.json"), **ENTRY_COLUMNS["alpaca"]}
    dataset, tokenizer = lf_load_dataset(foreign_model, {"it": entry}, "it", "sft", tmp_path)
    trained_ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]

    config = EvalConfig(
        output_dir=str(tmp_path / "eval"), candidate_model_name_or_path=str(foreign_model), max_new_tokens=2
    )
    fed: list[list[int]] = []
    original_generate = LocalGenerator.__call__

    def recording(self, prompts):
        generate = self.model.generate

        def capture(input_ids, attention_mask, **kwargs):
            fed.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True))
            return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

        self.model.generate = capture
        return original_generate(self, prompts)

    LocalGenerator.__call__ = recording
    try:
        generate_answers(config, config.model("a"), [item])
    finally:
        LocalGenerator.__call__ = original_generate
    prompt_ids = fed[0]
    assert trained_ids[: len(prompt_ids)] == prompt_ids, "the prompt is what training encoded before the answer"
    assert labels[len(prompt_ids) - 1] == -100 and labels[len(prompt_ids)] == trained_ids[len(prompt_ids)]
    assert tokenizer.decode(trained_ids[len(prompt_ids) :]).startswith(CONVERSATION.answer)
    assert item_prompt(item, None).system == CONVERSATION.system, "the item's own system prompt is kept"
    chat_template_ids = tokenizer.apply_chat_template(item_prompt(item, None).messages(), add_generation_prompt=True)
    assert chat_template_ids != prompt_ids, "the checkpoint's own chat template would have shown other tokens"
