"""The test infrastructure on its own, before any daemon is involved.

If these fail, an integration failure says nothing about streamd: the broker, the camera or
the subscriber is broken. They also pin down the behaviours the integration tests rely on:
retained messages reach late subscribers, the subscriber survives a broker restart, the camera
serves the configured size to OpenCV's FFMPEG backend and comes back on the same URL.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.mqtt import Collector, Mosquitto, read_retained
from tests.helpers.procs import free_port
from tests.helpers.rtsp_server import RtspServer, encode_h264, rtsp_request
from tests.helpers.video import count_frames, read_frames, write_moving_shapes_video

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p <= 65535 for p in ports)


def test_mqtt_round_trip_json_text_and_retained(
        mosquitto: Mosquitto, collector: Callable[..., Collector]) -> None:
    sub = collector("streamd/#")
    pub = collector("unused/none")
    pub.publish("streamd/t/cam1/detections", json.dumps({"v": 1, "frame_id": 7}))
    pub.publish("streamd/t/status", "online", retain=True)
    pub.publish("elsewhere/x", "not for the collector")

    det = sub.wait_message("/cam1/detections", timeout_s=5)
    assert det.json == {"v": 1, "frame_id": 7}
    assert det.retain is False and det.qos == 1
    assert abs(det.received - time.time()) < 5
    status = sub.wait_message("streamd/t/status", timeout_s=5)
    assert status.data == "online"
    # A live subscriber gets retain=False; a late one gets the retained copy.
    assert status.retain is False
    late = read_retained(mosquitto.host, mosquitto.port, "streamd/t/status")
    assert late is not None and late.retain and late.text == "online"
    assert read_retained(mosquitto.host, mosquitto.port, "streamd/t/nothing") is None
    assert all(m.topic.startswith("streamd/") for m in sub.messages())


def test_collector_wait_for_times_out_with_summary(
        collector: Callable[..., Collector]) -> None:
    sub = collector()
    with pytest.raises(AssertionError, match="waiting for 1 messages on '/never'"):
        sub.wait_count("/never", 1, timeout_s=0.3)


def test_broker_restart_same_port_collector_resubscribes(
        mosquitto: Mosquitto, collector: Callable[..., Collector]) -> None:
    sub = collector("streamd/#")
    port = mosquitto.port
    mosquitto.restart(down_s=0.5)
    assert mosquitto.port == port and mosquitto.running
    sub.wait_for(lambda c: c.connects >= 2 and c.disconnects >= 1, 15, "reconnect")
    sub.wait_subscribed(10)
    pub = collector("unused/none")
    pub.publish("streamd/t/after", "back")
    assert sub.wait_message("streamd/t/after", timeout_s=5).text == "back"


def test_broker_with_password_file_rejects_anonymous(
        mosquitto_bin: str, tmp_path: Path) -> None:
    with Mosquitto(free_port(), tmp_path / "auth", users={"ops": "s3cret"}) as broker:
        with Collector(broker.host, broker.port, "streamd/#", username="ops",
                       password="s3cret") as ok:
            ok.publish("streamd/t/x", "1")
            assert ok.wait_message("streamd/t/x", timeout_s=5).text == "1"
        anonymous = Collector(broker.host, broker.port, "streamd/#")
        with pytest.raises(TimeoutError):
            anonymous.start(timeout_s=1.5)
        assert anonymous.connects == 0
        assert "not authorised" in broker.log_text()


@pytest.mark.parametrize("wh", [(320, 240), (352, 288)])
def test_rtsp_pattern_serves_configured_size(
        rtsp_server: Callable[..., RtspServer], wh: tuple[int, int]) -> None:
    cam = rtsp_server(width=wh[0], height=wh[1], fps=10)
    assert cam.url == f"rtsp://127.0.0.1:{cam.port}/cam"
    frames = read_frames(cam.url, 12, timeout_s=10)
    assert len(frames) == 12
    assert {f.shape for f in frames} == {(wh[1], wh[0], 3)}
    # The ball moves: the stream is live, not a frozen picture.
    diffs = [np.abs(a.astype(np.int16) - b).mean() for a, b in itertools.pairwise(frames)]
    assert max(diffs) > 0.5


def test_rtsp_file_source_loops_and_resizes(
        rtsp_server: Callable[..., RtspServer], tmp_path: Path) -> None:
    clip = tmp_path / "shapes.avi"
    write_moving_shapes_video(clip, frames=15, wh=(320, 240), fps=10)
    cam = rtsp_server(file=clip, width=160, height=120, fps=30, mounts=("/cam", "/b"))
    frames = read_frames(cam.url, 40, timeout_s=10)
    assert len(frames) == 40, "the 15-frame file must loop"
    assert {f.shape for f in frames} == {(120, 160, 3)}
    assert len(read_frames(cam.url_for("/b"), 3, timeout_s=10)) == 3


def test_rtsp_pre_encoded_clip_loops_on_every_mount(
        rtsp_server: Callable[..., RtspServer], tmp_path: Path) -> None:
    """The fleet benchmark's cameras: a clip encoded once, served as is, looping."""
    clip = tmp_path / "shapes.avi"
    write_moving_shapes_video(clip, frames=15, wh=(320, 240), fps=10)
    mp4 = encode_h264(tmp_path / "shapes.mp4", video=clip, fps=30)
    assert count_frames(mp4) == 15
    cam = rtsp_server(h264=mp4, fps=30, mounts=("/cam", "/b"))
    frames = read_frames(cam.url, 40, timeout_s=10)
    assert len(frames) == 40, "the 15-frame clip must loop"
    assert {f.shape for f in frames} == {(240, 320, 3)}
    diffs = [np.abs(a.astype(np.int16) - b).mean() for a, b in itertools.pairwise(frames)]
    assert max(diffs) > 0.5
    assert len(read_frames(cam.url_for("/b"), 3, timeout_s=10)) == 3


def test_rtsp_kill_and_restart_on_same_port(rtsp_server: Callable[..., RtspServer]) -> None:
    cam = rtsp_server(width=320, height=240, fps=10)
    url = cam.url
    assert len(read_frames(url, 3)) == 3
    cam.kill()
    with pytest.raises(OSError):
        rtsp_request(cam.host, cam.port, "OPTIONS", url, timeout_s=1)
    assert read_frames(url, 1, timeout_s=2) == []
    cam.start()
    assert cam.url == url
    assert rtsp_request(cam.host, cam.port, "DESCRIBE", url) == 200
    assert len(read_frames(url, 3)) == 3
    assert cam.stop() == 0, "SIGTERM must end the server cleanly"


def test_moving_shapes_ground_truth(tmp_path: Path) -> None:
    clip = tmp_path / "shapes.avi"
    truth = write_moving_shapes_video(clip, frames=30, wh=(320, 240), fps=10)
    assert count_frames(clip) == len(truth) == 30
    for t in truth:
        assert t.boxes_xyxy.shape == (2, 4)
        x1, y1, x2, y2 = t.boxes_xyxy.T
        assert (x1 >= 0).all() and (y1 >= 0).all()
        assert (x2 <= 320).all() and (y2 <= 240).all()
        assert (x2 > x1).all() and (y2 > y1).all()
    assert not np.array_equal(truth[0].boxes_xyxy, truth[-1].boxes_xyxy)
