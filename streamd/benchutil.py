"""Pieces of `streamd bench` that are not the measurement: a private broker and the table."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the bench's broker, the web view)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """The broker both variants publish to: `--broker HOST:PORT`, or a private mosquitto on
    a free loopback port for the bench's lifetime (a context manager)."""

    def __init__(self, workdir: Path, address: str | None = None) -> None:
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self.host, self.port = "127.0.0.1", 0
        if address:
            host, _, port = address.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)

    def __enter__(self) -> Broker:
        if self.port:
            return self
        binary = next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None) \
            or shutil.which("mosquitto")
        if binary is None:
            raise RuntimeError("mosquitto not found (apt-get install mosquitto), or pass "
                               "--broker")
        port = free_port()
        conf = self._workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                self.port = port
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("mosquitto did not start")

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _row(label: str, a: object, b: object) -> str:
    return f"  {label:<36}{a!s:>14}{b!s:>16}"


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def render(result: dict[str, Any]) -> str:
    """The human table: both variants side by side, then recall beside the CPU ratio."""
    s, r = result["streamd"], result["reference"]
    lines = [f"streamd bench — {result['video']}, {s['frames_analysed']} frames, "
             f"detector {result['detector']}, {result['cpus']} CPUs",
             _row("", "streamd", "reference")]
    for key, label in (("fps_analysed", "analysed fps"),
                       ("cpu_s_per_frame", "CPU-s per frame"),
                       ("peak_rss_mb", "peak RSS (MB)"),
                       ("detections_received", "detections messages")):
        lines.append(_row(label, _fmt(s[key]), _fmt(r[key])))
    lines.append(_row("detector runs", _fmt(s.get("detector_runs")),
                      _fmt(r.get("detector_runs"))))
    if s.get("viewers"):
        v = s["viewers"]
        lines.append(_row("live-view viewers", f"{v['count']} ({v['pictures']} pictures)", "-"))
    lines.append(_row("detector crops", _fmt(s["detector"].get("crops")),
                      _fmt(r["detector"].get("crops"))))
    if s.get("shed") or r.get("shed"):
        lines.append(_row("frames shed", _fmt(s.get("shed")), _fmt(r.get("shed"))))
    for p in ("p50", "p95", "p99"):
        lines.append(_row(f"capture→subscriber {p} ms", (s["latency_ms"] or {}).get(p, "-"),
                          (r["latency_ms"] or {}).get(p, "-")))
    lines.append("  per analysed frame, ms:")
    for k in sorted(s["stage_ms"].keys() | r["stage_ms"].keys()):
        lines.append(_row(f"  {k}", _fmt(s["stage_ms"].get(k)), _fmt(r["stage_ms"].get(k))))
    rec = result["recall"]
    recall = "-" if rec["recall"] is None else f"{rec['recall']:.3f}"
    ratio = "-" if result["cpu_ratio"] is None else f"{result['cpu_ratio']:.3f}"
    lines.append(f"  recall {recall} ({rec['matched']}/{rec['reference_objects']} reference "
                 f"objects; {rec['extra']} extra)   CPU per frame, streamd / reference: {ratio}")
    stable = result.get("reference_stability")
    if stable is not None:
        lines.append(f"  reference stability {stable:.3f}: the reference's objects it also "
                     "found one frame earlier (a frame without a detector run keeps at most "
                     "about this much)")
    alone = result.get("alone")
    if alone:
        slowest = result["slowest_stage_ms"]
        lines.append(f"  stages alone (ms/frame): {alone}; slowest per pipeline frame "
                     f"{slowest:.1f} ms -> {1000 / max(slowest, 1e-3):.1f} fps; pipeline "
                     f"{s['fps_analysed']} fps = {result['throughput_vs_slowest']:.2f}x")
    return "\n".join(lines)
