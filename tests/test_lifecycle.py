"""How the daemon ends: within systemd's stop timeout whatever hangs, and never with
messages stranded when its input ends during a broker outage; detector failures visible.

Real processes only: the daemon as a child, mosquitto, GStreamer RTSP cameras. A hung
detector is the real HOG detector whose thread the test freezes with ptrace
(`tests/helpers/freeze.py`); a camera that stops answering is an RTSP server under SIGSTOP.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.contract import (
    PREFIX,
    assert_contiguous,
    payloads,
    unique_by_seq,
    wait_offline,
    wait_state,
)
from tests.helpers.freeze import FrozenThread
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import Daemon, daemon_config, free_port
from tests.helpers.rtsp_server import RtspServer
from tests.helpers.video import write_moving_shapes_video

pytestmark = pytest.mark.integration


def outbox_rows(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def marks(state_dir: Path) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads((state_dir / "counters.json").read_text())
            .items()}


@pytest.mark.timeout(120)
def test_sigterm_with_a_hung_detector_and_a_frozen_camera_exits_in_time(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        rtsp_server: Callable[..., RtspServer], daemon: Callable[..., Daemon]) -> None:
    busy = rtsp_server(width=160, height=120, fps=10, pattern="ball")
    frozen = rtsp_server(width=160, height=120, fps=10, pattern="ball")
    state = tmp_path / "state"
    sub = collector(f"{PREFIX}/#")
    d = daemon(daemon_config(mosquitto.port, [
        {"name": "busy", "url": busy.url, "fps": 10},
        {"name": "frozen", "url": frozen.url, "fps": 10, "read_timeout_s": 60}], state,
        detector={"backend": "hog"}, publish_empty=True))
    for cam in ("busy", "frozen"):
        wait_state(sub, cam, "streaming", 30)
        sub.wait_count(f"{PREFIX}/{cam}/detections", 5, 30)
    thread = FrozenThread(d.pid, "detector").freeze()
    assert frozen.proc is not None
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # frames wait on the detector; the frozen camera's read is stuck
        mark = sub.cursor()
        t0 = time.monotonic()
        d.send_signal(signal.SIGTERM)
        while not thread.reap(block=False) or d.running:
            assert time.monotonic() - t0 < 30, f"no exit 30 s after SIGTERM\n{d.logs()}"
            time.sleep(0.05)
        took = time.monotonic() - t0
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
        thread.release()
    print(f"SIGTERM to exit with a hung detector and a frozen camera: {took:.2f} s")
    assert d.wait(5) == 0, d.logs()
    assert took < 10.0, f"stop took {took:.1f} s\n{d.logs()}"
    wait_offline(sub, 10, start=mark)
    assert outbox_rows(state) == 0, "the outbox was not flushed"
    for cam in ("busy", "frozen"):
        last = sub.last(f"{PREFIX}/{cam}/status")
        assert last is not None and last.json["state"] == "stopped", (cam, last)
    m = marks(state)
    busy_dets = unique_by_seq(payloads(sub, "busy", "detections"))
    frozen_dets = unique_by_seq(payloads(sub, "frozen", "detections"))
    assert m["seq/busy/detections"] == busy_dets[-1]["seq"], "exact seq mark at a clean stop"
    assert m["frame_id/busy"] >= busy_dets[-1]["frame_id"]
    assert m["frame_id/frozen"] >= frozen_dets[-1]["frame_id"]
    assert "published without objects" in d.output, "frames waiting on the detector go out"


@pytest.mark.timeout(150)
def test_end_of_input_during_a_broker_outage_waits_and_delivers_everything(
        tmp_path: Path, mosquitto_bin: str, daemon: Callable[..., Daemon]) -> None:
    """150 frames at their native rate; the broker goes away 3 s in and is back 20 s later,
    after the file ended: the daemon waits for it and delivers every analysed frame, in
    order, then exits 0. A realtime file is live-like: a frame overwritten during a stall
    (a loaded CI box at startup) is counted in `dropped`, so the check is that nothing the
    daemon analysed is missing and that drops stay rare."""
    fps, frames = 10, 150
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=frames, wh=(160, 120), fps=fps)
    broker = Mosquitto(free_port(), tmp_path / "mq", persistence=True).start()
    sub = Collector(broker.host, broker.port, f"{PREFIX}/#", client_id="lifecycle-persistent",
                    clean_session=False).start()
    try:
        d = daemon(daemon_config(broker.port, [{"name": "cam", "url": str(clip),
                                                "realtime": True}], tmp_path / "state",
                                 publish_empty=True))
        sub.wait_count(f"{PREFIX}/cam/detections", 1, 30)
        time.sleep(3.0)
        broker.stop()
        d.wait_output("every camera ended", 30)
        time.sleep(20.0 - (frames / fps - 3.0))
        assert d.running, f"the daemon gave up on the broker too soon\n{d.logs()}"
        broker.start()
        assert d.wait(60) == 0, d.logs()
        wait_offline(sub, 15)
    finally:
        sub.stop()
        broker.stop()
    dets = unique_by_seq(payloads(sub, "cam", "detections"))
    final = payloads(sub, "cam", "stats")[-1]
    print(f"{len(dets)} detections delivered, {final['dropped']} frames dropped at capture")
    assert final["frames_analysed"] + final["dropped"] == frames, final
    assert len(dets) == final["frames_analysed"], "an analysed frame was not delivered"
    assert final["dropped"] <= 3, final
    assert_contiguous([p["seq"] for p in dets], "detections seq")
    assert [p["frame_id"] for p in dets] == sorted(p["frame_id"] for p in dets)


@pytest.mark.timeout(120)
def test_messages_left_after_the_drain_timeout_exit_75_and_go_out_on_the_next_start(
        tmp_path: Path, mosquitto_bin: str, daemon: Callable[..., Daemon]) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=20, wh=(160, 120), fps=20)
    port = free_port()
    cfg = daemon_config(port, [{"name": "cam", "url": str(clip)}], tmp_path / "state",
                        publish_empty=True, drain_timeout_s=2)
    first = daemon(cfg)
    assert first.wait(60) == 75, first.logs()
    assert "exiting 75" in first.output
    assert outbox_rows(tmp_path / "state") >= 20
    broker = Mosquitto(port, tmp_path / "mq").start()
    sub = Collector(broker.host, broker.port, f"{PREFIX}/#").start()
    try:
        second = daemon(cfg)  # what systemd's Restart=on-failure does
        assert second.wait(60) == 0, second.logs()
        wait_offline(sub, 15)
    finally:
        sub.stop()
        broker.stop()
    dets = unique_by_seq(payloads(sub, "cam", "detections"))
    assert [p["seq"] for p in dets] == list(range(1, 41)), "both runs, in order, no gap"


def failing_onnx(path: Path) -> Path:
    """A YOLO-shaped ONNX model (64 px input, one class) that answers a blank image, as
    the backend's load-time check feeds it, and fails inside ONNX Runtime on any picture
    with a bright pixel: its output Reshape then asks for one anchor too many."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    anchors = 84  # 8x8 + 4x4 + 2x2 for a 64 px input
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "half"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Mul", ["extra", "last_axis"], ["grow"]),
        helper.make_node("Add", ["shape", "grow"], ["wanted"]),
        helper.make_node("Reshape", ["zeros", "wanted"], ["output0"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array([0, 0, 1], np.int64), "last_axis"),
             numpy_helper.from_array(np.array([1, 5, anchors], np.int64), "shape"),
             numpy_helper.from_array(np.zeros(5 * anchors, np.float32), "zeros")]
    graph = helper.make_graph(
        nodes, "failing", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                         [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.timeout(90)
def test_detector_failures_are_counted_published_and_logged_once(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        daemon: Callable[..., Daemon]) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=40, wh=(160, 120), fps=10)
    model = failing_onnx(tmp_path / "failing.onnx")
    port = free_port()
    sub = collector(f"{PREFIX}/#")
    cfg = daemon_config(mosquitto.port, [{"name": "cam", "url": str(clip), "realtime": True}],
                        tmp_path / "state", publish_empty=True, stats_interval_s=0.5,
                        detector={"backend": "onnxruntime", "model": str(model),
                                  "input_size": 64, "labels": ["thing"]})
    cfg["metrics"] = {"prometheus_port": port}
    d = daemon(cfg)
    sub.wait_message(f"{PREFIX}/cam/stats",
                     lambda m: bool(m.json.get("detector", {}).get("errors")), 30)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert d.wait(30) == 0, d.logs()
    wait_offline(sub)
    errors = [line for line in text.splitlines()
              if line.startswith("streamd_detector_errors_total{")]
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 1, text
    final = payloads(sub, "cam", "stats")[-1]["detector"]["errors"]
    (kind, count), = final.items()
    assert count >= 10, final
    assert f'kind="{kind}"' in errors[0]
    assert d.output.count("Traceback") == 1, "the first failure of a kind, with traceback"
    assert f"detector failed ({kind})" in d.output
    dets = payloads(sub, "cam", "detections")
    assert len(dets) == 40 and all(p["objects"] == [] for p in dets), \
        "frames still go out, without objects"
