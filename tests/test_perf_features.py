"""Inference interval and the Prometheus endpoint, end to end (`streamd bench`:
test_bench_recall.py)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.contract import PREFIX, payloads, wait_offline
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import Daemon, daemon_config, free_port
from tests.helpers.video import write_moving_shapes_video

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_inference_interval_carries_tracked_boxes_between_detector_runs(
        tmp_path: Path, sample_video: Path, mosquitto: Mosquitto,
        collector: Callable[..., Collector], daemon: Callable[..., Daemon]) -> None:
    sub = collector(f"{PREFIX}/#")
    d = daemon(daemon_config(mosquitto.port, [{"name": "v", "url": str(sample_video)}],
                             tmp_path / "state", publish_empty=True,
                             detector={"backend": "hog", "interval": 3,
                                       "full_frame_every": 3}),
               "--max-frames", "30")
    assert d.wait(90) == 0, d.logs()
    wait_offline(sub)
    dets = payloads(sub, "v", "detections")
    assert len(dets) == 30
    ran = [p for i, p in enumerate(dets) if i % 3 == 0]
    carried = [p for i, p in enumerate(dets) if i % 3 != 0]
    ids_seen = {o["id"] for p in ran for o in p["objects"]}
    assert ids_seen, "HOG finds the walkers of vtest on full frames"
    carried_ids = {o["id"] for p in carried for o in p["objects"]}
    assert carried_ids and carried_ids <= ids_seen, "carried boxes are tracked objects"
    stats = [m.json for m in sub.messages(f"{PREFIX}/v/stats")]
    assert stats[-1]["detector"]["batches"] == 10, stats[-1]


def test_prometheus_endpoint_serves_the_running_figures(
        tmp_path: Path, mosquitto: Mosquitto, daemon: Callable[..., Daemon]) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=60, wh=(160, 120), fps=20)
    port = free_port()
    cfg = daemon_config(mosquitto.port, [{"name": "cam", "url": str(clip), "realtime": True}],
                        tmp_path / "state", describer={"backend": "template"})
    cfg["metrics"] = {"prometheus_port": port}
    d = daemon(cfg)
    d.wait_output("prometheus metrics on", 20)
    time.sleep(1.5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert d.wait(30) == 0
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    assert lines['streamd_frames_analysed_total{camera="cam"}'] > 5
    assert lines['streamd_camera_state{camera="cam",state="streaming"}'] == 1.0
    assert lines["streamd_mqtt_connected"] == 1.0
    assert 'streamd_stage_seconds_total{camera="cam",stage="motion"}' in lines
    assert 'streamd_describer{figure="offered"}' in lines
    assert lines['streamd_shed_total{camera="cam",reason="cpu"}'] >= 0
    assert lines['streamd_detector_runs_total{camera="cam"}'] == 0, "no detector configured"
