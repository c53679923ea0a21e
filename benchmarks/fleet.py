"""N live RTSP cameras at 10 fps into one daemon: latency percentiles and drops.

    .venv/bin/python benchmarks/fleet.py [--cameras 8] [--seconds 30] [--json]

Starts the test RTSP server (Debian's GStreamer, one mount per camera, a moving test
pattern encoded as H.264), a private mosquitto, and `streamd run` with the random-weight
YOLOv8n ONNX model; a real MQTT subscriber measures capture→receive latency of every
detections message. Drops are read from the daemon's own stats (`dropped`: frames the
capture overwrote before analysis saw them; `skipped`: frames above the fps cap, by design).
Run ./scripts/setup.sh first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.mqtt import Collector, Mosquitto  # noqa: E402
from tests.helpers.procs import Daemon, daemon_config, free_port  # noqa: E402
from tests.helpers.rtsp_server import RtspServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--scale-width", type=int, default=160, help="motion.scale_width")
    ap.add_argument("--interval", type=int, default=5, help="detector.interval")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = REPO / "engines" / "yolov8n-random.onnx"
    with tempfile.TemporaryDirectory(prefix="streamd-fleet-") as tmp:
        work = Path(tmp)
        mounts = tuple(f"/cam{i}" for i in range(args.cameras))
        server = RtspServer(free_port(), mounts=mounts, width=args.width, height=args.height,
                            fps=args.fps, log_dir=work / "rtsp").start()
        broker = Mosquitto(free_port(), work / "mq").start()
        sub = Collector(broker.host, broker.port, "streamd/fleet/#").start()
        cfg = daemon_config(broker.port, [
            {"name": f"cam{i}", "url": server.url_for(m), "fps": args.fps}
            for i, m in enumerate(mounts)], work / "state", site="fleet",
            detector={"backend": "onnxruntime", "model": str(model), "input_size": 320,
                      "interval": args.interval, "full_frame_every": 30},
            motion={"scale_width": args.scale_width}, stats_interval_s=5)
        daemon = Daemon(cfg, work / "daemon", name="fleet").start()
        try:
            sub.wait_for(lambda c: len({m.topic for m in c.messages("/status")
                                        if isinstance(m.data, dict)
                                        and m.data.get("state") == "streaming"})
                         >= args.cameras, 60, "every camera streaming")
            time.sleep(3)  # settle
            start = sub.cursor()
            t0 = time.time()
            time.sleep(args.seconds)
            window = [m for m in sub.messages(start=start) if m.topic.endswith("/detections")]
            stats_msgs = [m.json for m in sub.messages(start=start)
                          if m.topic.endswith("/stats")]
            assert daemon.terminate(30) == 0, daemon.logs()
        finally:
            daemon.kill()
            sub.stop()
            broker.stop()
            server.stop()
    lat = np.array([(m.received - m.json["ts"]) * 1000.0 for m in window])
    per_cam: dict[str, dict[str, float]] = {}
    for s in stats_msgs:
        per_cam[s["camera"]] = {"dropped": s["dropped"], "skipped": s.get("skipped", 0),
                                "frames_in": s.get("frames_in", 0),
                                "frames_analysed": s["frames_analysed"]}
    elapsed = time.time() - t0
    result = {
        "cameras": args.cameras, "fps_each": args.fps, "seconds": round(elapsed, 1),
        "frame_wh": [args.width, args.height], "motion_scale_width": args.scale_width,
        "detector_interval": args.interval,
        "messages": len(window),
        "analysed_fps_total": round(len(window) / args.seconds, 1),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 1)
                       for p, q in (("p50", 50), ("p95", 95), ("p99", 99))} if len(lat) else None,
        "per_camera_totals": per_cam,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lm = result["latency_ms"] or {}
        print(f"{args.cameras} cameras x {args.fps} fps ({args.width}x{args.height}), "
              f"{elapsed:.0f} s: {result['analysed_fps_total']} frames/s analysed in all, "
              f"capture→subscriber latency p50 {lm.get('p50')} p95 {lm.get('p95')} "
              f"p99 {lm.get('p99')} ms")
        for cam, t in sorted(per_cam.items()):
            print(f"  {cam}: in {t['frames_in']} analysed {t['frames_analysed']} "
                  f"dropped {t['dropped']} skipped {t['skipped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
