"""Client for OpenAI-compatible chat endpoints: ``vllm serve``, ``llamafactory-cli api`` and the like.

Plain HTTP (httpx), no cloud SDK and no key required (``api_key`` is sent when given, as ``llamafactory-cli api``
checks ``API_KEY``). Transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with
exponential backoff; what still fails raises :class:`EndpointError` naming the endpoint and the last error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from sfmed_lf.errors import EndpointError
from sfmed_lf.steps import option

T = TypeVar("T")
R = TypeVar("R")
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class ChatEndpoint:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(timeout=self.timeout_s, headers=headers)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def complete(self, messages: list[dict[str, str]], **sampling: Any) -> str:
        """The assistant message's text for ``messages`` (sampling: temperature, max_tokens, seed, ...)."""
        payload = {"model": self.model, "messages": messages, **sampling}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TimeoutException:
                last_error = f"no answer within {self.timeout_s:g} s"
                continue
            except httpx.TransportError as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code != 200:
                raise EndpointError(
                    f"{self.url} (model {self.model}): HTTP {response.status_code}: {response.text[:500]}"
                )
            try:
                return response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as error:
                raise EndpointError(f"{self.url}: not a chat completion: {response.text[:500]}") from error
        raise EndpointError(
            f"{self.url} (model {self.model}): failed after {self.max_retries + 1} attempts: {last_error}"
        )

    def close(self) -> None:
        self._client.close()


@dataclass(kw_only=True)
class EndpointOptions:
    """The endpoint options of every step that asks OpenAI-compatible servers; a base of their YAML configs."""

    api_key: str | None = option(None, help="Sent to every endpoint when set (llamafactory-cli api checks API_KEY).")
    request_timeout_s: float = option(300.0, help="Seconds one request may take before it is retried.")
    max_retries: int = option(4, help="Retries of a failed request (connection errors, timeouts, 429, 5xx).")

    def endpoint(self, base_url: str, model: str) -> ChatEndpoint:
        """A client for ``base_url`` with these options' key, timeout and retries."""
        return ChatEndpoint(
            base_url, model, api_key=self.api_key, timeout_s=self.request_timeout_s, max_retries=self.max_retries
        )


def map_concurrently(function: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[R]:
    """``function`` over ``items`` with at most ``concurrency`` calls in flight; results in input order."""
    items = list(items)
    if concurrency <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        yield from pool.map(function, items)
