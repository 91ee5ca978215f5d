"""A minimal OpenAI-compatible chat server: ``GET /v1/models`` and ``POST /v1/chat/completions`` answered by a
Python function. It serves the rule-based judges (``sfmed pref rule-judge``) and the tests' scripted models."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = Callable[[dict], tuple[int, str]]  # request payload -> (HTTP status, assistant text or error message)


class ChatCompletionServer:
    """Answers each chat completion with ``reply(payload)``; records the payloads in ``requests``."""

    def __init__(self, reply: Reply, models: list[str] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, {"error": "not found"})
                listed = [{"id": name, "object": "model"} for name in models or []]
                return self._send(200, {"object": "list", "data": listed})

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests.append(payload)
                status, text = reply(payload)
                if status != 200:
                    return self._send(status, {"error": text})
                message = {"role": "assistant", "content": text}
                return self._send(200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.base_url = f"http://{host}:{self.server.server_address[1]}/v1"

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> ChatCompletionServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ChatCompletionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
