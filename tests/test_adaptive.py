"""The adaptive split of detector capacity between cameras, the per-camera schedule built on
it, and what the detector service measures for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from streamd.detect import DetectorService
from streamd.detect.adaptive import (
    AdaptiveSchedule,
    Demand,
    DetectorLoad,
    RateBoard,
    share_rates,
)
from streamd.detect.schedule import NO_TRACKS, IntervalSchedule, TrackSummary
from streamd.detections import Detections
from streamd.frames import Frame, Image
from tests.test_detect import WhiteBlobDetector, blob_image

MOVING = Demand(fps=10, images_per_run=1, active=True)
STILL = Demand(fps=10, images_per_run=1, active=False)
YOUNG = Demand(fps=10, images_per_run=1, active=True, young_tracks=True)
HEAVY = Demand(fps=10, images_per_run=4, active=True)


@pytest.mark.parametrize(("capacity", "demands", "expected"), [
    (100, {}, {}),
    (0, {"a": MOVING}, {"a": 0.0}),
    (100, {"a": STILL}, {"a": 0.0}),
    (100, {"a": MOVING, "b": STILL}, {"a": 10.0, "b": 0.0}),
    # enough for everyone: every frame, never above the camera's own fps
    (1000, {"a": MOVING, "b": HEAVY}, {"a": 10.0, "b": 10.0}),
    # floors fit, the rest is shared max-min fair in images per second
    (12, {"a": MOVING, "b": MOVING}, {"a": 6.0, "b": 6.0}),
    # not even the floors fit: scaled evenly, same rate for each camera
    (2, {"a": MOVING, "b": HEAVY}, {"a": 0.4, "b": 0.4}),
    # young tracks get the spare capacity first
    (12, {"a": MOVING, "b": YOUNG}, {"a": 2.0, "b": 10.0}),
    # a heavy camera costs 4 images per run: fair in images, not runs
    (18, {"a": MOVING, "b": HEAVY}, {"a": 6.0, "b": 3.0}),
    # a camera analysing 1 fps cannot use a 2 Hz floor
    (100, {"a": Demand(1, 1, True)}, {"a": 1.0}),
])
def test_share_rates(capacity: float, demands: dict[str, Demand],
                     expected: dict[str, float]) -> None:
    assert share_rates(capacity, demands, 2.0) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_share_never_exceeds_capacity(n: int) -> None:
    demands = {f"c{i}": Demand(10, 1 + i % 3, True, young_tracks=i % 2 == 0) for i in range(n)}
    for capacity in (1.0, 7.5, 40.0, 500.0):
        rates = share_rates(capacity, demands, 2.0)
        used = sum(rates[k] * demands[k].images_per_run for k in demands)
        assert used <= capacity + 1e-2
        assert all(0 <= rates[k] <= demands[k].fps + 1e-9 for k in demands)


def test_load_measures_cost_and_backs_off_when_the_queue_waits() -> None:
    load = DetectorLoad(latency_target_ms=250)
    load.observe_call(images=4, ms=80)  # 20 ms per image
    assert load.ms_per_image == pytest.approx(20)
    before = load.capacity_ips()
    for _ in range(5):
        load.observe_wait(200)  # past the wait budget: 250 * 0.8 - 20 = 180 ms
    assert load.wait_budget_ms() == pytest.approx(180)
    assert DetectorLoad(250, initial_ms_per_image=300).wait_budget_ms() == 62.5, \
        "a detector slower than the target: a quarter of it"
    assert load.capacity_ips() < 0.7 * before
    low = load.utilisation
    for _ in range(50):
        load.observe_wait(1)
    assert load.utilisation > low


def test_board_recomputes_and_forgets_stale_cameras() -> None:
    now = [0.0]
    load = DetectorLoad(latency_target_ms=250, initial_ms_per_image=100)  # 7 images/s
    board = RateBoard(load, min_rate_hz=2.0, clock=lambda: now[0])
    assert board.report("a", MOVING) == pytest.approx(7.0)
    now[0] = 1.0
    board.report("b", MOVING)
    assert board.rates() == pytest.approx({"a": 3.5, "b": 3.5})
    now[0] = 4.0  # "a" stopped reporting: "b" gets it all
    assert board.report("b", MOVING) == pytest.approx(7.0)
    board.remove("b")
    assert board.rates() == {}


# -- AdaptiveSchedule: one camera's decisions, frame after frame (10 fps, t in seconds) --------

WH = (640, 480)
NO_ROIS = np.empty((0, 4), np.int32)
SMALL = np.array([[100, 100, 140, 180]], np.int32)
YOUNG_TRACK = TrackSummary(young_xyxy=np.array([[300, 200, 340, 280]], np.float32))


def run_schedule(ms_per_image: float, rois: list[np.ndarray], *,
                 tracks: TrackSummary = NO_TRACKS, backlogged: bool = False,
                 paced: bool = True) -> tuple[list[str], AdaptiveSchedule]:
    """'C' crops, 'F' whole frame, 'c<steps>' carried, 'd' due but deferred, '-' skip."""
    now = [0.0]
    board = RateBoard(DetectorLoad(250, initial_ms_per_image=ms_per_image), 2.0,
                      clock=lambda: now[0])
    schedule = AdaptiveSchedule("cam", board, input_size=160, paced=paced,
                                backlogged=lambda: backlogged)
    out = []
    for i, r in enumerate(rois):
        now[0] = i / 10
        d = schedule.decide(i, r, WH, now[0], tracks)
        out.append("d" if d.deferred else "F" if d.run and d.regions is None else "C"
                   if d.run else f"c{d.carry_steps:.1f}" if d.carry_steps is not None else "-")
    return out, schedule


@pytest.mark.parametrize(("ms_per_image", "rois", "kw", "expected"), [
    # a still camera: no detector time at all, tracks age
    (1, [NO_ROIS] * 4, {}, ["-"] * 4),
    # capacity to spare: every frame with motion, nothing without
    (1, [SMALL, SMALL, NO_ROIS, SMALL], {}, ["C", "C", "-", "C"]),
    # capacity for 2 runs/s (0.7 x 1000 / 350 ms): the floor, every 5th frame, carried between
    (350, [SMALL] * 11, {},
     ["C", "c0.2", "c0.4", "c0.6", "c0.8", "C", "c0.2", "c0.4", "c0.6", "c0.8", "C"]),
    # motion comes back after a still spell: due at once
    (350, [SMALL, NO_ROIS, NO_ROIS, NO_ROIS, NO_ROIS, NO_ROIS, NO_ROIS, SMALL], {},
     ["C", "-", "-", "-", "-", "-", "-", "C"]),
    # nothing moves but a young track: looked at again (around its box)
    (1, [NO_ROIS] * 2, {"tracks": YOUNG_TRACK}, ["C", "C"]),
    # the detector's queue holds its share: due runs are deferred, the tracker carries
    (1, [SMALL] * 3, {"backlogged": True}, ["d", "d", "d"]),
    # ... except for a lossless file, whose reader waits anyway
    (1, [SMALL] * 2, {"backlogged": True, "paced": False}, ["C", "C"]),
])
def test_adaptive_decisions(ms_per_image: float, rois: list[np.ndarray], kw: dict[str, Any],
                            expected: list[str]) -> None:
    assert run_schedule(ms_per_image, rois, **kw)[0] == expected


def test_adaptive_reports_its_rate_and_plans_crops_like_the_fixed_policy() -> None:
    _, schedule = run_schedule(350, [SMALL] * 3)
    assert schedule.allocated_hz == pytest.approx(2.0)
    assert schedule.fps == pytest.approx(10.0)
    board = RateBoard(DetectorLoad(250, initial_ms_per_image=1), 2.0)
    adaptive = AdaptiveSchedule("cam", board, input_size=160).decide(0, SMALL, WH, 0.0,
                                                                      NO_TRACKS)
    fixed = IntervalSchedule(input_size=160).decide(0, SMALL, WH)
    assert adaptive.run and fixed.run and adaptive.regions is not None
    np.testing.assert_array_equal(adaptive.regions, fixed.regions)
    half = np.array([[0, 0, 640, 240]], np.int32)
    assert AdaptiveSchedule("b", board, input_size=160).decide(
        0, half, WH, 0.0, NO_TRACKS).regions is None, "half the frame: one whole-frame pass"


def test_service_measures_the_detector_and_says_when_its_queue_is_full() -> None:
    gate = threading.Event()
    load = DetectorLoad(latency_target_ms=250, initial_ms_per_image=1000)
    det = WhiteBlobDetector(gate=gate)
    image = blob_image((300, 200, 340, 280))
    with DetectorService(det, batch_wait_ms=0, load=load) as service:
        first = service.submit(Frame("a", 1, 0.0, image))
        while service.queued_images > 0:  # until the worker took the first frame
            time.sleep(0.01)
        assert not service.backlogged()
        waiting = [service.submit(Frame("a", i, 0.0, image)) for i in range(2, 5)]
        assert service.queued_images == 3 and service.backlogged()  # 3 s of work queued
        time.sleep(0.1)
        gate.set()
        for f in [first, *waiting]:
            assert len(f.result(5)) == 1
    assert not service.backlogged()
    assert load.ms_per_image < 1000, "measured, replacing the initial guess"
    assert load.utilisation < 0.7, "the second batch waited past its budget"


def test_board_yields_detector_time_down_to_the_floors() -> None:
    load = DetectorLoad(latency_target_ms=250, initial_ms_per_image=10)  # 70 images/s
    board = RateBoard(load, min_rate_hz=2.0)
    board.report("a", MOVING)
    board.report("b", MOVING)
    board.report("c", STILL)
    yields = 0
    while board.yield_capacity():
        yields += 1
        assert yields < 50
    assert yields > 3
    assert load.capacity_ips() == pytest.approx(4.0, rel=0.06), "two floors of 2 Hz remain"
    assert board.report("a", MOVING) == pytest.approx(2.0, rel=0.06)
    for _ in range(20):  # one step per governor window
        load.raise_ceiling()
    assert load.capacity_ips() == pytest.approx(70, rel=0.01)


def test_a_lossless_files_queue_wait_is_not_oversubscription() -> None:
    """A file read as fast as analysis goes queues frames behind each other by design."""
    gate = threading.Event()
    load = DetectorLoad(latency_target_ms=250)
    det = WhiteBlobDetector(gate=gate)
    image = blob_image((300, 200, 340, 280))
    with DetectorService(det, batch_wait_ms=0, load=load) as service:
        futures = [service.submit(Frame("f", i, 0.0, image), paced=False) for i in range(4)]
        time.sleep(0.1)
        gate.set()
        for f in futures:
            f.result(5)
    assert load.utilisation == pytest.approx(0.7), "no wait was reported"
    assert load.ms_per_image > 20, "the calls were measured all the same"


class Stepped(WhiteBlobDetector):
    """One image per call; the calls named in `holds` wait for their event."""

    def __init__(self, holds: dict[int, threading.Event]) -> None:
        super().__init__(max_batch=1)
        self.holds = holds

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        hold = self.holds.get(len(self.calls))
        if hold is not None:
            hold.wait(5)
        return super().detect(images)


def test_each_frame_of_a_batch_is_answered_as_soon_as_its_crops_are_done() -> None:
    first, third = threading.Event(), threading.Event()
    det = Stepped({0: first, 2: third})
    image = blob_image((300, 200, 340, 280))
    with DetectorService(det, batch_wait_ms=0) as service:
        busy = service.submit(Frame("x", 1, 0.0, image))
        while service.queued_images > 0:
            time.sleep(0.01)
        a, b = (service.submit(Frame(cam, 1, 0.0, image)) for cam in ("a", "b"))
        first.set()  # a and b go together as the next batch: one call each
        assert len(a.result(5)) == 1, "a answered while b's call still waits"
        assert not b.done()
        third.set()
        assert len(b.result(5)) == 1 and len(busy.result(5)) == 1
