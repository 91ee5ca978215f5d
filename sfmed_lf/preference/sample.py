"""``sfmed pref sample``: k responses per prompt from the SFT model (SF-Med §3.3).

The model is asked through an OpenAI-compatible endpoint (``vllm serve`` or ``llamafactory-cli api``; k requests
per prompt, ``seed + i`` sent for servers that honour it) or, with ``policy_path`` and no URL, in process through
LLaMA-Factory's ChatModel (hf or vLLM engine, ``num_return_sequences = k``). ``responses.jsonl`` gets one line
per prompt once all k are in, so a killed run re-asks only unfinished prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.data_prep.converters import RAW_FORMATS, Dialogue
from sfmed_lf.errors import DataError
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint

RESPONSES = "responses.jsonl"


def load_prompts(config: PreferenceConfig) -> list[dict[str, Any]]:
    """Prompts (system, history, question) from an SFT file; its answers are not used."""
    config.require("prompts")
    raw_format = RAW_FORMATS[config.prompt_format]
    prompts = []
    for number, row in raw_format.rows(config.prompts):
        dialogue = raw_format.parse(config.prompts, number, row)
        assert isinstance(dialogue, Dialogue)
        *history, (question, _answer) = dialogue.turns
        prompts.append(
            {"id": f"p{number}", "system": dialogue.system, "history": [list(t) for t in history], "question": question}
        )
        if config.max_prompts and len(prompts) == config.max_prompts:
            break
    if not prompts:
        raise DataError(f"{config.prompts}: no prompts.")
    return prompts


def chat_messages(prompt: dict[str, Any]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": prompt["system"]}] if prompt["system"] else []
    for question, answer in prompt["history"]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": prompt["question"]}]


class InProcessPolicy:
    """LLaMA-Factory's ChatModel (``policy_backend``: hf or vLLM engine) on ``policy_path`` with the template."""

    def __init__(self, config: PreferenceConfig) -> None:
        from llamafactory.chat import ChatModel
        from transformers import set_seed

        set_seed(config.seed)
        self.model = ChatModel(
            {
                "model_name_or_path": config.policy_path,
                "template": config.template,
                "infer_backend": config.policy_backend,
                "do_sample": True,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "max_new_tokens": config.max_tokens,
            }
        )
        self.k = config.num_responses

    def __call__(self, prompt: dict[str, Any]) -> list[str]:
        messages = chat_messages(prompt)
        system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
        responses = self.model.chat(messages, system=system, num_return_sequences=self.k)
        return [response.response_text for response in responses]


def sample_responses(config: PreferenceConfig) -> list[Path]:
    prompts = load_prompts(config)
    source = {"endpoint": config.policy_url, "served_model": config.policy_model} if config.policy_url else None
    if source is None:
        config.require("policy_path")
        source = {"model": model_fingerprint(config.policy_path), "template": config.template, "seed": config.seed}
    path = config.out / RESPONSES
    check_provenance(
        path,
        {
            **source,
            "prompts": config.prompts,
            "k": config.num_responses,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_tokens,
        },
    )
    output = ResumableJsonl(path)
    todo = [prompt for prompt in prompts if prompt["id"] not in output]
    progress = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="sample responses", unit="prompt")
    if config.policy_url:
        endpoint = config.endpoint(config.policy_url, config.policy_model)

        def ask(task: tuple[dict[str, Any], int]) -> str:
            prompt, index = task
            return endpoint.complete(
                chat_messages(prompt),
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
                seed=config.seed + index,
            )

        k = config.num_responses
        try:
            for start in range(0, len(todo), config.concurrency):
                chunk = todo[start : start + config.concurrency]
                tasks = [(prompt, index) for prompt in chunk for index in range(k)]
                answers = list(map_concurrently(ask, tasks, config.concurrency))
                for position, prompt in enumerate(chunk):
                    output.append({**prompt, "responses": answers[position * k : (position + 1) * k]})
                progress.update(len(chunk))
        finally:
            endpoint.close()
    else:
        policy = InProcessPolicy(config) if todo else None
        for prompt in todo:
            output.append({**prompt, "responses": policy(prompt)})
            progress.update()
    progress.close()
    return [path]
