"""`openai` backend: any OpenAI-compatible chat-completions server (Ollama, vLLM, llama.cpp
server, LM Studio, a cloud API) describes the crop.

The crop travels as a JPEG `data:` URL in an `image_url` content part, next to the prompt;
`max_tokens` bounds the answer. The standard library's `http.client` is enough for one POST
per description: it keeps the connection alive between requests and gives separate connect
and read timeouts, and `close()` can shut the socket under a request that hangs, which is
what lets the daemon stop on time while a server is stalled. No extra dependency, so this
backend works without the `[vl]` extra.

The API key (from a file or an env var, read with the config) goes only into the
`Authorization` header; no log line or error message contains it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import cv2
from pydantic import Field, SecretStr

from streamd import __version__
from streamd.describe.base import (
    DescribeRequest,
    DescriberError,
    PromptedDescriberSettings,
    SecretSource,
)
from streamd.redact import redact

log = logging.getLogger(__name__)

KEY = "openai"
CHAT_PATH = "/chat/completions"
_ERROR_SNIPPET = 200
"""Characters of an error response body quoted in the failure message."""
DESCRIBER_KEY_ENV = "STREAMD_DESCRIBER_API_KEY"


class OpenAIDescriberSettings(PromptedDescriberSettings):
    """`backend: openai`: any OpenAI-compatible chat-completions server (Ollama, vLLM, ...)."""

    backend: Literal["openai"]
    url: str = Field(
        pattern=r"^https?://[^/\s]+", description="OpenAI-compatible server, e.g. "
        "http://127.0.0.1:11434/v1 (Ollama); `/chat/completions` is appended unless given.")
    model: str = Field(min_length=1, description="Model name the server knows, e.g. "
                       "`moondream` or `qwen2.5vl:3b`.")
    api_key_file: Path | None = Field(
        None, description=f"File holding the API key (else env {DESCRIBER_KEY_ENV}); a "
        "relative path is looked up in $CREDENTIALS_DIRECTORY first. Never logged.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Longest wait for an answer.")
    connect_timeout_s: float = Field(5.0, gt=0, le=120,
                                     description="Longest wait for the connection.")
    image_size: int = Field(512, ge=32, le=4096, description="Longest crop side sent.")
    jpeg_quality: int = Field(90, ge=10, le=100, description="Quality of the JPEG sent.")
    temperature: float = Field(0.0, ge=0.0, le=2.0,
                               description="Sampling temperature; 0: the likeliest answer.")

    def secret(self) -> SecretSource:
        """The API key: `api_key_file`, else env STREAMD_DESCRIBER_API_KEY, else none (a
        local server such as Ollama needs none)."""
        return SecretSource(self.api_key_file, DESCRIBER_KEY_ENV, "describer.api_key_file")


def endpoint(url: str) -> urllib.parse.SplitResult:
    """The chat-completions URL for a base URL (`…/v1`) or the full endpoint.

    >>> endpoint("http://127.0.0.1:11434/v1").geturl()
    'http://127.0.0.1:11434/v1/chat/completions'
    >>> endpoint("https://api.example.com/v1/chat/completions/").path
    '/v1/chat/completions'
    """
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith(CHAT_PATH):
        path += CHAT_PATH
    return parts._replace(path=path)


def answer_text(payload: Any) -> str:
    """The assistant's text from a chat-completions response (a string, or a list of
    content parts as some servers send).

    >>> answer_text({"choices": [{"message": {"content": " A red car. "}}]})
    'A red car.'
    >>> answer_text({"choices": [{"message": {"content": [{"type": "text", "text": "hi"}]}}]})
    'hi'
    """
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise DescriberError("response has no choices[0].message.content") from None
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise DescriberError(f"choices[0].message.content is a {type(content).__name__}")
    return content.strip()


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: worth one retry on a fresh one."""


class OpenAIDescriber:
    """POSTs each request to `<url>/chat/completions` on one kept-alive connection."""

    square_input = False

    def __init__(self, settings: OpenAIDescriberSettings,
                 api_key: SecretStr | None = None) -> None:
        self._url = endpoint(settings.url)
        if self._url.scheme not in ("http", "https") or not self._url.hostname:
            raise DescriberError(f"describer.url: {redact(settings.url)} is not an http(s) URL")
        self.model = settings.model
        self.input_size = settings.image_size
        self._settings = settings
        self._api_key = api_key
        self._conn: http.client.HTTPConnection | None = None
        self._conn_lock = threading.Lock()
        """Guards `_conn` and `_closed` only, never held during a request: `close()` must be
        able to shut the socket while the worker waits on it."""
        self._closed = False
        log.info("openai describer: %s model %s, timeout %.0f s%s", redact(self._url.geturl()),
                 self.model, settings.timeout_s, ", with API key" if api_key else "")

    def _connection(self) -> http.client.HTTPConnection:
        with self._conn_lock:
            if self._closed:
                raise DescriberError("openai describer used after close()")
            if self._conn is None:
                u, s = self._url, self._settings
                host = u.hostname or ""
                if u.scheme == "https":
                    self._conn = http.client.HTTPSConnection(
                        host, u.port, timeout=s.connect_timeout_s,
                        context=ssl.create_default_context())
                else:
                    self._conn = http.client.HTTPConnection(host, u.port,
                                                            timeout=s.connect_timeout_s)
            return self._conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        """Forget a connection after an error; the next request opens a fresh one."""
        with self._conn_lock:
            if self._conn is conn:
                self._conn = None
        conn.close()

    def body(self, request: DescribeRequest) -> bytes:
        """The JSON request: prompt plus the crop as a base64 JPEG data URL."""
        if request.crop is None:
            raise ValueError("request has no crop (DescriberService adds it)")
        s = self._settings
        ok, jpeg = cv2.imencode(".jpg", request.crop, [cv2.IMWRITE_JPEG_QUALITY, s.jpeg_quality])
        if not ok:
            raise DescriberError("JPEG encoding of the crop failed")
        data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")
        return json.dumps({
            "model": s.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": request.prompt},
                {"type": "image_url", "image_url": {"url": data_url}},
            ]}],
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "stream": False,
        }).encode("utf-8")

    def describe(self, request: DescribeRequest) -> str:
        body = self.body(request)
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"streamd/{__version__}"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        try:
            status, reason, data = self._post(body, headers)
        except _StaleConnection:
            status, reason, data = self._post(body, headers)  # the server closed an idle one
        if status != 200:
            snippet = data[:_ERROR_SNIPPET].decode("utf-8", "replace").strip()
            raise DescriberError(f"HTTP {status} {reason}: {snippet}")
        try:
            payload = json.loads(data)
        except ValueError:
            raise DescriberError("response is not JSON") from None
        return answer_text(payload)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn = self._connection()
        reused = conn.sock is not None
        path = self._url.path + (f"?{self._url.query}" if self._url.query else "")
        try:
            if conn.sock is None:
                conn.connect()  # under the connect timeout (and with TCP_NODELAY)
            if conn.sock is not None:
                conn.sock.settimeout(self._settings.timeout_s)  # then the read timeout
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(conn)
            if reused and isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError
                                     | ConnectionResetError):
                raise _StaleConnection from None
            if isinstance(exc, TimeoutError):
                raise DescriberError(f"no answer within {self._settings.timeout_s:g} s"
                                     ) from None
            raise DescriberError(f"request failed: {type(exc).__name__}: {redact(exc)}"
                                 ) from None
        if response.will_close:
            self._drop(conn)
        return response.status, response.reason, data

    def close(self) -> None:
        """Shut the connection down, waking a request blocked on it. Safe to call twice."""
        with self._conn_lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):  # already disconnected
                    sock.shutdown(socket.SHUT_RDWR)
            conn.close()
