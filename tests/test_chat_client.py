"""The OpenAI-compatible client against a real HTTP server on localhost: retries, backoff, clear errors."""

from __future__ import annotations

import pytest

from sfmed_lf.errors import EndpointError
from sfmed_lf.serving.chat_client import ChatEndpoint, map_concurrently
from tests.conftest import free_port
from tests.servers import ScriptedChatServer


def test_transient_failures_are_retried():
    statuses = iter([503, 429])

    def reply(payload: dict) -> tuple[int, str]:
        return next(statuses, 200), f"echo {payload['messages'][-1]['content']} t={payload['temperature']}"

    with ScriptedChatServer(reply) as server:
        endpoint = ChatEndpoint(server.base_url, "judge", backoff_s=0.01)
        assert endpoint.complete([{"role": "user", "content": "你好"}], temperature=0.0) == "echo 你好 t=0.0"
    assert len(server.requests) == 3 and server.requests[-1]["model"] == "judge"


def test_persistent_failure_names_the_endpoint_and_the_last_error():
    with ScriptedChatServer(lambda payload: (500, "engine crashed")) as server:
        endpoint = ChatEndpoint(server.base_url, "judge", max_retries=2, backoff_s=0.01)
        with pytest.raises(
            EndpointError, match=r"/v1/chat/completions \(model judge\): failed after 3 attempts: HTTP 500"
        ):
            endpoint.complete([{"role": "user", "content": "x"}])
    assert len(server.requests) == 3


def test_client_errors_are_not_retried():
    with (
        ScriptedChatServer(lambda payload: (400, "unknown model")) as server,
        pytest.raises(EndpointError, match=r"HTTP 400.*unknown model"),
    ):
        ChatEndpoint(server.base_url, "nope", backoff_s=0.01).complete([{"role": "user", "content": "x"}])
    assert len(server.requests) == 1


def test_unreachable_endpoint():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match=rf"{url}/chat/completions .*ConnectError"):
        ChatEndpoint(url, "m", max_retries=1, backoff_s=0.01).complete([{"role": "user", "content": "x"}])


def test_concurrent_map_keeps_the_input_order():
    assert list(map_concurrently(lambda x: x * x, range(20), concurrency=4)) == [x * x for x in range(20)]
