"""N live RTSP cameras into one daemon at its default settings: per camera, the share of frames
analysed, the detection rate and the capture→MQTT latency.

    .venv/bin/python benchmarks/fleet.py [--cameras 8] [--seconds 30] [--json]

The cameras must not eat the CPU the figure is about, so the clip (vtest.avi by default, or
a test pattern) is encoded to H.264 once, before anything is timed, and the test RTSP server
(Debian's GStreamer, one mount per camera) sends those access units in a loop at `--fps`
without decoding or encoding anything. A private mosquitto and `streamd run` at the daemon's
defaults (override with `--detector`, `--scale-width`, `--interval`) follow; a real MQTT
subscriber measures capture→receive latency of every detections message in the window.

Per camera: `analysed` is the share of the frames the camera served (`--fps` times the window) that
were analysed, and of those captured (the daemon's `frames_in`); `detect_hz` is the daemon's
own per-camera rate of frames sent to the detector (`fps_detected` in its stats; `allocated`
is what the adaptive schedule granted, `detect_rate_hz`), else an estimate from the
detections messages (frames with motion ROIs ÷ `detector.interval`) marked `~`; `shed` counts
frames the daemon chose not to analyse (any reason), `dropped` those overwritten unseen,
`deferred` the detector runs that were due but deferred because the detector's queue held its
share. The analysis share (1.0 unless shedding) and the 1-minute load average before and
after the window say how much of the box the daemon had.
CPU is read from /proc for the daemon and the server. Recall against a reference is not
measured here: live frame_ids do not map to clip frames; `streamd bench` measures it on the
same clip. Run ./scripts/setup.sh first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamd.benchutil import percentiles  # noqa: E402
from tests.helpers.mqtt import Collector, Message, Mosquitto  # noqa: E402
from tests.helpers.procs import Daemon, free_port  # noqa: E402
from tests.helpers.rtsp_server import RtspServer, encode_h264  # noqa: E402
from tests.helpers.video import VTEST  # noqa: E402

TICK_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK_S


def p99(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 99)), 1) if values else None


def per_camera(name: str, window: list[Message], args: argparse.Namespace, seconds: float,
               interval: int) -> dict[str, Any]:
    """One camera's figures over the measuring window."""
    dets = [m for m in window if m.topic.endswith(f"/{name}/detections")]
    stats = [m.json for m in window if m.topic.endswith(f"/{name}/stats")]
    lat = [(m.received - m.json["ts"]) * 1000.0 for m in dets]
    out: dict[str, Any] = {"messages": len(dets), "p99_ms": p99(lat)}
    if len(stats) >= 2:
        first, last = stats[0], stats[-1]
        span = sum(s["interval_s"] for s in stats[1:])
        analysed = last["frames_analysed"] - first["frames_analysed"]
        captured = last["frames_in"] - first["frames_in"]
        out.update(
            analysed_of_served=round(analysed / (args.fps * span), 3),
            analysed_of_captured=round(analysed / captured, 3) if captured else None,
            dropped=last["dropped"] - first["dropped"],
            skipped=last["skipped"] - first["skipped"],
            shed=sum(last.get("shed", {}).values()) - sum(first.get("shed", {}).values()),
            deferred=last.get("detector_deferred", 0) - first.get("detector_deferred", 0))
        rates = [s["fps_detected"] for s in stats[1:] if "fps_detected" in s]
        if rates:
            out["detect_hz"] = round(float(np.mean(rates)), 2)
        allocated = [s["detect_rate_hz"] for s in stats[1:]
                     if s.get("detect_rate_hz") is not None]
        if allocated:
            out["allocated_hz"] = round(float(np.mean(allocated)), 2)
    if "detect_hz" not in out:
        with_rois = sum(1 for m in dets if m.json.get("rois"))
        out["detect_hz"] = f"~{with_rois / interval / seconds:.2f}"
    return out


def config(args: argparse.Namespace, server: RtspServer, mounts: tuple[str, ...],
           broker_port: int, state: Path) -> dict[str, Any]:
    """The daemon's config: its defaults, except where the command line says otherwise."""
    cfg: dict[str, Any] = {
        "site": "fleet", "state_dir": str(state),
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "stats_interval_s": 2},
        "cameras": [{"name": f"cam{i}", "url": server.url_for(m), "fps": args.fps}
                    for i, m in enumerate(mounts)]}
    if args.detector:
        cfg["detector"] = json.loads(args.detector)
    if args.interval is not None:
        cfg.setdefault("detector", {})["interval"] = args.interval
    if args.scale_width is not None:
        cfg["motion"] = {"scale_width": args.scale_width}
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--video", default=str(VTEST), help="clip to serve (any file OpenCV reads)")
    ap.add_argument("--pattern", help="serve this videotestsrc pattern instead of --video")
    ap.add_argument("--clip-frames", type=int, default=300, help="frames in the looped clip")
    ap.add_argument("--width", type=int, default=0, help="0: the clip's own (pattern: 640)")
    ap.add_argument("--height", type=int, default=0)
    ap.add_argument("--detector", help='detector section as JSON, e.g. \'{"backend": "hog"}\' '
                    "(default: the daemon's default)")
    ap.add_argument("--scale-width", type=int, default=None, help="motion.scale_width")
    ap.add_argument("--interval", type=int, default=None, help="detector.interval")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamd-fleet-") as tmp:
        work = Path(tmp)
        t_enc = time.monotonic()
        if args.pattern:
            clip = encode_h264(work / "clip.mp4", pattern=args.pattern, overlay=False,
                               width=args.width or 640, height=args.height or 480,
                               fps=args.fps, frames=args.clip_frames)
        else:
            clip = encode_h264(work / "clip.mp4", video=args.video, width=args.width,
                               height=args.height, fps=args.fps, frames=args.clip_frames)
        print(f"fleet: clip encoded once in {time.monotonic() - t_enc:.1f} s",
              file=sys.stderr, flush=True)
        mounts = tuple(f"/cam{i}" for i in range(args.cameras))
        server = RtspServer(free_port(), mounts=mounts, h264=clip, fps=args.fps,
                            log_dir=work / "rtsp").start()
        broker = Mosquitto(free_port(), work / "mq").start()
        sub = Collector(broker.host, broker.port, "streamd/fleet/#").start()
        cfg = config(args, server, mounts, broker.port, work / "state")
        # The daemon runs in its own folder; relative model paths (the defaults') resolve
        # against the repository's engines/, as for an operator running from the checkout.
        (work / "daemon").mkdir()
        (work / "daemon" / "engines").symlink_to(REPO / "engines")
        daemon = Daemon(cfg, work / "daemon", name="fleet").start()

        def streaming(c: Collector) -> bool:
            if not daemon.running:
                raise AssertionError("the daemon exited")
            return len({m.topic for m in c.messages("/status") if isinstance(m.data, dict)
                        and m.data.get("state") == "streaming"}) >= int(args.cameras)

        try:
            try:
                sub.wait_for(streaming, 90, "every camera streaming")
            except AssertionError:
                print(daemon.logs(), file=sys.stderr)
                raise
            time.sleep(5)  # settle: connections, first key frames, motion's first flow
            assert server.proc is not None
            cpu0 = {"daemon": cpu_s(daemon.pid), "server": cpu_s(server.proc.pid)}
            start, t0 = sub.cursor(), time.monotonic()
            load_before = os.getloadavg()[0]
            time.sleep(args.seconds)
            seconds = time.monotonic() - t0
            cpu = {k: round((cpu_s(pid) - cpu0[k]) / seconds, 2) for k, pid in
                   (("daemon", daemon.pid), ("server", server.proc.pid))}
            window = sub.messages(start=start)
            assert daemon.terminate(30) == 0, daemon.logs()
        finally:
            daemon.kill()
            sub.stop()
            broker.stop()
            server.stop()
    interval = int(cfg.get("detector", {}).get("interval", 1))
    cams = {f"cam{i}": per_camera(f"cam{i}", window, args, seconds, interval)
            for i in range(args.cameras)}
    lat = [(m.received - m.json["ts"]) * 1000.0 for m in window
           if m.topic.endswith("/detections")]
    shared = next((m.json for m in reversed(window) if m.topic.endswith("/stats")), {})
    result = {
        "cameras": args.cameras, "fps_each": args.fps, "seconds": round(seconds, 1),
        "clip": args.pattern or args.video, "overrides": {k: v for k, v in cfg.items()
                                                          if k in ("detector", "motion")},
        "cores_used": cpu,
        "latency_ms": percentiles(lat),
        "detector": shared.get("detector"),
        "analysis_share": [m.json.get("analysis_share") for m in window
                           if m.topic.endswith("/cam0/stats")],
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "per_camera": cams,
    }
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def render(result: Mapping[str, Any]) -> str:
    lm = result["latency_ms"] or {}
    lines = [f"{result['cameras']} cameras x {result['fps_each']} fps of {result['clip']} "
             f"(pre-encoded H.264), {result['seconds']:.0f} s, overrides "
             f"{result['overrides'] or 'none'}: capture→MQTT p50 {lm.get('p50')} "
             f"p95 {lm.get('p95')} p99 {lm.get('p99')} ms; cores used: daemon "
             f"{result['cores_used']['daemon']}, RTSP server {result['cores_used']['server']}; "
             f"load average (1 min) before/after {result['loadavg_1m']}",
             f"  detector (shared): {result['detector']}",
             f"  analysis share over the window (1.0: nothing shed): {result['analysis_share']}",
             f"  {'camera':<8}{'analysed/served':>16}{'analysed/captured':>19}"
             f"{'detect Hz':>11}{'allocated':>11}{'p99 ms':>9}{'dropped':>9}{'skipped':>9}"
             f"{'shed':>7}{'deferred':>10}"]
    for cam, c in result["per_camera"].items():
        lines.append(f"  {cam:<8}{c.get('analysed_of_served', '-')!s:>16}"
                     f"{c.get('analysed_of_captured', '-')!s:>19}{c['detect_hz']!s:>11}"
                     f"{c.get('allocated_hz', '-')!s:>11}{c['p99_ms']!s:>9}"
                     f"{c.get('dropped', '-')!s:>9}{c.get('skipped', '-')!s:>9}"
                     f"{c.get('shed', '-')!s:>7}{c.get('deferred', '-')!s:>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
