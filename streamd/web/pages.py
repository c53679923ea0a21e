"""What the pages show: the last published figures per camera, and the HTML around them.

`Board` is a message listener (the publisher calls it after stamping each camera message):
it keeps the last stats and status payload per camera exactly as they went on the wire, so
`/api/stats` and the MQTT stats topic agree by construction. The HTML is rendered from
templates shipped as package data; `live.js` keeps the pictures and figures current.
"""

from __future__ import annotations

import html
import importlib.resources
import threading
from collections.abc import Mapping, Sequence
from string import Template
from typing import Any

from streamd.contract import CameraState, Kind
from streamd.web.view import DEFAULT_OVERLAYS, OVERLAYS, Overlays, parse_overlays

_STATIC = {"live.js": "application/javascript", "style.css": "text/css"}
_CAMERA_DEFAULTS = parse_overlays("rois,zones,objects,descriptions")
"""Overlays the camera page starts with; the motion mask is one click away."""


def _query(overlays: Overlays) -> str:
    """The `overlays=` value for a set, in `OVERLAYS` order."""
    return ",".join(o for o in OVERLAYS if o in overlays)


def _read(name: str) -> str:
    return (importlib.resources.files("streamd.web") / "static" / name).read_text("utf-8")


class Board:
    """The last `stats` and `status` payload per camera (see module doc). `on_message` is
    cheap and never blocks for long: it only swaps references under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, Mapping[str, Any]] = {}
        self._status: dict[str, Mapping[str, Any]] = {}

    def on_message(self, camera: str, kind: str, payload: Mapping[str, Any]) -> None:
        """MessageListener: `kind` is `streamd.contract.Kind` (a str enum)."""
        if kind == Kind.STATS:
            with self._lock:
                self._stats[camera] = payload
        elif kind == Kind.STATUS:
            with self._lock:
                self._status[camera] = payload

    def state(self, camera: str) -> str:
        with self._lock:
            status = self._status.get(camera)
        return str(status.get("state", "unknown")) if status else "unknown"

    def snapshot(self, cameras: Sequence[str], broker_connected: bool) -> dict[str, Any]:
        """`/api/stats`: per running camera its last status and stats payloads as
        published (None before the first)."""
        with self._lock:
            return {"broker_connected": broker_connected, "cameras": {
                name: {"status": self._status.get(name), "stats": self._stats.get(name)}
                for name in cameras}}

    def problems(self, cameras: Sequence[str]) -> list[str]:
        """Why the box is not healthy: every camera that is not streaming, and why."""
        out = []
        with self._lock:
            for name in cameras:
                status = self._status.get(name)
                if status is None:
                    out.append(f"camera {name}: no status yet")
                elif status.get("state") != CameraState.STREAMING:
                    reason = status.get("reason")
                    out.append(f"camera {name}: {status.get('state')}"
                               + (f" ({reason})" if reason else ""))
        return out


class Pages:
    """HTML for `/` and `/cameras/<name>`, and the static files, read once at start."""

    def __init__(self, fps: float) -> None:
        self._fps = fps
        self._index = Template(_read("index.html"))
        self._camera = Template(_read("camera.html"))
        self._tile = Template(_read("tile.html"))
        self._static = {name: (_read(name), ctype) for name, ctype in _STATIC.items()}

    def static(self, name: str) -> tuple[str, str] | None:
        """(text, content type) of a shipped file; None for anything else (no file system
        look-up happens, so no path can reach outside the package)."""
        return self._static.get(name)

    def _tile_html(self, camera: str, board: Board, overlays: str, large: bool) -> str:
        name = html.escape(camera, quote=True)
        state = html.escape(board.state(camera), quote=True)
        return self._tile.substitute(name=name, state=state, overlays=overlays,
                                     size="large" if large else "small")

    def index(self, cameras: Sequence[str], board: Board) -> str:
        tiles = "\n".join(self._tile_html(c, board, _query(DEFAULT_OVERLAYS), False)
                          for c in cameras)
        return self._index.substitute(fps=self._fps, count=len(cameras),
                                      tiles=tiles or "<p>No cameras are running.</p>")

    def camera(self, camera: str, board: Board) -> str:
        toggles = "\n".join(
            f'<label><input type="checkbox" data-overlay="{o}"'
            f'{" checked" if o in _CAMERA_DEFAULTS else ""}> {o}</label>' for o in OVERLAYS)
        overlays = _query(_CAMERA_DEFAULTS)
        return self._camera.substitute(fps=self._fps, name=html.escape(camera, quote=True),
                                       toggles=toggles,
                                       tile=self._tile_html(camera, board, overlays, True))
