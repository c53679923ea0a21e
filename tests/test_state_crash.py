"""Crash safety of the frame_id / seq high-water marks: SIGKILL at random moments, restart.

The contract promises that per camera `frame_id` and `seq` never go backwards, crashes
included. Two cameras reserve their counters from several threads at the same moment (every
start), which is where a racy state write once renamed an older snapshot last; the next
crash then resumed a counter below values already on the wire.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.contract import PREFIX
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import Daemon, daemon_config
from tests.helpers.video import write_moving_shapes_video

pytestmark = pytest.mark.integration

CAMERAS = ("north", "south")
KILLS = 20
STATE_ERRORS = ("cannot write state file", "unreadable")


def first_copies(sub: Collector, camera: str, topic: str) -> list[dict[str, Any]]:
    """Payloads in arrival order, each identical redelivery (QoS 1 after a crash) dropped.

    Deduplicating on the whole payload rather than on `seq` matters: a counter that resumed
    below its last value re-issues an old `seq` on a *different* message, which must show up
    as going backwards instead of being dropped as a duplicate."""
    seen: set[str] = set()
    out = []
    for m in sub.messages(f"{PREFIX}/{camera}/{topic}"):
        key = json.dumps(m.json, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(m.json)
    return out


def publishing(sub: Collector, d: Daemon, start: int) -> bool:
    """Both cameras published since ``start``; fails at once with the logs if ``d`` died."""
    assert d.running, f"streamd exited\n{d.logs()}"
    return all(sub.messages(f"{PREFIX}/{n}/detections", start) for n in CAMERAS)


def backwards(values: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.pairwise(values) if not b > a]


@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_never_moves_frame_id_or_seq_backwards(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        daemon: Callable[..., Daemon]) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    clips = {}
    for i, name in enumerate(CAMERAS):
        clips[name] = tmp_path / f"{name}.avi"
        write_moving_shapes_video(clips[name], frames=30, wh=(160, 120), fps=20, seed=i)
    cfg = daemon_config(mosquitto.port, [
        {"name": n, "url": str(clips[n]), "realtime": True, "loop": True} for n in CAMERAS],
        tmp_path / "state", publish_empty=True)
    sub = collector(f"{PREFIX}/#")
    started = time.monotonic()
    for run in range(KILLS):
        mark = sub.cursor()
        d = daemon(cfg)
        sub.wait_for(functools.partial(publishing, d=d, start=mark), 30,
                     f"run {run}: both cameras")
        time.sleep(rng.uniform(0.3, 1.5))
        d.kill()
        errors = [line for line in d.output.splitlines()
                  if any(e in line for e in STATE_ERRORS)]
        assert not errors, f"run {run} (seed {seed}): state errors {errors}\n{d.logs()}"
    print(f"{KILLS} SIGKILLs in {time.monotonic() - started:.1f} s, seed {seed}")

    for name in CAMERAS:
        dets = first_copies(sub, name, "detections")
        assert len(dets) >= KILLS, f"{name}: only {len(dets)} detections in {KILLS} runs"
        for field in ("seq", "frame_id"):
            bad = backwards([p[field] for p in dets])
            assert not bad, f"{name} detections {field} went backwards (seed {seed}): {bad[:5]}"
        stats = [p["seq"] for p in first_copies(sub, name, "stats")]
        assert not backwards(stats), f"{name} stats seq went backwards (seed {seed}): {stats}"
