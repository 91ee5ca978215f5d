"""Identifiers (ID numbers, phone numbers, ... as the audit's ``sensitive_pattern`` defines them) that a training
record holds and an answer must never give away. Rouge-L over a whole suffix misses a continuation that gets the
wording wrong but the ID number right; these checks do not. One definition for the audit, the guard's database and
the guard.

An identifier is the pattern's whole match (use lookarounds, not groups, for context that is not part of it). An
answer gives it away when the identifier appears in the answer once spaces and dashes are taken out ("139 1234
5678" is the same number); a part of one (17 of 18 digits) is not caught.
"""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[\s\-‐‑‒–—－]+")


def compact(text: str) -> str:
    """``text`` without the spaces and dashes that split a number into groups."""
    return _SEPARATORS.sub("", text)


def matches(pattern: str | re.Pattern[str], text: str) -> list[str]:
    """Every match of ``pattern`` in ``text`` (the whole match), in order, without repeats."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    return list(dict.fromkeys(match.group(0) for match in compiled.finditer(text)))


def record_identifiers(pattern: str | re.Pattern[str], given: str, rest: str) -> list[str]:
    """The identifiers of a record that its ``rest`` holds and the ``given`` part (the prefix or the user's
    question) does not: repeating what the requester wrote gives nothing away. One cut by the split is missed."""
    return [value for value in matches(pattern, rest) if value not in given]
