"""What a camera looks like to a Sparkplug host: its metrics, and how contract-v1 messages
change them.

Every metric a device will ever send is declared in its DBIRTH, so the set is fixed by the
detector's labels (after `classes` filtering); a label seen for the first time that was not
declared is reported back so the node can rebirth instead of sending an undeclared metric.
Values are sent by exception: a message yields only the metrics whose value changed, each
stamped with the capture time of the frame it came from (the message's `ts`), so historians
store events when they happened, not when they were published.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streamd.contract import CameraState
from streamd.sparkplug.codec import DataType, Metric, Value

STATE = "State"
FPS = "Stats/FPS Analysed"
DROPPED = "Stats/Frames Dropped"
LATENCY_P99 = "Stats/Latency p99 ms"
MOTION = "Motion/Active"
OBJECTS = "Objects/"
DESCRIPTION = "Last Description"
DETECTED_AT = "Last Detection Time"
SNAPSHOT = "Snapshot/Request"
"""Writable: a DCMD setting it true publishes an annotated snapshot of the camera."""

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
VERSION = "Properties/streamd Version"
DETECTOR_BACKEND = "Properties/Detector Backend"
DETECTOR_MODEL = "Properties/Detector Model"
CAMERA_COUNT = "Properties/Camera Count"

DEVICE_METRICS: tuple[tuple[str, DataType], ...] = (
    (STATE, DataType.STRING),
    (FPS, DataType.FLOAT),
    (DROPPED, DataType.UINT64),
    (LATENCY_P99, DataType.FLOAT),
    (MOTION, DataType.BOOLEAN),
    (DESCRIPTION, DataType.STRING),
    (DETECTED_AT, DataType.DATETIME),
    (SNAPSHOT, DataType.BOOLEAN),
)
"""Declared for every camera, besides one `Objects/<label>` (Int32) per label."""

TERMINAL_STATES = frozenset({CameraState.ENDED.value, CameraState.STOPPED.value})
"""Camera states after which the device is dead (DDEATH) until it streams again."""


@dataclass(frozen=True)
class Change:
    """A metric's new value, observed at `timestamp_ms` (UTC epoch ms)."""

    name: str
    datatype: DataType
    value: Value
    timestamp_ms: int

    def to_json(self) -> list[Any]:
        return [self.name, int(self.datatype), self.value, self.timestamp_ms]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Change:
        return cls(str(raw[0]), DataType(int(raw[1])), raw[2], int(raw[3]))


def epoch_ms(ts: float) -> int:
    """Contract `ts` (UTC epoch seconds, µs precision) → Sparkplug milliseconds."""
    return round(ts * 1000.0)


def object_metric(label: str) -> str:
    return OBJECTS + label


class CameraMetrics:
    """The last value of each metric of one camera (what a birth reports), and the
    translation of that camera's contract messages into changes. Used by one thread."""

    def __init__(self) -> None:
        self._values: dict[str, Value] = {}
        self.last_detection_mono: float | None = None
        """Monotonic time of the last detections message, for the idle fallback."""

    def birth_metrics(self, labels: Iterable[str], now_ms: int) -> list[Metric]:
        """Every metric with its current value (null when none yet), for a DBIRTH."""
        declared = [*DEVICE_METRICS, *((object_metric(lb), DataType.INT32) for lb in labels)]
        return [Metric(name, datatype, False if name == SNAPSHOT else self._current(name),
                       timestamp_ms=now_ms) for name, datatype in declared]

    def _current(self, name: str) -> Value:
        """The value a birth reports: nothing moves and nothing is seen until told so."""
        value = self._values.get(name)
        if value is None and name.startswith(OBJECTS):
            return 0
        if value is None and name == MOTION:
            return False
        return value

    def _set(self, out: list[Change], name: str, datatype: DataType, value: Value,
             ts_ms: int) -> None:
        if value is None or self._current(name) == value:
            return
        if isinstance(value, float) and not math.isfinite(value):
            return
        self._values[name] = value
        out.append(Change(name, datatype, value, ts_ms))

    def detections(self, payload: Mapping[str, Any], labels: Iterable[str], now_mono: float
                   ) -> tuple[list[Change], set[str]]:
        """Motion, per-label counts and the detection time of one analysed frame; also the
        labels in it that `labels` does not declare."""
        ts_ms = epoch_ms(float(payload["ts"]))
        objects = payload.get("objects") or []
        counts: dict[str, int] = dict.fromkeys(labels, 0)
        unknown: set[str] = set()
        for obj in objects:
            label = str(obj.get("label"))
            if label not in counts:
                unknown.add(label)
                counts[label] = 0
            counts[label] += 1
        out: list[Change] = []
        self._set(out, MOTION, DataType.BOOLEAN, bool(payload.get("rois")), ts_ms)
        for label, n in counts.items():
            self._set(out, object_metric(label), DataType.INT32, n, ts_ms)
        if objects:
            self._set(out, DETECTED_AT, DataType.DATETIME, ts_ms, ts_ms)
        self.last_detection_mono = now_mono
        return out, unknown

    def idle(self, labels: Iterable[str], now_ms: int) -> list[Change]:
        """No detections for a while: nothing moves and nothing is seen any more."""
        out: list[Change] = []
        self._set(out, MOTION, DataType.BOOLEAN, False, now_ms)
        for label in labels:
            self._set(out, object_metric(label), DataType.INT32, 0, now_ms)
        self.last_detection_mono = None
        return out

    def descriptions(self, payload: Mapping[str, Any]) -> list[Change]:
        out: list[Change] = []
        text = payload.get("text")
        if isinstance(text, str):
            # The same text twice is still news (a new object said the same thing), so it
            # is sent even when unchanged.
            self._values.pop(DESCRIPTION, None)
            self._set(out, DESCRIPTION, DataType.STRING, text, epoch_ms(float(payload["ts"])))
        return out

    def stats(self, payload: Mapping[str, Any]) -> list[Change]:
        out: list[Change] = []
        ts_ms = epoch_ms(float(payload["ts"]))
        fps = payload.get("fps_analysed")
        if isinstance(fps, int | float):
            self._set(out, FPS, DataType.FLOAT, float(fps), ts_ms)
        dropped = payload.get("dropped")
        if isinstance(dropped, int):
            self._set(out, DROPPED, DataType.UINT64, dropped, ts_ms)
        latency = payload.get("latency_ms")
        if isinstance(latency, Mapping) and isinstance(latency.get("p99"), int | float):
            self._set(out, LATENCY_P99, DataType.FLOAT, float(latency["p99"]), ts_ms)
        state = payload.get("state")
        if isinstance(state, str):
            self._set(out, STATE, DataType.STRING, state, ts_ms)
        return out

    def status(self, payload: Mapping[str, Any], now_ms: int) -> list[Change]:
        out: list[Change] = []
        state = payload.get("state")
        since = payload.get("since")
        ts_ms = epoch_ms(float(since)) if isinstance(since, int | float) else now_ms
        if isinstance(state, str):
            self._set(out, STATE, DataType.STRING, state, ts_ms)
        return out

    @property
    def state(self) -> str | None:
        value = self._values.get(STATE)
        return value if isinstance(value, str) else None
