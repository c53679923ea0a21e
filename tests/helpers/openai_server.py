"""A local OpenAI-compatible chat-completions server for the `openai` describer's tests.

It speaks the real HTTP contract on 127.0.0.1 (a `ThreadingHTTPServer` in a thread), records
every request (path, headers, parsed JSON body) and answers according to `mode`, which a
test can switch while the server runs:

- ``ok``: 200 with ``choices[0].message.content`` = ``answer`` (``{n}`` is the request count);
- ``error``: 500 with a short body;
- ``stall``: reads the request and never answers until the server stops (a hung model).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

Mode = Literal["ok", "error", "stall"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    client: tuple[str, int]
    """The client's address: the same one for requests on one kept-alive connection."""


@dataclass
class ChatServer:
    """``start()`` returns self; ``stop()`` releases stalled requests and joins."""

    mode: Mode = "ok"
    answer: str = "a person in a red jacket ({n})"
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        """The base URL, as an operator writes it in `describer.url`."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ChatServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stalls

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                host, port = self.client_address[:2]
                owner.requests.append(Received(self.path, dict(self.headers.items()),
                                               json.loads(raw), (str(host), int(port))))
                if owner.mode == "stall":
                    owner._release.wait(60)
                    return
                if owner.mode == "error":
                    self._send(500, b'{"error": {"message": "model crashed"}}')
                    return
                text = owner.answer.format(n=len(owner.requests))
                self._send(200, json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                }).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest shows the test's own output."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
