"""``sfmed pref sample``: k responses per prompt from the SFT model (SF-Med §3.3).

The prompts are the SFT conversations of ``datasets`` (dataset_info names) without their last answer. The model is
asked through an OpenAI-compatible endpoint (``vllm serve`` or ``llamafactory-cli api``; k requests per prompt,
``seed + i`` sent for servers that honour it) or, with ``model_name_or_path`` and no URL, in process through
LLaMA-Factory's ChatModel (hf or vLLM engine, ``num_return_sequences = k``). ``responses.jsonl`` gets one line
per prompt once all k are in, so a killed run re-asks only unfinished prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Prompt
from sfmed_lf.formats.datasets import local_dataset
from sfmed_lf.formats.reading import Location
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint, text_digest

RESPONSES = "responses.jsonl"


def prompt_row(prompt_id: str, prompt: Prompt) -> dict[str, Any]:
    return {
        "id": prompt_id,
        "system": prompt.system,
        "history": [list(turn) for turn in prompt.history],
        "question": prompt.question,
    }


def prompt_of(location: Location, row: dict[str, Any]) -> Prompt:
    """The prompt of a ``responses.jsonl`` row (what the judge step reads back)."""
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, list) and len(t) == 2 for t in history):
        raise location.error("must be a list of [question, answer] pairs.", "history")
    question, system = row.get("question"), row.get("system") or ""
    if not isinstance(question, str) or not isinstance(system, str):
        raise location.error("question and system must be text.", "question")
    return Prompt(question, tuple((q, a) for q, a in history), system)


def load_prompts(config: PreferenceConfig) -> list[tuple[str, Prompt]]:
    """(id ``DATASET:ROW``, prompt: system, history, question) of each SFT row of ``datasets``; its answer is not
    used."""
    config.require("datasets")
    prompts = []
    for name in config.datasets:
        dataset = local_dataset(config.dataset_dir, name)
        if dataset.entry is not None and dataset.entry.kind != "sft":
            raise DataError(f"datasets: {name} is {dataset.entry.kind} data; prompts come from SFT conversations.")
        for location, _, sample in dataset.records():
            assert isinstance(sample, Conversation)
            prompts.append((f"{name}:{location.row}", sample.prompt()))
            if config.max_prompts and len(prompts) == config.max_prompts:
                return prompts
    if not prompts:
        raise DataError(f"datasets: {', '.join(config.datasets)} hold no prompts.")
    return prompts


def sample_responses(config: PreferenceConfig) -> list[Path]:
    prompts = load_prompts(config)
    source = {"endpoint": config.policy_url, "served_model": config.policy_model} if config.policy_url else None
    if source is None:
        config.require("model_name_or_path")
        source = {"model": model_fingerprint(config.model_name_or_path), "template": config.template}
        source["seed"] = config.seed
    path = config.out / RESPONSES
    prompt_digest = text_digest(json.dumps([[i, p.texts()] for i, p in prompts], ensure_ascii=False))
    check_provenance(
        path,
        {
            **source,
            "prompts": prompt_digest,
            "k": config.num_responses,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_new_tokens": config.max_new_tokens,
        },
    )
    output = ResumableJsonl(path)
    todo = [(prompt_id, prompt) for prompt_id, prompt in prompts if prompt_id not in output]
    progress = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="sample responses", unit="prompt")
    k = config.num_responses
    if config.policy_url:
        endpoint = config.endpoint(config.policy_url, config.policy_model)

        def ask(task: tuple[Prompt, int]) -> str:
            prompt, index = task
            return endpoint.complete(
                prompt.messages(),
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_new_tokens,
                seed=config.seed + index,
            )

        try:
            for start in range(0, len(todo), config.concurrency):
                chunk = todo[start : start + config.concurrency]
                tasks = [(prompt, index) for _, prompt in chunk for index in range(k)]
                answers = list(map_concurrently(ask, tasks, config.concurrency))
                for position, (prompt_id, prompt) in enumerate(chunk):
                    responses = answers[position * k : (position + 1) * k]
                    output.append({**prompt_row(prompt_id, prompt), "responses": responses})
                progress.update(len(chunk))
        finally:
            endpoint.close()
    elif todo:
        from sfmed_lf.serving.lf_chat import InProcessChatModel

        policy = InProcessChatModel(
            config.model_name_or_path,
            config.template,
            config.infer_backend,
            config.seed,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
        )
        for prompt_id, prompt in todo:
            output.append({**prompt_row(prompt_id, prompt), "responses": policy.answers(prompt, k)})
            progress.update()
    progress.close()
    return [path]
