"""Errors the ``sfmed`` command reports as one line (exit code 2) instead of a traceback."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the row and the field."""


class EndpointError(RuntimeError):
    """A chat endpoint failed after all retries, or answered something that is not a chat completion."""
