"""The model's own intermediate embedding of a text: one hidden layer, pooled over tokens, centred, L2-normalised,
so that the inner product of two embeddings is their cosine similarity (what the guard's input check thresholds).

Centring: raw hidden states of a language model share a dominant common direction (anisotropy; Ethayarajh 2019,
"How Contextual are Contextualized Word Representations?"), which makes any two texts look alike (cosine ~0.8 on
the tiny model). Subtracting the mean pooled state of a reference set (the audited records' queries) removes it, as
in Su et al. 2021 ("Whitening Sentence Representations"), so that unrelated requests fall well below the threshold.

Texts are embedded in batches, right-padded: a causal model's states at the real tokens do not depend on padding
that follows them, and pooling reads only the real tokens, so a batch gives each text's unbatched embedding (up to
float rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def resolve_layer(model: torch.nn.Module, layer: int | None) -> int:
    layers = model.config.num_hidden_layers
    chosen = layers // 2 if layer is None else layer
    if not -(layers + 1) <= chosen <= layers:
        raise ValueError(f"layer {layer} does not exist: the model has hidden states 0..{layers}.")
    return chosen % (layers + 1)


@torch.inference_mode()
def pooled_states(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    layer: int,
    pooling: str,
    batch_size: int = 32,
    max_tokens: int = 512,
) -> np.ndarray:
    """float32 array (len(texts), hidden size): hidden state ``layer`` pooled over each text's tokens (a text
    longer than ``max_tokens`` tokens is embedded by its last ``max_tokens``)."""
    encoded = [tokenizer(text, add_special_tokens=False).input_ids[-max_tokens:] for text in texts]
    if any(not ids for ids in encoded):
        raise ValueError("cannot embed an empty text.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    rows: list[np.ndarray | None] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths together: little padding
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.tensor([encoded[i] + [pad_id] * (width - len(encoded[i])) for i in batch], device=device)
        mask = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in batch], device=device)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer].float()
        if pooling == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        else:
            pooled = hidden[torch.arange(len(batch), device=device), mask.sum(dim=1) - 1]
        for position, index in enumerate(batch):
            rows[index] = pooled[position].cpu().numpy()
    if not rows:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


def centred_unit_rows(states: np.ndarray, center: np.ndarray) -> np.ndarray:
    centred = states - center
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)).astype(np.float32)
