"""Answers of one model to every item: a local checkpoint (batched greedy ``generate`` on prompts rendered by
LLaMA-Factory's chat template, exactly as training and ``llamafactory-cli chat|api`` render them) or an
OpenAI-compatible endpoint (concurrent requests; the server applies its template). Output ``answers/<a|b>.jsonl``,
one line per item id, resumable."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.eval.config import EvalConfig, ModelSource
from sfmed_lf.eval.mcq import format_prompt
from sfmed_lf.formats.conversation import Prompt
from sfmed_lf.formats.items import EvalItem
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.templates import MULTI_TURN_INSTRUCTION, SINGLE_TURN_INSTRUCTION
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint, text_digest

# a line of answers/<a|b>.jsonl: `sfmed eval generate` writes it, rouge, judge and mcq read it
ANSWER_FIELDS = {"id": str, "item": str, "model": str, "response": str}


def answers_file(path: str | os.PathLike[str], read_only: bool = False) -> ResumableJsonl:
    return ResumableJsonl(path, fields=ANSWER_FIELDS, written_by="sfmed eval generate", read_only=read_only)


def item_prompt(item: EvalItem, system: str | None) -> Prompt:
    """What an evaluated model is asked: the item's own system prompt, else ``system``, else SF-Med's doctor
    instruction (the multi-turn one when there is history); an MCQ question with its options and answer format."""
    prompt = item.prompt
    if not prompt.system:
        default = MULTI_TURN_INSTRUCTION if prompt.history else SINGLE_TURN_INSTRUCTION
        prompt = Prompt(prompt.question, prompt.history, system if system is not None else default)
    if item.exam is not None:
        question = format_prompt(item.exam.question, dict(item.exam.options), item.exam.multi_answer)
        prompt = Prompt(question, prompt.history, prompt.system)
    return prompt


def answer_key(item: EvalItem) -> dict[str, str]:
    """An answer belongs to an item id and the item's content: a changed item is never answered by an old answer."""
    return {"id": item.id, "item": text_digest(json.dumps(item.row(), ensure_ascii=False, sort_keys=True))}


def stale_answers(output: ResumableJsonl, items: list[EvalItem]) -> list[str]:
    """Ids whose written answer was given to another version of the item."""
    return [
        item.id for item in items if item.id in output and output.records[item.id]["item"] != answer_key(item)["item"]
    ]


def _batches(items: list[EvalItem], size: int) -> Iterator[list[EvalItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LocalGenerator:
    """Greedy decoding of left-padded batches; prompts are LLaMA-Factory's encoding under ``template``."""

    def __init__(self, path: str, template: str, max_new_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sfmed_lf.formats.lf_template import ChatTemplate

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.template = ChatTemplate(self.tokenizer, template)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.max_new_tokens = max_new_tokens

    def prompt_ids(self, prompts: list[Prompt]) -> list[list[int]]:
        return [self.template.prompt_ids(prompt) for prompt in prompts]

    def __call__(self, prompts: list[Prompt]) -> list[str]:
        torch = self.torch
        encoded = self.prompt_ids(prompts)
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention.to(self.model.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        new_tokens = output[:, width:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_provenance(config: EvalConfig, source: ModelSource) -> dict[str, Any]:
    """What the answers depend on; a resumed run must match it, so answers of two models are never mixed."""
    return {
        "endpoint": source.endpoint,
        "served_model": source.served_model if source.endpoint else None,
        "model": model_fingerprint(source.path) if source.path else None,
        "template": source.template if source.path else None,
        "system": config.system,
        "max_new_tokens": config.max_new_tokens,
    }


def generate_answers(config: EvalConfig, source: ModelSource, items: list[EvalItem]) -> ResumableJsonl:
    check_provenance(config.answers_path(source.label), answer_provenance(config, source))
    output = answers_file(config.answers_path(source.label))
    stale = stale_answers(output, items)
    if stale:
        raise DataError(
            f"{output.path}: the items {stale[:3]} changed since they were answered; use a new output_dir or delete "
            "the answers to start over."
        )
    todo = [item for item in items if item.id not in output]
    if not todo:
        return output
    progress = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"answers of {source.name}", unit="item")
    if source.endpoint:
        endpoint = config.endpoint(source.endpoint, source.served_model)

        def answer(item: EvalItem) -> str:
            messages = item_prompt(item, config.system).messages()
            return endpoint.complete(messages, temperature=0.0, max_tokens=config.max_new_tokens)

        try:
            for batch in _batches(todo, config.concurrency * 4):
                for item, response in zip(batch, map_concurrently(answer, batch, config.concurrency), strict=True):
                    output.append({**answer_key(item), "model": source.name, "response": response})
                    progress.update()
        finally:
            endpoint.close()
    elif source.path:
        generator = LocalGenerator(source.path, source.template, config.max_new_tokens)
        for batch in _batches(todo, config.batch_size):
            responses = generator([item_prompt(item, config.system) for item in batch])
            for item, response in zip(batch, responses, strict=True):
                output.append({**answer_key(item), "model": source.name, "response": response})
            progress.update(len(batch))
    else:
        raise ValueError(f"{source.role}: give {source.role}_model_name_or_path or {source.role}_url.")
    progress.close()
    return output
