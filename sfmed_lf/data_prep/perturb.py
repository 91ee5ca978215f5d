"""Near-duplicates made by editing a record, to measure a dedup configuration's precision and recall: random
insertions or deletions of about 4 % of the characters, changed punctuation, or reordered sentences."""

from __future__ import annotations

import random
import re

EDITS = ("insert", "delete", "punctuation", "reorder")
_FILLERS = "的了是在有和就不人都"
_PUNCTUATION = "，。！？；：、"


def near_duplicate(text: str, kind: str, generator: random.Random) -> str:
    if kind in ("insert", "delete"):
        characters = list(text)
        for _ in range(max(1, len(text) // 25)):
            if kind == "insert":
                characters.insert(generator.randrange(len(characters) + 1), generator.choice(_FILLERS))
            elif len(characters) > 5:
                del characters[generator.randrange(len(characters))]
        return "".join(characters)
    if kind == "punctuation":
        swapped = "".join(generator.choice(_PUNCTUATION) if c in _PUNCTUATION + ",.!?" else c for c in text)
        return swapped + "。"
    if kind == "reorder":
        sentences = [s for s in re.split(r"(?<=[。！？!?])", text) if s]
        if len(sentences) < 2:
            return text[len(text) // 2 :] + text[: len(text) // 2]
        generator.shuffle(sentences)
        return "".join(sentences)
    raise ValueError(f"unknown edit {kind!r}; use one of {', '.join(EDITS)}.")
