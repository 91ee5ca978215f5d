"""Inference-time privacy guard (SF-Med Appendix B) inside LLaMA-Factory's Hugging Face chat engine.

Enabled by ``sfmed_privacy_db: DIR`` in the inference YAML (``llamafactory-cli chat|api|webchat``): before
generating, the engine embeds the request's last user message with its own model (the database's layer and
pooling) and looks up the nearest high-risk entry (centred cosine, see embeddings.py). At a similarity of at least
``sfmed_privacy_threshold`` (default 0.8) the entry's secure counterpart is served instead of generating; below it
the engine generates exactly as without the guard. Each decision is logged with its similarity and duration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.privacy.database import HighRiskDatabase
from sfmed_lf.privacy.embeddings import pooled_states

logger = logging.getLogger("sfmed_lf.privacy")


@dataclass(frozen=True)
class GuardDecision:
    similarity: float
    secure_response: str | None  # set when the request is blocked
    entry_id: str | None
    seconds: float


class PrivacyGuard:
    def __init__(self, database: HighRiskDatabase, threshold: float, model: Any, tokenizer: Any) -> None:
        if database.dimension != model.config.hidden_size:
            raise DataError(
                f"the high-risk database holds {database.dimension}-dim embeddings but the served model's hidden "
                f"size is {model.config.hidden_size}: build the database with the model you serve."
            )
        self.database, self.threshold, self.model, self.tokenizer = database, threshold, model, tokenizer

    def check(self, messages: list[dict[str, str]]) -> GuardDecision:
        start = time.perf_counter()
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user" and m["content"]), "")
        if not query.strip():
            return GuardDecision(-1.0, None, None, time.perf_counter() - start)
        state = pooled_states(self.model, self.tokenizer, [query], self.database.layer, self.database.pooling)
        similarity, entry = self.database.nearest(state[0])
        blocked = entry is not None and similarity >= self.threshold
        decision = GuardDecision(
            similarity,
            entry["secure_response"] if blocked else None,
            entry["id"] if blocked else None,
            time.perf_counter() - start,
        )
        logger.info(
            "sfmed privacy guard: similarity %.4f -> %s (%.1f ms)",
            similarity,
            f"secure counterpart of {decision.entry_id}" if blocked else "generate",
            1e3 * decision.seconds,
        )
        return decision
