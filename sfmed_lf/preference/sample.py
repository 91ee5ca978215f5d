"""``sfmed pref sample``: k responses per prompt from the SFT model (SF-Med §3.3).

The prompts are the SFT conversations of ``datasets`` (dataset_info names) without their last answer. The model is
asked through an OpenAI-compatible endpoint (``vllm serve`` or ``llamafactory-cli api``; k requests per prompt,
``seed + i`` sent for servers that honour it) or, with ``model_name_or_path`` and no URL, in process through
LLaMA-Factory's ChatModel (hf or vLLM engine, ``num_return_sequences = k``). ``responses.jsonl`` gets one line
per prompt once all k are in, so a killed run re-asks only unfinished prompts. With the hf engine and
``policy_batch_size`` > 1, that many prompts are sampled in one ``generate`` call (prompts encoded by LLaMA-Factory's
template, as its engine encodes them) — on a CPU, that many times faster for a small model.

A prompt row may carry ``candidates``: answers written elsewhere (``sfmed world generate`` writes a correct one and
a fluent wrong one), appended after the k sampled responses, so they are paired and judged like them. Their count
must be even (responses are judged in pairs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Prompt
from sfmed_lf.formats.datasets import local_dataset
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint, text_digest

RESPONSES = "responses.jsonl"
# a line of responses.jsonl: this step writes it, `sfmed pref judge` reads it
RESPONSE_FIELDS = {"id": str, "system": str, "history": list[tuple[str, str]], "question": str, "responses": list[str]}


def prompt_row(prompt_id: str, prompt: Prompt) -> dict[str, Any]:
    return {
        "id": prompt_id,
        "system": prompt.system,
        "history": [list(turn) for turn in prompt.history],
        "question": prompt.question,
    }


def prompt_of(row: dict[str, Any]) -> Prompt:
    """The prompt of a ``responses.jsonl`` row whose fields are checked (:data:`RESPONSE_FIELDS`)."""
    return Prompt(row["question"], tuple((q, a) for q, a in row["history"]), row["system"])


def load_prompts(config: PreferenceConfig) -> list[tuple[str, Prompt, list[str]]]:
    """(id ``DATASET:ROW``, prompt: system, history, question, candidate answers) of each SFT row of ``datasets``;
    its answer is not used. A row's ``candidates`` column, when present, must hold an even number of answers."""
    config.require("datasets")
    prompts = []
    for name in config.datasets:
        dataset = local_dataset(config.dataset_dir, name)
        if dataset.entry is not None and dataset.entry.kind != "sft":
            raise DataError(f"datasets: {name} is {dataset.entry.kind} data; prompts come from SFT conversations.")
        for location, row, sample in dataset.records():
            assert isinstance(sample, Conversation)
            candidates = row.get("candidates") or []
            if (
                not isinstance(candidates, list)
                or len(candidates) % 2
                or not all(isinstance(c, str) and c.strip() for c in candidates)
            ):
                raise location.error("must be an even number of non-empty answers.", "candidates")
            prompts.append((f"{name}:{location.row}", sample.prompt(), candidates))
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
        if config.policy_batch_size > 1:
            source["batch_size"] = config.policy_batch_size  # the random draws depend on the batching
    path = config.out / RESPONSES
    prompt_digest = text_digest(json.dumps([[i, p.texts(), c] for i, p, c in prompts], ensure_ascii=False))
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
    output = ResumableJsonl(path, fields=RESPONSE_FIELDS, written_by="sfmed pref sample")
    todo = [entry for entry in prompts if entry[0] not in output]
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
                tasks = [(prompt, index) for _, prompt, _ in chunk for index in range(k)]
                answers = list(map_concurrently(ask, tasks, config.concurrency))
                for position, (prompt_id, prompt, candidates) in enumerate(chunk):
                    responses = answers[position * k : (position + 1) * k] + candidates
                    output.append({**prompt_row(prompt_id, prompt), "responses": responses})
                progress.update(len(chunk))
        finally:
            endpoint.close()
    elif todo and config.policy_batch_size > 1 and config.infer_backend == "huggingface":
        from sfmed_lf.serving.lf_chat import BatchedSampler

        sampler = BatchedSampler(
            config.model_name_or_path,
            config.template,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
        )
        for start in range(0, len(todo), config.policy_batch_size):
            chunk = todo[start : start + config.policy_batch_size]
            # seeded by the chunk's first prompt: a resumed run draws for a prompt what a whole run would have
            seed = config.seed + [entry[0] for entry in prompts].index(chunk[0][0])
            sampled = sampler.sample([prompt for _, prompt, _ in chunk], k, seed)
            for (prompt_id, prompt, candidates), responses in zip(chunk, sampled, strict=True):
                output.append({**prompt_row(prompt_id, prompt), "responses": responses + candidates})
            progress.update(len(chunk))
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
        for prompt_id, prompt, candidates in todo:
            output.append({**prompt_row(prompt_id, prompt), "responses": policy.answers(prompt, k) + candidates})
            progress.update()
    progress.close()
    return [path]
