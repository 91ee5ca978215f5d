"""Identifiers (ID numbers, phone numbers, ... as the audit's ``sensitive_pattern`` defines them) that a training
record holds and an answer must never give away. Rouge-L over a whole suffix misses a continuation that gets the
wording wrong but the ID number right; these checks do not. One definition for the audit, the guard's database and
the guard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def found(pattern: str | re.Pattern[str], text: str) -> list[str]:
    """Every match of ``pattern`` in ``text`` (the whole match), in order, without repeats."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    return list(dict.fromkeys(match.group(0) for match in compiled.finditer(text)))


def record_identifiers(pattern: str | re.Pattern[str], given: str, rest: str) -> list[str]:
    """The identifiers of a record that its ``rest`` holds and the ``given`` part (the prefix or the user's
    question) does not: repeating what the requester wrote gives nothing away."""
    return [value for value in found(pattern, rest) if value not in given]


def given_away(identifiers: Iterable[str], text: str) -> list[str]:
    return [value for value in identifiers if value in text]
