"""Inference interval, the Prometheus endpoint and `streamd bench`, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.contract import PREFIX, payloads, wait_offline
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import REPO_ROOT, Daemon, daemon_config, free_port, streamd_env
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


@pytest.mark.timeout(240)
def test_bench_reports_both_variants_and_their_ratio(tmp_path: Path, sample_video: Path,
                                                      mosquitto_bin: str) -> None:
    model = REPO_ROOT / "engines" / "yolov8n-random.onnx"
    assert model.is_file(), "run ./scripts/setup.sh (builds the random-weight model)"
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"""site: b
state_dir: {tmp_path / 'state'}
detector: {{backend: onnxruntime, model: {model}, input_size: 320, interval: 2}}
describer: {{backend: none}}
cameras: [{{name: v, url: {sample_video}}}]
""")
    res = subprocess.run([sys.executable, "-m", "streamd", "bench", "-c", str(cfg),
                          "--frames", "24", "--baseline-size", "320", "--json"],
                         capture_output=True, text=True, timeout=220, env=streamd_env(),
                         cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for variant in ("streamd", "naive"):
        v = out[variant]
        assert v["frames_analysed"] == 24, v
        assert v["cpu_s_per_frame"] > 0 and v["peak_rss_mb"] > 50
        assert v["latency_ms"]["p99"] >= v["latency_ms"]["p50"] > 0
        assert v["detections_received"] > 0
        assert {"decode", "inference", "publish"} <= v["stage_ms"].keys()
    assert "motion" in out["streamd"]["stage_ms"]
    assert out["naive"]["detector_runs"] == 24
    assert out["streamd"]["detector_runs"] <= 12 + 1  # interval 2
    assert out["cpu_ratio"] == pytest.approx(
        out["streamd"]["cpu_s_per_frame"] / out["naive"]["cpu_s_per_frame"], rel=0.01)
    assert {"decode", "motion", "detector_full_frame"} <= out["alone"].keys()
