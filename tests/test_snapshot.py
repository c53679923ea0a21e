"""Annotated snapshots: drawn without touching the frame, on request over MQTT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamd.detections import Detections
from streamd.motion import Rois
from streamd.snapshot import annotate
from tests.factories import frame
from tests.helpers.contract import PREFIX
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import Daemon, daemon_config
from tests.helpers.video import write_moving_shapes_video


def test_annotate_draws_on_a_copy_and_scales_down() -> None:
    f = frame(wh=(1280, 720), value=40)
    dets = Detections(np.array([[100, 100, 300, 500]]), np.array([0.9]), np.array([0]),
                      np.array([7]), labels=("person",))
    rois = Rois(np.array([[80, 80, 320, 520]]), np.array([2.0]), np.array([[1.0, 0.0]]))
    jpeg = annotate(f, rois, dets, {7: "a person walking"}, max_width=640, quality=70)
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (360, 640, 3)
    assert int(f.image.max()) == 40, "the shared frame must not be drawn on"
    green = (img[:, :, 1] > 180) & (img[:, :, 0] < 120) & (img[:, :, 2] < 120)
    assert green[50:250, 50:150].any(), "the object box is drawn where the object is"


def test_annotate_empty_frame() -> None:
    jpeg = annotate(frame(wh=(64, 48)), Rois.empty(), Detections.empty())
    assert jpeg[:2] == b"\xff\xd8"


@pytest.mark.integration
def test_snapshot_on_request_is_retained_jpeg(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        daemon: Callable[..., Daemon]) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=80, wh=(320, 240), fps=20)
    sub = collector(f"{PREFIX}/cam/snapshot")
    d = daemon(daemon_config(mosquitto.port, [{"name": "cam", "url": str(clip),
                                               "realtime": True}], tmp_path / "state"))
    d.wait_output("state=streaming", 20)
    sub.publish(f"{PREFIX}/cam/snapshot/request", b"")
    msg = sub.wait_message(f"{PREFIX}/cam/snapshot", timeout_s=10)
    assert d.wait(30) == 0
    img = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (240, 320)
    late = Collector(mosquitto.host, mosquitto.port, f"{PREFIX}/cam/snapshot").start()
    try:
        retained = late.wait_message(f"{PREFIX}/cam/snapshot", timeout_s=5)
    finally:
        late.stop()
    assert retained.retain and retained.payload == msg.payload


@pytest.mark.integration
def test_periodic_snapshots(tmp_path: Path, mosquitto: Mosquitto,
                            collector: Callable[..., Collector],
                            daemon: Callable[..., Daemon]) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=60, wh=(160, 120), fps=20)
    sub = collector(f"{PREFIX}/cam/snapshot")
    cfg = daemon_config(mosquitto.port, [{"name": "cam", "url": str(clip), "realtime": True}],
                        tmp_path / "state")
    cfg["snapshots"] = {"interval_s": 0.5, "max_width": 160}
    d = daemon(cfg)
    assert d.wait(30) == 0
    sub.wait_count(f"{PREFIX}/cam/snapshot", 4, timeout_s=5)
    assert len(sub.messages(f"{PREFIX}/cam/snapshot")) <= 8, "3 s of video, one per 0.5 s"
