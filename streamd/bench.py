"""`streamd bench`: what a camera costs on this box, against the naive way, in one run.

Two variants of the same config run on the same video, each in a fresh process (so CPU time
and peak RSS are its own), each publishing to a real broker and timed by a real MQTT
subscriber:

- `streamd`: the config as given (motion gating, crops, inference interval, …);
- `naive`: every frame, whole frame, the same model at `--baseline-size`, no motion stage —
  what a pipeline without streamd's gating spends.

Per-stage times come from the stages' own counters; `alone` times run decode, motion and
the detector by themselves on the same frames, so the pipeline's throughput can be compared
with its slowest stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamd.config import Config, ConfigError, Settings, load, validate

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


class _LatencyProbe:
    """A real subscriber: capture→receive latency from each detection's own `ts`."""

    def __init__(self, settings: Settings, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.latencies_ms: list[float] = []
        self.received = 0
        self._subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{os.getpid()}")
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(settings.mqtt.host, settings.mqtt.port)
        client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("bench subscriber could not subscribe")
        self._client = client

    def _on_message(self, client: object, userdata: object, msg: Any) -> None:
        now = time.time()
        self.received += 1
        self.latencies_ms.append((now - json.loads(msg.payload)["ts"]) * 1000.0)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def measure(settings_json: dict[str, Any], frames: int | None) -> dict[str, Any]:
    """Run the daemon once over the bench camera and report what it cost (child process)."""
    from streamd.app import App

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = validate(settings_json)
    cam = settings.cameras[0].name
    probe = _LatencyProbe(settings, f"{settings.topic_prefix}/{cam}/detections")
    app = App(Config(settings, Path("<bench>")), max_frames=frames)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    app.run()
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    deadline = time.monotonic() + 10
    last = -1
    while probe.received != last and time.monotonic() < deadline:  # until it goes quiet
        last = probe.received
        time.sleep(0.5)
    probe.close()
    camera = app.cameras[cam]
    pipe, cap = camera.pipeline, camera.capture
    n = max(pipe.totals.frames, 1)
    stages = {"decode": cap.stats.decode_ms / max(cap.stats.frames_read, 1)}
    stages["motion"] = pipe.totals.ms["motion"] / n
    detector_runs = 0
    if app.detector_service is not None:
        phases = getattr(app.detector_service.detector, "phases", None)
        if phases is not None:
            for k, v in phases.snapshot().items():
                stages[k] = v / n
        detector_runs = app.detector_service.requests
    stages["track"] = pipe.totals.ms["track"] / n
    stages["publish"] = pipe.totals.ms["publish"] / n
    return {
        "frames_analysed": pipe.totals.frames,
        "frames_read": cap.stats.frames_read,
        "detector_runs": detector_runs,
        "wall_s": round(wall, 2),
        "fps_analysed": round(pipe.totals.frames / wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_frame": round(cpu / n, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "latency_ms": _percentiles(probe.latencies_ms),
        "detections_received": probe.received,
        "stage_ms": {k: round(v, 2) for k, v in stages.items()},
    }


def measure_alone(settings_json: dict[str, Any], frames: int) -> dict[str, float]:
    """Each stage by itself on the same frames: ms per frame (child process)."""
    import cv2

    from streamd.detect import create_detector
    from streamd.frames import Frame, Image
    from streamd.motion import MotionStage

    settings = validate(settings_json)
    cap = cv2.VideoCapture(str(settings.cameras[0].url), cv2.CAP_FFMPEG)
    images: list[Image] = []
    t0 = time.perf_counter()
    while len(images) < frames:
        ok, image = cap.read()
        if not ok:
            break
        images.append(np.asarray(image, np.uint8))
    out = {"decode": (time.perf_counter() - t0) * 1000.0 / max(len(images), 1)}
    cap.release()
    stage = MotionStage(settings.motion)
    t0 = time.perf_counter()
    for i, image in enumerate(images):
        stage.propose(Frame("bench", i + 1, 0.0, image))
    out["motion"] = (time.perf_counter() - t0) * 1000.0 / max(len(images), 1)
    detector = create_detector(settings.detector)
    if detector is not None:
        sample = images[:: max(1, len(images) // 40)][:40]
        detector.detect(sample[:1])
        t0 = time.perf_counter()
        for image in sample:
            detector.detect([image])
        out["detector_full_frame"] = (time.perf_counter() - t0) * 1000.0 / max(len(sample), 1)
        detector.close()
    return {k: round(v, 2) for k, v in out.items()}


def _in_child(fn: Any, *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None) \
        or shutil.which("mosquitto")
    if binary is None:
        raise RuntimeError("mosquitto not found (apt-get install mosquitto), or pass --broker")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def variants(settings: Settings, video: str, host: str, port: int, state_dir: Path,
             baseline_size: int) -> dict[str, dict[str, Any]]:
    """The config as given, and the naive baseline, both on the bench video."""
    base = settings.model_dump(mode="json")
    base["cameras"] = [{"name": "bench", "url": video}]
    base["mqtt"].update(host=host, port=port, stats_interval_s=3600, topic_prefix=None,
                        client_id=None)
    base["site"] = "bench"
    out: dict[str, dict[str, Any]] = {}
    for name in ("streamd", "naive"):
        v = json.loads(json.dumps(base))
        v["state_dir"] = str(state_dir / name)
        if name == "naive":
            v["motion"]["enabled"] = False
            det = v["detector"]
            if det["backend"] != "none":
                det.update(full_frame_every=1, interval=1)
                if "input_size" in det:
                    det["input_size"] = baseline_size
        out[name] = v
    return out


def _row(label: str, a: object, b: object) -> str:
    return f"  {label:<34}{a!s:>16}{b!s:>22}"


def render(result: dict[str, Any]) -> str:
    s, n = result["streamd"], result["naive"]
    lines = [f"streamd bench — {result['video']}, {s['frames_analysed']} frames, "
             f"detector {result['detector']}, {os.cpu_count()} CPUs",
             _row("", "streamd", f"naive ({result['baseline_size']}, all)")]
    for key, label in (("fps_analysed", "analysed fps"), ("cpu_s_per_frame",
                       "CPU-s per analysed frame"), ("peak_rss_mb", "peak RSS (MB)"),
                       ("detector_runs", "detector runs")):
        lines.append(_row(label, s[key], n[key]))
    for p in ("p50", "p95", "p99"):
        lines.append(_row(f"capture→subscriber latency {p} ms",
                          (s["latency_ms"] or {}).get(p, "-"),
                          (n["latency_ms"] or {}).get(p, "-")))
    lines.append("  per analysed frame, ms:")
    for k in s["stage_ms"].keys() | n["stage_ms"].keys():
        lines.append(_row(f"  {k}", s["stage_ms"].get(k, "-"), n["stage_ms"].get(k, "-")))
    lines.append(f"  CPU per frame, streamd / naive: {result['cpu_ratio']:.3f}")
    alone = result["alone"]
    lines.append(f"  stages alone (ms/frame): {alone}; slowest per pipeline frame "
                 f"{result['slowest_stage_ms']:.1f} ms -> {1000 / result['slowest_stage_ms']:.1f}"
                 f" fps; pipeline {s['fps_analysed']} fps = "
                 f"{result['throughput_vs_slowest']:.2f}x")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    settings = cfg.settings
    video = args.video or next((str(c.url) for c in settings.cameras if c.kind == "file"), None)
    if video is None or not Path(video).is_file():
        print("bench needs a video file: --video PATH, or a file camera in the config",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="streamd-bench-") as tmp:
        workdir = Path(tmp)
        broker = None
        if args.broker:
            host, _, port_s = args.broker.rpartition(":")
            port = int(port_s)
        else:
            broker, port = _start_broker(workdir)
            host = "127.0.0.1"
        try:
            runs = variants(settings, video, host, port, workdir, args.baseline_size)
            result: dict[str, Any] = {"video": video, "detector": settings.detector.backend,
                                      "baseline_size": args.baseline_size}
            for name, v in runs.items():
                print(f"bench: running {name} …", file=sys.stderr, flush=True)
                result[name] = _in_child(measure, v, args.frames)
            print("bench: timing stages alone …", file=sys.stderr, flush=True)
            result["alone"] = _in_child(measure_alone, runs["streamd"],
                                        min(args.frames or 200, 200))
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(5)
    s = result["streamd"]
    result["cpu_ratio"] = round(s["cpu_s_per_frame"] / result["naive"]["cpu_s_per_frame"], 4)
    alone = result["alone"]
    det_share = s["detector_runs"] / max(s["frames_analysed"], 1)
    per_frame = {"decode": alone["decode"], "motion": alone["motion"],
                 "detector": alone.get("detector_full_frame", 0.0) * det_share}
    result["slowest_stage_ms"] = max(per_frame.values())
    result["throughput_vs_slowest"] = round(
        s["fps_analysed"] / (1000 / result["slowest_stage_ms"]), 3)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="measure per-stage cost, CPU, RSS, latency vs a naive "
                       "baseline, in one run")
    p.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    p.add_argument("--video", help="video file (default: the config's first file camera)")
    p.add_argument("--frames", type=int, default=None, help="analyse at most N frames")
    p.add_argument("--baseline-size", type=int, default=640,
                   help="model input size of the naive baseline (default 640)")
    p.add_argument("--broker", help="HOST:PORT of a broker (default: start a private mosquitto)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
