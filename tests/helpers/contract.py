"""Contract v1 checks shared by the end-to-end tests: what a subscriber may rely on."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tests.helpers.mqtt import Collector, Message

SITE = "test"
PREFIX = f"streamd/{SITE}"
CAMERA_STATES = {"starting", "streaming", "reconnecting", "ended", "stopped"}


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def assert_box(box: Any, wh: tuple[int, int], where: str) -> None:
    """``[x1, y1, x2, y2]`` in pixels of the original frame, inside it, non-empty."""
    assert isinstance(box, list) and len(box) == 4 and all(map(is_number, box)), \
        f"{where}: box {box!r}"
    x1, y1, x2, y2 = box
    w, h = wh
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, f"{where}: box {box} outside {w}x{h}"


def check_detection(msg: Message, camera: str) -> dict[str, Any]:
    """Every field of a detections payload; returns it."""
    p = msg.json
    where = f"{msg.topic} seq={p.get('seq')}"
    assert msg.topic == f"{PREFIX}/{camera}/detections"
    assert msg.retain is False, f"{where}: detections must not be retained"
    assert p["v"] == 1 and p["camera"] == camera, where
    assert isinstance(p["frame_id"], int) and isinstance(p["seq"], int), where
    assert is_number(p["ts"]) and p["ts"] > 1.6e9, f"{where}: ts {p['ts']!r} not epoch s"
    assert "pts" in p and (p["pts"] is None or is_number(p["pts"])), where
    assert isinstance(p["width"], int) and isinstance(p["height"], int), where
    wh = (p["width"], p["height"])
    assert isinstance(p["rois"], list) and isinstance(p["objects"], list), where
    for roi in p["rois"]:
        assert_box(roi["box"], wh, f"{where} roi")
        assert is_number(roi["motion"]) and roi["motion"] >= 0, f"{where}: roi {roi}"
    for obj in p["objects"]:
        assert isinstance(obj["id"], int), f"{where}: object {obj}"
        assert isinstance(obj["label"], str) and obj["label"], f"{where}: object {obj}"
        assert is_number(obj["score"]), f"{where}: object {obj}"
        assert_box(obj["box"], wh, f"{where} object")
    return p


def check_status(msg: Message, camera: str) -> dict[str, Any]:
    """A retained camera status payload; returns it."""
    p = msg.json
    assert msg.topic == f"{PREFIX}/{camera}/status"
    assert p["v"] == 1 and p["camera"] == camera, p
    assert p["state"] in CAMERA_STATES, p
    assert is_number(p["since"]) and abs(p["since"] - time.time()) < 600, p
    assert p["reason"] is None or isinstance(p["reason"], str), p
    return p


def unique_by_seq(payloads: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """QoS 1 is at-least-once: a redelivered message repeats its ``seq``; keep the first."""
    seen: set[int] = set()
    out = []
    for p in payloads:
        if p["seq"] not in seen:
            seen.add(p["seq"])
            out.append(p)
    return out


def assert_contiguous(values: Sequence[int], what: str) -> None:
    gaps = [(a, b) for a, b in itertools.pairwise(values) if b != a + 1]
    assert not gaps, f"{what} not contiguous (+1 each); first breaks: {gaps[:5]}"


def assert_strictly_increasing(values: Sequence[float], what: str) -> None:
    bad = [(a, b) for a, b in itertools.pairwise(values) if not b > a]
    assert not bad, f"{what} not strictly increasing; first breaks: {bad[:5]}"


def payloads(sub: Collector, camera: str, topic: str, start: int = 0) -> list[dict[str, Any]]:
    return [m.json for m in sub.messages(f"{PREFIX}/{camera}/{topic}", start)]


def wait_offline(sub: Collector, timeout_s: float = 15.0, start: int = 0) -> Message:
    """The daemon says ``offline`` last, on the same connection as everything else, so once it
    arrived every message the daemon published before it has arrived too."""
    return sub.wait_message(f"{PREFIX}/status", lambda m: m.text == "offline", timeout_s, start)


def wait_state(sub: Collector, camera: str, state: str, timeout_s: float, start: int = 0
               ) -> Message:
    return sub.wait_message(f"{PREFIX}/{camera}/status",
                            lambda m: m.json.get("state") == state, timeout_s, start)


def overlaps(box: Sequence[float], truth: np.ndarray, margin: float) -> bool:
    """Whether ``box`` intersects any of ``truth`` (N, 4) grown by ``margin`` pixels."""
    x1, y1, x2, y2 = box
    t = truth.astype(np.float64) + np.array([-margin, -margin, margin, margin])
    return bool(np.any((x1 < t[:, 2]) & (t[:, 0] < x2) & (y1 < t[:, 3]) & (t[:, 1] < y2)))
