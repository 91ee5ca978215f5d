"""Errors the ``sfmed`` command reports as one line (exit code 2) instead of a traceback."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the line and the field. ``code`` names the
    kind of problem (``sfmed data check`` counts problems by it)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class EndpointError(RuntimeError):
    """A chat endpoint failed after all retries, or answered something that is not a chat completion."""


class ProblemsFound(Exception):
    """A step that checks something (``sfmed doctor``) printed its report and found problems: the command exits 1
    (not 2: the input was fine, what it checked is not)."""
