"""Preference pairs: a prompt with a chosen and a rejected answer, and the identity of a pair by its content.

The key of a pair hashes its texts — the system prompt, every prompt turn in order, chosen, rejected — so scores
and flip/drop decisions follow a pair's content, never its position in a file. LLaMA-Factory's loader sees the same
texts (``_system``, ``_prompt``, ``_response``), so the key is computed alike there (:func:`pair_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from sfmed_lf.formats.conversation import Prompt

ERROR_KIND = "error"  # metadata key: what is wrong with the rejected answer (the generated world writes it)


def pair_key(prompt_texts: list[str], chosen: str, rejected: str) -> str:
    payload = json.dumps([prompt_texts, chosen, rejected], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: Prompt
    chosen: str
    rejected: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return pair_key(self.prompt.texts(), self.chosen, self.rejected)

    @property
    def error_kind(self) -> str | None:
        return self.metadata.get(ERROR_KIND)

    def flipped(self) -> PreferencePair:
        return PreferencePair(self.id, self.prompt, self.rejected, self.chosen, self.metadata)
