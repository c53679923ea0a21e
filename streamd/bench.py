"""`streamd bench`: what a camera costs on this box, and what that saving costs in answers.

Two variants run on the same video, each in a fresh process (so CPU time and peak RSS are its
own), each publishing to a real broker:

- `streamd`: the config as given (motion gating, crops, inference interval, tracker carry…);
- `reference`: the same detector on every whole frame, no motion stage, no interval (so no
  boxes carried by the tracker), no describer — the answers the detector would give if CPU
  were free.

A real MQTT subscriber in this process reads what both published — what a subscriber of the
daemon sees — and measures capture→receive latency. The pipeline's recall is the share of
the reference's objects it published for the same frame, label and box (`streamd.recall`),
beside the ratio of CPU seconds per frame. The daemon is driven only through its stable
surfaces: a config file, `App`, and the MQTT contract (`detections`, and the final `stats`
message for per-stage times). `alone` times decode, motion and the detector by themselves on
the same frames, so the pipeline's throughput can be compared with its slowest stage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from streamd.benchutil import Broker, free_port, percentiles, render
from streamd.config import ConfigError, Settings, load, validate
from streamd.recall import compare, objects_by_frame, stability

log = logging.getLogger(__name__)

CAMERA = "bench"
QUIET_S = 0.5
"""After the final stats message: how long the subscriber must hear nothing more."""


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Subscriber:
    """A real MQTT client: keeps every `detections` payload of one variant with its receive
    latency, and its last `stats` payload (the daemon publishes a final one after draining)."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.detections: list[dict[str, Any]] = []
        self.latencies_ms: list[float] = []
        self.stats: dict[str, Any] | None = None
        self.last_message_mono = time.monotonic()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._prefix = f"{prefix}/{CAMERA}/"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(self._prefix + "#", qos=1)
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(host, port)
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError("bench subscriber could not subscribe")

    def _on_message(self, client: object, userdata: object, msg: Any) -> None:
        now = time.time()
        kind = msg.topic[len(self._prefix):]
        if kind not in ("detections", "stats"):
            return
        payload = json.loads(msg.payload)
        with self._lock:
            self.last_message_mono = time.monotonic()
            if kind == "stats":
                self.stats = payload
            else:
                self.detections.append(payload)
                self.latencies_ms.append((now - payload["ts"]) * 1000.0)

    def wait_final(self, timeout_s: float) -> None:
        """Until the final stats arrived and the topic went quiet (QoS 1: nothing is lost)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.stats is not None and \
                        time.monotonic() - self.last_message_mono >= QUIET_S:
                    return
            time.sleep(0.1)
        log.warning("bench: no final stats from the daemon within %.0f s", timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def measure(config_path: str, frames: int | None) -> dict[str, Any]:
    """Run the daemon once over the bench camera: its own CPU, wall time, RSS (child)."""
    from streamd.app import App

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = App(load(config_path), max_frames=frames)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    code = app.run()
    return {"exit": code, "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - cpu0,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


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
    stage.close()
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
    """`fn(*args)` in a fresh interpreter: its exception is re-raised here, and a child that
    dies (a crash, the OOM killer) raises BrokenProcessPool instead of leaving the bench
    waiting forever, as a `multiprocessing.Pool` would."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def variants(settings: Settings, video: str, host: str, port: int, workdir: Path,
             reference_size: int | None) -> dict[str, dict[str, Any]]:
    """The config as given and the reference, both on the bench video, each with its own
    site (topic prefix) and state directory so their frame_ids start alike."""
    base = settings.model_dump(mode="json")
    base["cameras"] = [{"name": CAMERA, "url": video}]
    base["mqtt"].update(host=host, port=port, stats_interval_s=3600, topic_prefix=None,
                        client_id=None)
    base["snapshots"] = {}
    out: dict[str, dict[str, Any]] = {}
    for name in ("streamd", "reference"):
        v = json.loads(json.dumps(base))
        v["site"] = f"bench-{name}"
        v["state_dir"] = str(workdir / name)
        if name == "reference":
            v["motion"]["enabled"] = False
            v["describer"] = {"backend": "none"}
            det = v["detector"]
            if det["backend"] != "none":
                det.update(full_frame_every=1, interval=1)
                if reference_size is not None and "input_size" in det:
                    det["input_size"] = reference_size
        out[name] = v
    return out


def _variant_result(run: dict[str, Any], sub: _Subscriber) -> dict[str, Any]:
    stats = sub.stats or {}
    frames = int(stats.get("frames_analysed", 0))
    n = max(frames, 1)
    wall = run["wall_s"]
    return {
        "frames_analysed": frames,
        "frames_read": stats.get("frames_in"),
        "wall_s": round(wall, 2),
        "fps_analysed": round(frames / wall, 2) if wall > 0 else None,
        "cpu_s": round(run["cpu_s"], 2),
        "cpu_s_per_frame": round(run["cpu_s"] / n, 4),
        "peak_rss_mb": run["peak_rss_mb"],
        "latency_ms": percentiles(sub.latencies_ms),
        "detections_received": len(sub.detections),
        "stage_ms": dict(stats.get("stage_ms") or {}),
        "detector_runs": stats.get("detector_runs"),
        "shed": dict(stats.get("shed") or {}),
        "detector": dict(stats.get("detector") or {}),
    }


def bench(settings: Settings, video: str, args: argparse.Namespace, workdir: Path
          ) -> dict[str, Any]:
    """Both variants (and the stages alone) against one broker; the comparison."""
    with Broker(workdir, args.broker) as broker:
        runs = variants(settings, video, broker.host, broker.port, workdir,
                        args.baseline_size)
        viewers = None
        if args.viewers:  # the live view on in the streamd variant, N clients watching it
            from streamd.web.viewers import Viewers

            web_port = free_port()
            runs["streamd"]["web"] = {"enabled": True, "host": "127.0.0.1", "port": web_port}
            viewers = Viewers(web_port, f"/cameras/{CAMERA}/stream.mjpeg", args.viewers)
        result: dict[str, Any] = {"video": video, "detector": settings.detector.backend,
                                  "cpus": os.cpu_count()}
        published: dict[str, dict[int, Any]] = {}
        for name, v in runs.items():
            path = workdir / f"{name}.yaml"
            path.write_text(json.dumps(v))  # JSON is YAML
            sub = _Subscriber(broker.host, broker.port, f"streamd/{v['site']}")
            try:
                print(f"bench: running {name} …", file=sys.stderr, flush=True)
                watching = viewers if name == "streamd" and viewers is not None \
                    else contextlib.nullcontext()
                try:
                    with watching:
                        run = _in_child(measure, str(path), args.frames)
                except Exception as exc:  # the child's own error, re-raised here by the pool
                    raise RuntimeError(f"the {name} run failed: {exc}") from exc
                if run["exit"] != 0:
                    raise RuntimeError(f"the {name} daemon exited with {run['exit']}")
                sub.wait_final(30)
            finally:
                sub.close()
            result[name] = _variant_result(run, sub)
            if name == "streamd" and viewers is not None:
                result[name]["viewers"] = {"count": args.viewers, "pictures": viewers.pictures,
                                           "mb": round(viewers.bytes / 1e6, 1)}
            published[name] = objects_by_frame(sub.detections)
        if not args.no_alone:
            print("bench: timing stages alone …", file=sys.stderr, flush=True)
            result["alone"] = _in_child(measure_alone, runs["streamd"],
                                        min(args.frames or 200, 200))
    result["recall"] = compare(published["reference"], published["streamd"]).as_dict()
    result["reference_stability"] = stability(published["reference"]).recall
    s, r = result["streamd"], result["reference"]
    result["cpu_ratio"] = round(s["cpu_s_per_frame"] / r["cpu_s_per_frame"], 4) \
        if r["cpu_s_per_frame"] > 0 else None
    alone = result.get("alone")
    if alone:
        crops = s["detector"].get("crops", s["frames_analysed"])
        per_frame = {"decode": alone["decode"], "motion": alone["motion"],
                     "detector": alone.get("detector_full_frame", 0.0)
                     * crops / max(s["frames_analysed"], 1)}
        slowest = max(per_frame.values())
        result["slowest_stage_ms"] = round(slowest, 2)
        result["throughput_vs_slowest"] = round((s["fps_analysed"] or 0) * slowest / 1000, 3)
    return result


def run(args: argparse.Namespace) -> int:
    try:
        if args.config is not None:
            settings = load(args.config).settings
        elif args.video:
            settings = validate({"site": "bench", "cameras": [{"name": CAMERA,
                                                               "url": args.video}]})
        else:
            print("bench needs -c CONFIG or --video PATH", file=sys.stderr)
            return 2
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    video = args.video or next((str(c.url) for c in settings.cameras if c.kind == "file"), None)
    if video is None or not Path(video).is_file():
        print("bench needs a video file: --video PATH, or a file camera in the config",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="streamd-bench-") as tmp:
        try:
            result = bench(settings, video, args, Path(tmp))
        except RuntimeError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="the config against the same detector on every whole "
                       "frame: recall and CPU per frame side by side, in one run")
    p.add_argument("-c", "--config", type=Path, help="YAML config file (default: every "
                   "setting at its default, one camera on --video)")
    p.add_argument("--video", help="video file, any format OpenCV reads (default: the "
                   "config's first file camera)")
    p.add_argument("--frames", type=int, default=None, help="analyse at most N frames")
    p.add_argument("--baseline-size", type=int, default=None,
                   help="model input size of the reference (default: the config's); e.g. "
                   "640 to compare against the naive loop at full resolution")
    p.add_argument("--broker", help="HOST:PORT of a broker (default: start a private mosquitto)")
    p.add_argument("--no-alone", action="store_true",
                   help="skip timing decode, motion and the detector alone")
    p.add_argument("--viewers", type=int, default=0, metavar="N",
                   help="turn the live view on in the streamd variant and watch its MJPEG "
                   "stream with N clients, to show what watching costs (0: nobody looks)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
