"""Greedy continuations of token-id prompts in left-padded batches: the audit's continuation of training prefixes
and the calibration's answers to perturbed and control prompts."""

from __future__ import annotations

import torch


@torch.inference_mode()
def greedy_continuations(
    model: torch.nn.Module,
    prompts: list[list[int]],
    pad_id: int,
    max_new_tokens: int,
    eos_ids: list[int] | None = None,
    batch_size: int = 16,
) -> list[list[int]]:
    """Generated ids of each prompt (prompt excluded, cut after the first stop token), in the prompts' order."""
    device = next(model.parameters()).device
    outputs: list[list[int] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
        attention = torch.tensor(
            [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device
        )
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=False,
            pad_token_id=pad_id,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,
            **({"eos_token_id": eos_ids} if eos_ids else {}),
        )
        for position, index in enumerate(batch):
            ids = generated[position, width:].tolist()
            stop = next((k for k, token in enumerate(ids) if eos_ids and token in eos_ids), None)
            outputs[index] = ids if stop is None else ids[: stop + 1]
    return [ids or [] for ids in outputs]
