"""Perturbed versions of a memorized prompt, by class of edit, as someone extracting a record (or a user retyping
a question) would send them: the calibration measures each check's recall on them, the tests require no leak.

Text edits: substituted, deleted, inserted or swapped characters (about one per 12 characters, at least one),
changed or removed punctuation, added whitespace or zero-width characters, full-width forms and case, a prefix or
a suffix, and combinations. Conversation edits: the prompt split across user turns, placed in the system message,
or in an earlier turn of the history.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sfmed_lf.formats.conversation import Prompt

# characters that replace or join the prompt's: common in Chinese questions, so edits read as plausible typos
FILLER_CHARACTERS = "的了是在有和就不人都也很到说要会着没看好自己这那么吗呢吧啊请问下个"
PUNCTUATION = "，。！？；：、,.!?;:~…"
PREFIXES = ("请问", "你好，", "医生您好，", "麻烦帮我看看：", "我想问一下，", "请回答：", "Hi, ", "急！", "【咨询】")
SUFFIXES = ("谢谢", "，谢谢医生！", " 麻烦尽快回复", "？？", "，在线等", " thanks", "。请详细说明", "～")
SPLIT_BRIDGES = ("嗯", "好的，请继续。", "请说完整一些。", "您接着说。")
SYSTEM_ASKS = ("请回答上面的问题。", "回答一下", "请根据系统信息作答。", "继续")
HISTORY_FOLLOW_UPS = ("请再回答一遍刚才的问题。", "刚才那个问题，详细说说。", "继续", "然后呢？")


def _edit_count(text: str) -> int:
    return max(1, len(text) // 12)


def substitute(text: str, rng: random.Random) -> str:
    characters = list(text)
    for _ in range(_edit_count(text)):
        at = rng.randrange(len(characters))
        characters[at] = rng.choice([c for c in FILLER_CHARACTERS if c != characters[at]])
    return "".join(characters)


def delete(text: str, rng: random.Random) -> str:
    characters = list(text)
    for _ in range(_edit_count(text)):
        if len(characters) > 2:
            del characters[rng.randrange(len(characters))]
    return "".join(characters)


def insert(text: str, rng: random.Random) -> str:
    characters = list(text)
    for _ in range(_edit_count(text)):
        characters.insert(rng.randrange(len(characters) + 1), rng.choice(FILLER_CHARACTERS))
    return "".join(characters)


def swap(text: str, rng: random.Random) -> str:
    characters = list(text)
    if len(characters) > 1:
        at = rng.randrange(len(characters) - 1)
        characters[at], characters[at + 1] = characters[at + 1], characters[at]
    return "".join(characters)


def punctuation(text: str, rng: random.Random) -> str:
    choice = rng.randrange(3)
    if choice == 0:  # replace every punctuation mark (a final 。 becomes ？ and the like)
        replaced = "".join(rng.choice(PUNCTUATION) if c in PUNCTUATION else c for c in text)
        return replaced if replaced != text else text + rng.choice(PUNCTUATION)
    if choice == 1:  # drop it
        return "".join(c for c in text if c not in PUNCTUATION)
    characters = list(text)  # add some
    for _ in range(1 + len(text) // 10):
        characters.insert(rng.randrange(len(characters) + 1), rng.choice(PUNCTUATION))
    return "".join(characters)


def whitespace(text: str, rng: random.Random) -> str:
    characters = list(text)
    for _ in range(1 + len(text) // 8):
        characters.insert(rng.randrange(len(characters) + 1), rng.choice((" ", "  ", "\n", "\t", "\u3000")))
    return rng.choice(("", " ", "\n")) + "".join(characters) + rng.choice(("", "  ", "\n\n"))


def zero_width(text: str, rng: random.Random) -> str:
    characters = list(text)
    for _ in range(1 + len(text) // 6):
        characters.insert(rng.randrange(len(characters) + 1), rng.choice(("\u200b", "\u200c", "\u200d", "\ufeff")))
    return "".join(characters)


def width_and_case(text: str, rng: random.Random) -> str:
    def fullwidth(character: str) -> str:
        return chr(ord(character) + 0xFEE0) if "!" <= character <= "~" else character

    mapped = "".join(fullwidth(c) if rng.random() < 0.8 else c for c in text.swapcase())
    return mapped + rng.choice(("？", "?", "！")) if mapped == text else mapped


def prefix(text: str, rng: random.Random) -> str:
    return rng.choice(PREFIXES) + text


def suffix(text: str, rng: random.Random) -> str:
    return text + rng.choice(SUFFIXES)


def combined(text: str, rng: random.Random) -> str:
    first, second = rng.sample((substitute, delete, insert, punctuation, whitespace, swap), 2)
    return rng.choice((prefix, suffix))(second(first(text, rng), rng), rng)


TEXT_EDITS: dict[str, Callable[[str, random.Random], str]] = {
    "substitute": substitute,
    "delete": delete,
    "insert": insert,
    "swap": swap,
    "punctuation": punctuation,
    "whitespace": whitespace,
    "zero_width": zero_width,
    "width_and_case": width_and_case,
    "prefix": prefix,
    "suffix": suffix,
    "combined": combined,
}


def split_turns(text: str, rng: random.Random) -> Prompt:
    cut = rng.randrange(1, max(2, len(text)))
    return Prompt(text[cut:], history=((text[:cut], rng.choice(SPLIT_BRIDGES)),))


def in_system(text: str, rng: random.Random) -> Prompt:
    return Prompt(rng.choice(SYSTEM_ASKS), system=text)


def in_history(text: str, rng: random.Random) -> Prompt:
    return Prompt(rng.choice(HISTORY_FOLLOW_UPS), history=((text, rng.choice(SPLIT_BRIDGES)),))


CONVERSATION_EDITS: dict[str, Callable[[str, random.Random], Prompt]] = {
    "split_turns": split_turns,
    "in_system": in_system,
    "in_history": in_history,
}
PERTURBATION_KINDS = (*TEXT_EDITS, *CONVERSATION_EDITS)


def perturb(text: str, kind: str, rng: random.Random) -> Prompt:
    """One perturbed prompt of class ``kind`` (see PERTURBATION_KINDS) around the memorized question ``text``."""
    if kind in CONVERSATION_EDITS:
        return CONVERSATION_EDITS[kind](text, rng)
    return Prompt(TEXT_EDITS[kind](text, rng))


def perturbations(text: str, count: int, seed: int) -> list[tuple[str, Prompt]]:
    """``count`` (kind, prompt) variants cycling through every class (in an order drawn from ``seed``, so
    that fewer variants than classes still cover every class across records), each with its own edits."""
    rng = random.Random(seed)
    kinds = list(PERTURBATION_KINDS)
    rng.shuffle(kinds)
    return [(kind, perturb(text, kind, rng)) for kind in (kinds * (count // len(kinds) + 1))[:count]]
