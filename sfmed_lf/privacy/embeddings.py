"""The model's own intermediate embedding of a text: one hidden layer, pooled over tokens, centred, L2-normalised,
so that the inner product of two embeddings is their cosine similarity (what the guard thresholds).

Centring: raw hidden states of a language model share a dominant common direction (anisotropy; Ethayarajh 2019,
"How Contextual are Contextualized Word Representations?"), which makes any two texts look alike (cosine ~0.8 on
the tiny model). Subtracting the mean pooled state of a reference set (the audited records' queries) removes it, as
in Su et al. 2021 ("Whitening Sentence Representations"), so that unrelated requests fall well below the threshold.
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
def pooled_states(model: torch.nn.Module, tokenizer: Any, texts: list[str], layer: int, pooling: str) -> np.ndarray:
    """float32 array (len(texts), hidden size): hidden state ``layer`` pooled over each text's tokens."""
    rows = []
    for text in texts:  # one at a time: no padding enters the pooled states
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
        if ids.shape[1] == 0:
            raise ValueError("cannot embed an empty text.")
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0].float()
        rows.append((hidden.mean(dim=0) if pooling == "mean" else hidden[-1]).cpu().numpy())
    return np.stack(rows).astype(np.float32)


def centred_unit_rows(states: np.ndarray, center: np.ndarray) -> np.ndarray:
    centred = states - center
    return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)).astype(np.float32)
