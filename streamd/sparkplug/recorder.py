"""Contract-v1 messages → Sparkplug changes, stored durably in the order they happened.

The edge node's worker hands every message here first, whether or not the node can publish:
what changed (by exception) becomes one row of the node's outbox — a DDATA for a camera, an
NDATA for the node, a DDEATH when a camera's input ended or it was removed — and the node
sends rows in id order whenever it is live. Rows hold metric *names* (not aliases), so they
stay meaningful across rebirths and daemon restarts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streamd.outbox import Outbox
from streamd.sparkplug import model
from streamd.sparkplug.codec import DataType, now_ms
from streamd.sparkplug.model import CameraMetrics, Change

log = logging.getLogger(__name__)

DDATA, NDATA, DDEATH = "DDATA", "NDATA", "DDEATH"


@dataclass
class Device:
    metrics: CameraMetrics
    alive: bool = True
    """Wants to be born (streaming or about to); false once its DDEATH is stored."""


@dataclass(frozen=True)
class Stored:
    """One outbox row, decoded."""

    message_type: str
    changes: list[Change]


def decode_row(payload: bytes) -> Stored:
    body = json.loads(payload)
    return Stored(body["k"], [Change.from_json(c) for c in body.get("m", [])])


def _discard(camera: str | None, changes: list[Change], kind: str) -> None:
    """What `Recorder._store` does for a dead device."""


class Recorder:
    """The cameras (devices), the labels the detector reports, and their stored changes.
    Used by the edge node's worker thread only."""

    def __init__(self, outbox: Outbox, labels: Iterable[str], cameras: Iterable[str],
                 idle_after_s: float) -> None:
        self.outbox = outbox
        self.labels: list[str] = list(dict.fromkeys(labels))
        self.cameras: list[str] = list(dict.fromkeys(cameras))
        """Configured cameras, for the node's `Camera Count`."""
        self.devices = {name: Device(CameraMetrics()) for name in self.cameras}
        self._removed: set[str] = set()
        self._idle_after_s = idle_after_s

    def alive(self) -> set[str]:
        return {name for name, dev in self.devices.items() if dev.alive}

    def device_for_row(self, camera: str) -> Device:
        """The device a stored row belongs to; one stored by a previous run for a camera
        no longer configured comes back as a dead device (born just to deliver its data)."""
        dev = self.devices.get(camera)
        if dev is None:
            dev = self.devices[camera] = Device(CameraMetrics(), alive=False)
        return dev

    def add_labels(self, labels: Iterable[str]) -> None:
        self.labels.extend(lb for lb in dict.fromkeys(labels) if lb not in self.labels)

    def _device(self, camera: str) -> Device | None:
        if camera in self._removed:
            return None  # late messages of a camera removed by a reload
        dev = self.devices.get(camera)
        if dev is None:
            dev = self.devices[camera] = Device(CameraMetrics())
        if camera not in self.cameras:
            self.cameras.append(camera)
            self._store_camera_count()
        return dev

    def message(self, camera: str, kind: str, payload: Mapping[str, Any]) -> None:
        dev = self._device(camera)
        if dev is None:
            return
        m = dev.metrics
        # A dead device may not send data (its DDEATH is out); its values are still kept,
        # so they are current when it is born again.
        store = self._store if dev.alive else _discard
        if kind == "detections":
            changes, unknown = m.detections(payload, self.labels, time.monotonic())
            if unknown:
                log.info("sparkplug new label(s) %s: rebirth", ", ".join(sorted(unknown)))
                self.add_labels(sorted(unknown))
            store(camera, changes, "detections")
        elif kind == "descriptions":
            store(camera, m.descriptions(payload), "descriptions")
        elif kind == "stats":
            store(camera, m.stats(payload), "stats")
        elif kind == "status":
            terminal = payload.get("state") in model.TERMINAL_STATES
            if not terminal:  # (again) on its way: born before its next data
                dev.alive = True
            (self._store if dev.alive else _discard)(camera, m.status(payload, now_ms()),
                                                     "status")
            if terminal:
                self._kill(camera, dev)

    def camera(self, name: str, added: bool) -> None:
        """A reload added or removed a camera."""
        if added:
            self._removed.discard(name)
            dev = self._device(name)
            if dev is not None:
                dev.alive = True
            return
        dev = self.devices.get(name)
        if dev is not None:
            self._kill(name, dev)
        self._removed.add(name)
        if name in self.cameras:
            self.cameras.remove(name)
            self._store_camera_count()

    def idle_check(self) -> None:
        """Cameras that sent no detections for `idle_after_s`: motion off, counts 0."""
        now = time.monotonic()
        for name, dev in self.devices.items():
            last = dev.metrics.last_detection_mono
            if last is not None and now - last >= self._idle_after_s:
                changes = dev.metrics.idle(self.labels, now_ms())
                if dev.alive:
                    self._store(name, changes, "detections")

    def _store_camera_count(self) -> None:
        self._store(None, [Change(model.CAMERA_COUNT, DataType.INT32, len(self.cameras),
                                  now_ms())], "status")

    def _kill(self, camera: str, dev: Device) -> None:
        if dev.alive:
            dev.alive = False
            self.outbox.put(f"{DDEATH}/{camera}", json.dumps({"k": DDEATH}).encode(), 0,
                            False, "status", camera, 0)

    def _store(self, camera: str | None, changes: list[Change], kind: str) -> None:
        """One row; `kind` is the contract kind it came from, so the outbox bound drops
        stats before detections before descriptions, and never a status or a death."""
        if not changes:
            return
        message_type = DDATA if camera else NDATA
        body = json.dumps({"k": message_type, "m": [c.to_json() for c in changes]},
                          separators=(",", ":"))
        topic = f"{message_type}/{camera}" if camera else message_type
        self.outbox.put(topic, body.encode(), 0, False, kind, camera, 0)
