"""Answers of one model to every item: local checkpoint (batched greedy ``generate``) or an OpenAI-compatible
endpoint (concurrent requests). Output ``answers/<a|b>.jsonl``, one line per item id, resumable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from sfmed_lf.eval.config import EvalConfig, ModelSource
from sfmed_lf.eval.mcq import format_prompt
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.templates import MULTI_TURN_INSTRUCTION, SINGLE_TURN_INSTRUCTION
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint


def item_messages(item: dict[str, Any], system: str | None) -> list[dict[str, str]]:
    """The chat an evaluated model sees: system prompt, dialogue history, then the question."""
    history = item.get("history") or []
    if system is None:
        system = MULTI_TURN_INSTRUCTION if history else SINGLE_TURN_INSTRUCTION
    question = item["question"]
    if item["kind"] == "mcq":
        question = format_prompt(question, item["options"], item.get("multi_answer", False))
    messages = [{"role": "system", "content": system}]
    for user_turn, assistant_turn in history:
        messages += [{"role": "user", "content": user_turn}, {"role": "assistant", "content": assistant_turn}]
    return [*messages, {"role": "user", "content": question}]


def _batches(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LocalGenerator:
    """Greedy decoding with the checkpoint's own chat template, left-padded batches."""

    def __init__(self, path: str, max_new_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, chats: list[list[dict[str, str]]]) -> list[str]:
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        with self.torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_provenance(config: EvalConfig, source: ModelSource) -> dict[str, Any]:
    """What the answers depend on; a resumed run must match it, so answers of two models are never mixed."""
    return {
        "endpoint": source.endpoint,
        "served_model": source.served_model if source.endpoint else None,
        "model": model_fingerprint(source.path) if source.path else None,
        "system": config.system,
        "max_new_tokens": config.max_new_tokens,
    }


def generate_answers(config: EvalConfig, source: ModelSource, items: list[dict[str, Any]]) -> ResumableJsonl:
    check_provenance(config.answers_path(source.label), answer_provenance(config, source))
    output = ResumableJsonl(config.answers_path(source.label))
    todo = [item for item in items if item["id"] not in output]
    if not todo:
        return output
    progress = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"answers of {source.name}", unit="item")
    if source.endpoint:
        endpoint = config.endpoint(source.endpoint, source.served_model)

        def answer(item: dict[str, Any]) -> str:
            messages = item_messages(item, config.system)
            return endpoint.complete(messages, temperature=0.0, max_tokens=config.max_new_tokens)

        try:
            for batch in _batches(todo, config.concurrency * 4):
                for item, response in zip(batch, map_concurrently(answer, batch, config.concurrency), strict=True):
                    output.append({"id": item["id"], "model": source.name, "response": response})
                    progress.update()
        finally:
            endpoint.close()
    elif source.path:
        generator = LocalGenerator(source.path, config.max_new_tokens)
        for batch in _batches(todo, config.batch_size):
            responses = generator([item_messages(item, config.system) for item in batch])
            for item, response in zip(batch, responses, strict=True):
                output.append({"id": item["id"], "model": source.name, "response": response})
            progress.update(len(batch))
    else:
        raise ValueError(f"model_{source.label}: give model_{source.label}_path or model_{source.label}_endpoint.")
    progress.close()
    return output
