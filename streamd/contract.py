"""MQTT contract v1 in one place: the message kinds, the camera states and the payloads.

Everything a subscriber sees is built here, so "what is on the wire?" has one answer. The
publisher stamps each per-camera payload with `v`, `camera` and `seq` (`stamp`), the outbox
drops by `Kind.drop_rank`, and metrics export `CameraState`'s values; none of them spells a
topic level or a state on its own. Changing anything here changes the contract: do it on
purpose and say so in the README.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamd.redact import redact

if TYPE_CHECKING:
    from streamd.describe.base import Description
    from streamd.detections import Detections
    from streamd.frames import Frame
    from streamd.motion import Rois

VERSION = 1


class Kind(str, enum.Enum):
    """What a message is; its value is the topic level under `<prefix>/<camera>/`.

    Every kind has a `drop_rank` (`_DROP_RANKS`, checked at import): when the outbox bound
    is reached, the oldest message of the lowest rank goes first; `None` means never
    dropped. A kind added without a rank fails at import, so the bound cannot silently stop
    holding.
    """

    STATUS = "status"
    SNAPSHOT = "snapshot"
    STATS = "stats"
    DETECTIONS = "detections"
    DESCRIPTIONS = "descriptions"

    @property
    def drop_rank(self) -> int | None:
        return _DROP_RANKS[self]


_DROP_RANKS: dict[Kind, int | None] = {
    Kind.STATUS: None,  # retained camera state: a handful per camera, what a dashboard shows
    Kind.SNAPSHOT: 0,  # retained JPEG: the next one replaces it anyway
    Kind.STATS: 1,
    Kind.DETECTIONS: 2,
    Kind.DESCRIPTIONS: 3,  # dropped last: each one cost a model call
}
if set(_DROP_RANKS) != set(Kind):
    raise RuntimeError(f"contract: kinds without a drop rank: {set(Kind) - set(_DROP_RANKS)}")

DROP_ORDER: tuple[Kind, ...] = tuple(sorted(
    (k for k in Kind if k.drop_rank is not None), key=lambda k: k.drop_rank or 0))
"""Kinds the outbox may drop, first to go first."""


class CameraState(str, enum.Enum):
    """`state` of `<prefix>/<camera>/status`."""

    STARTING = "starting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    STOPPED = "stopped"


MessageListener = Callable[[str, Kind, Mapping[str, Any]], None]
"""(camera, kind, payload as on the wire), called by the publisher after a camera message
was stamped with its `seq` and stored. Must be fast and never block (enqueue and return)."""

SITE_ONLINE, SITE_OFFLINE = "online", "offline"
"""Payloads of the retained `<prefix>/status` (plain text, the LWT says offline)."""


def site_topic(prefix: str) -> str:
    return f"{prefix}/status"


def camera_topic(prefix: str, camera: str, kind: Kind) -> str:
    return f"{prefix}/{camera}/{kind.value}"


def snapshot_request_filter(prefix: str) -> str:
    """The one command topic: any message here asks for an annotated snapshot."""
    return f"{prefix}/+/snapshot/request"


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; numpy scalars and arrays become plain numbers and lists."""

    def default(o: object) -> object:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(payload, separators=(",", ":"), default=default,
                      ensure_ascii=False).encode()


def stamp(camera: str, payload: Mapping[str, Any], seq: int) -> dict[str, Any]:
    """The envelope of every per-camera JSON message."""
    return {"v": VERSION, "camera": camera, **payload, "seq": seq}


def box(xyxy: np.ndarray) -> list[int]:
    """A box as published: `[x1, y1, x2, y2]` in whole pixels of the original frame."""
    return [round(float(v)) for v in xyxy]


def status(camera: str, state: CameraState, reason: str | None) -> dict[str, Any]:
    """Camera status (retained, no seq). `reason` is redacted: it may quote a source URL."""
    return {"v": VERSION, "camera": camera, "state": state.value,
            "since": round(time.time(), 6), "reason": redact(reason) if reason else None}


def detections(frame: Frame, rois: Rois, dets: Detections) -> dict[str, Any]:
    """One analysed frame: its identity, the motion ROIs and the tracked objects."""
    w, h = frame.wh
    return {
        "frame_id": frame.frame_id,
        "ts": round(frame.ts, 6),
        "pts": frame.pts,
        "width": w,
        "height": h,
        "rois": [{"box": box(rois.xyxy[i]), "motion": round(float(rois.motion[i]), 2)}
                 for i in range(len(rois))],
        "objects": [{"id": int(dets.tracker_id[i]), "label": dets.label(i),
                     "score": round(float(dets.confidence[i]), 3),
                     "box": box(dets.xyxy[i])} for i in range(len(dets))],
    }


def description(d: Description) -> dict[str, Any]:
    """A describer's answer, carrying the `frame_id`/`ts` of the frame it describes."""
    r = d.request
    return {"frame_id": r.frame_id, "ts": r.ts, "object_id": r.object_id, "label": r.label,
            "box": list(r.box), "text": d.text, "model": d.model,
            "latency_ms": round(d.latency_ms, 2), "cached": d.cached}


def stats(*, state: CameraState, interval_s: float, frames: int, frames_analysed: int,
          stage_ms: Mapping[str, float], latency_ms: Mapping[str, float] | None,
          dropped: int, frames_read: int, fps_in: float, skipped: int, decode_errors: int,
          reconnects: int, analysis_errors: int,
          shared: Mapping[str, Any], fps_detected: float = 0.0,
          detect_rate_hz: float | None = None, detector_runs: int = 0,
          detector_deferred: int = 0, shed: Mapping[str, int] | None = None
          ) -> dict[str, Any]:
    """Per-camera figures over the last interval (rates) and since start (totals), plus the
    fleet-wide `shared` ones (outbox, detector, describer, analysis share).

    `fps_detected`: frames sent to the detector per second over the interval;
    `detect_rate_hz`: the rate the adaptive schedule allocated (None with a fixed
    `detector.interval`); `detector_deferred`: due runs deferred because the detector's queue
    held its share; `shed`: frames not analysed, by reason (`cpu`: motion could not keep up).
    """
    return {
        "ts": round(time.time(), 6),
        "state": state.value,
        "interval_s": round(interval_s, 3),
        "fps_analysed": round(frames / interval_s, 2),
        "frames_analysed": frames_analysed,
        "stage_ms": dict(stage_ms),
        "latency_ms": dict(latency_ms) if latency_ms is not None else None,
        "dropped": dropped,
        "fps_in": round(fps_in, 2),
        "frames_in": frames_read,
        "skipped": skipped,
        "decode_errors": decode_errors,
        "reconnects": reconnects,
        "analysis_errors": analysis_errors,
        "fps_detected": round(fps_detected, 2),
        "detect_rate_hz": round(detect_rate_hz, 2) if detect_rate_hz is not None else None,
        "detector_runs": detector_runs,
        "detector_deferred": detector_deferred,
        "shed": dict(shed or {}),
        **shared,
    }
