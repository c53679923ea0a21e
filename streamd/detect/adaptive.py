"""Adaptive detection rates: how often each camera may use the shared detector.

A fixed `detector.interval` is right for one fleet on one box and wrong for the next: eight
cameras that each send every frame oversubscribe a CPU detector, its queue grows, and the
capture→MQTT latency grows with it. Here the daemon measures what its detector costs (ms per
image, as it runs, on this box) and what each camera asks for (analysed fps, images per
detector run, whether anything moves), and splits the detector's capacity:

1. A still camera (no motion, no young tracks) asks for nothing and gets nothing.
2. Every active camera first gets up to a floor rate (`min_rate_hz`), evenly scaled down when
   even the floors do not fit.
3. What is left goes first to cameras with young tracks (a new object is worth a closer look),
   then to every active camera, max-min fair (water-filling), never above a camera's own fps.

Capacity is `utilisation * 1000 / ms_per_image` images per second. The utilisation follows the
detector's queueing delay (additive increase, multiplicative decrease): a queue that waits
longer than its share of the latency target (`DetectorLoad.wait_budget_ms`: what is left of
the target after the detector's own call and the rest of the pipeline) means the detector is
oversubscribed, so the backlog stays bounded instead of growing. It is also capped by a
`ceiling` that the shedding governor (`streamd.shed`) lowers while analysis falls behind: on
a box where the detector and motion share the same cores, detector time above the floors is
given back before any frame is shed (`RateBoard.yield_capacity`), and taken again once
analysis keeps up.

`AdaptiveSchedule` is the per-camera side (the `DetectionSchedule` seam, the default when
`detector.interval` is not set): time-based, it runs the detector when the camera's allocated
rate says a run is due and something moves or a young track exists; between runs the tracker
carries the boxes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorSettingsBase
from streamd.detect.schedule import SKIP, Decision, TrackSummary, camera_phase, plan_crops
from streamd.detections import IntArray

EMA_ALPHA = 0.1
UTILISATION_MIN = 0.3
UTILISATION_MAX = 0.9
UTILISATION_STEP = 0.01
"""Additive increase per batch that did not wait long (~3 s from the floor at 20 calls/s)."""
CEILING_DECREASE = 0.8
CEILING_INCREASE = 0.05
"""Per governor window (1 s) while analysis falls behind / keeps up."""
RECOMPUTE_S = 0.25
"""Allocations are recomputed at most this often (each camera reports every frame)."""
STALE_S = 2.0
"""A camera that has not reported for this long (stopped, stalled) is left out."""
PIPELINE_SHARE = 0.2
"""Of the latency target, what capture, motion and publishing are given (50 ms of the 250 ms
default; the 8-camera fleet with no detector measured capture→MQTT p50 ~30 ms, p99 ~95 ms);
the rest is the detector's, its own call and the wait before it."""


@dataclass(frozen=True)
class Demand:
    """What one camera asks of the detector."""

    fps: float
    """Frames per second the camera analyses (the most it can use)."""
    images_per_run: float
    """Detector images (crops, or 1 for the whole frame) one run of this camera costs."""
    active: bool
    """Something moves or is tracked: the camera needs the detector at all."""
    young_tracks: bool = False
    """A track younger than a second exists: first in line for spare capacity."""


def share_rates(capacity_ips: float, demands: Mapping[str, Demand],
                min_rate_hz: float) -> dict[str, float]:
    """Detector runs per second for each camera, within `capacity_ips` images per second.

    >>> d = {"a": Demand(10, 1, True), "b": Demand(10, 1, True), "c": Demand(10, 1, False)}
    >>> share_rates(100, d, 2.0)
    {'a': 10.0, 'b': 10.0, 'c': 0.0}
    >>> share_rates(8, d, 2.0)
    {'a': 4.0, 'b': 4.0, 'c': 0.0}
    >>> share_rates(2, d, 2.0)
    {'a': 1.0, 'b': 1.0, 'c': 0.0}
    """
    rates = {name: 0.0 for name in demands}
    active = {n: d for n, d in demands.items() if d.active and d.fps > 0}
    if not active or capacity_ips <= 0:
        return rates
    cost = {n: max(d.images_per_run, 1e-3) for n, d in active.items()}
    # 1. floors, scaled evenly (same rate for every camera) when they do not all fit
    floors = {n: min(min_rate_hz, d.fps) for n, d in active.items()}
    need = sum(floors[n] * cost[n] for n in active)
    scale = min(1.0, capacity_ips / need) if need > 0 else 1.0
    for n in active:
        rates[n] = floors[n] * scale
    left = capacity_ips - sum(rates[n] * cost[n] for n in active)
    # 2. young tracks first, 3. then everyone: water-filling in images per second
    for group in ([n for n, d in active.items() if d.young_tracks], list(active)):
        left = _water_fill(rates, group, {n: active[n].fps for n in group}, cost, left)
    return {n: round(r, 3) for n, r in rates.items()}


def _water_fill(rates: dict[str, float], names: list[str], caps: Mapping[str, float],
                cost: Mapping[str, float], budget: float) -> float:
    """Raise the rates of `names` towards their caps, max-min fair in images per second;
    return the budget that is left."""
    open_ = [n for n in names if rates[n] < caps[n]]
    while open_ and budget > 1e-9:
        share = budget / len(open_)
        # the camera that saturates first at this share bounds the round
        step = min(share, *((caps[n] - rates[n]) * cost[n] for n in open_))
        for n in open_:
            rates[n] += step / cost[n]
            budget -= step
        open_ = [n for n in open_ if caps[n] - rates[n] > 1e-9]
    return budget


class DetectorLoad:
    """What the shared detector costs on this box, measured as it runs (thread-safe)."""

    def __init__(self, latency_target_ms: float, initial_ms_per_image: float = 20.0) -> None:
        self.latency_target_ms = latency_target_ms
        self._lock = threading.Lock()
        self._ms_per_image = initial_ms_per_image
        self._measured = False
        self._utilisation = 0.7
        self._ceiling = UTILISATION_MAX

    def observe_call(self, images: int, ms: float) -> None:
        """One detector call of `images` images took `ms` (DetectorService reports each)."""
        if images <= 0:
            return
        per = ms / images
        with self._lock:
            self._ms_per_image = per if not self._measured else (
                EMA_ALPHA * per + (1 - EMA_ALPHA) * self._ms_per_image)
            self._measured = True

    def wait_budget_ms(self) -> float:
        """How long a request may wait for the detector while the latency target still
        holds: the target less the pipeline's share and one detector call, and never less
        than a quarter of the target (a detector slower than the target cannot hold it by
        waiting less). A fixed quarter starved a 70 ms detector: one call in flight already
        made the next request wait that long."""
        target = self.latency_target_ms
        with self._lock:
            per = self._ms_per_image
        return max(target / 4, target * (1 - PIPELINE_SHARE) - per)

    def observe_wait(self, ms: float) -> None:
        """A batch's oldest request waited `ms` in the queue before the batch started (the
        service reports one figure per batch)."""
        budget = self.wait_budget_ms()
        with self._lock:
            if ms > budget:
                self._utilisation = max(UTILISATION_MIN, self._utilisation * 0.9)
            else:
                self._utilisation = min(UTILISATION_MAX, self._utilisation + UTILISATION_STEP)

    @property
    def ms_per_image(self) -> float:
        with self._lock:
            return self._ms_per_image

    @property
    def utilisation(self) -> float:
        """The share of the detector's time the split hands out now (queue AIMD, capped by
        the CPU ceiling)."""
        with self._lock:
            return min(self._utilisation, self._ceiling)

    def capacity_ips(self) -> float:
        """Images per second the detector can take while its queue stays short."""
        with self._lock:
            return min(self._utilisation, self._ceiling) * 1000.0 / max(self._ms_per_image,
                                                                         1e-3)

    def lower_ceiling(self, floor_ips: float) -> bool:
        """Analysis needs CPU: hand out less detector time, but not below `floor_ips` images
        per second. False when already there (nothing left to give)."""
        with self._lock:
            floor = floor_ips * max(self._ms_per_image, 1e-3) / 1000.0
            now = min(self._utilisation, self._ceiling)
            if now <= floor * 1.05:
                return False
            self._ceiling = max(floor, now * CEILING_DECREASE)
            return True

    def raise_ceiling(self) -> None:
        """Analysis keeps up again: the ceiling creeps back up."""
        with self._lock:
            self._ceiling = min(UTILISATION_MAX, self._ceiling + CEILING_INCREASE)


class RateBoard:
    """The shared table of camera demands and their allocated detector rates.

    Each camera's analysis thread calls `report()` once per frame and gets its rate back; the
    split is recomputed every `RECOMPUTE_S`, and at once when a camera starts or stops being
    active, by whichever thread reports, under one lock, so no thread of its own is needed.
    """

    def __init__(self, load: DetectorLoad, min_rate_hz: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.load = load
        self.min_rate_hz = min_rate_hz
        self._clock = clock
        self._lock = threading.Lock()
        self._demands: dict[str, tuple[float, Demand]] = {}
        self._rates: dict[str, float] = {}
        self._next_compute = 0.0

    def report(self, camera: str, demand: Demand) -> float:
        """Record `camera`'s demand; return its current rate (runs per second)."""
        now = self._clock()
        with self._lock:
            before = self._demands.get(camera)
            self._demands[camera] = (now, demand)
            changed = before is None or (before[1].active, before[1].young_tracks) != (
                demand.active, demand.young_tracks)  # motion starts: a rate at once
            if now >= self._next_compute or changed or camera not in self._rates:
                self._next_compute = now + RECOMPUTE_S
                fresh = {n: d for n, (t, d) in self._demands.items() if now - t <= STALE_S}
                self._rates = share_rates(self.load.capacity_ips(), fresh, self.min_rate_hz)
            return self._rates.get(camera, 0.0)

    def yield_capacity(self) -> bool:
        """Give detector time back to analysis, down to what the active cameras' floors need;
        False when the detector already runs at the floors (the governor sheds frames)."""
        now = self._clock()
        with self._lock:
            need = sum(min(self.min_rate_hz, d.fps) * max(d.images_per_run, 1e-3)
                       for t, d in self._demands.values()
                       if now - t <= STALE_S and d.active and d.fps > 0)
            yielded = self.load.lower_ceiling(need)
            if yielded:
                self._next_compute = now  # the next report applies it
            return yielded

    def remove(self, camera: str) -> None:
        with self._lock:
            self._demands.pop(camera, None)
            self._rates.pop(camera, None)

    def rates(self) -> dict[str, float]:
        """The last split, for stats and Prometheus."""
        with self._lock:
            return dict(self._rates)


FRAME_DT_MAX_S = 2.0
"""A longer gap between two frames (a reconnect, a stall) is not the camera's frame rate."""
FIRST_FPS = 30.0
"""Assumed for a camera's first frame, before an interval between frames was seen."""


class AdaptiveSchedule:
    """One camera's detector runs at the rate the shared `RateBoard` allocates it.

    Each frame reports the camera's demand: its analysed fps (measured from the frames'
    times), the detector images one run costs (crops, or 1 for the whole frame) and whether
    it is active (motion ROIs, or a track younger than `YOUNG_TRACK_S`). Then:

    - not active: `SKIP` (no detector time; tracks age) — a still camera costs nothing;
    - active and due by the allocated rate: run on crops around the ROIs (around the young
      tracks when nothing moves); when the detector's queue already holds its share of work
      (`backlogged`) the run is deferred (`Decision.deferred`) and the tracker carries;
    - active and not due: the tracker carries the boxes, by the time since the last run in
      units of the gap between runs (its velocity is per run).

    `full_frame_every` N still sends every N-th frame whole, as with the fixed policy.
    `paced` False (a lossless file, timed in its stream time: the reader waits for analysis,
    nothing backs up) never defers. Called from the camera's analysis thread only.
    """

    def __init__(self, camera: str, board: RateBoard, *, input_size: int, max_crops: int = 1,
                 full_frame_every: int = 0, phase: int = 0, paced: bool = True,
                 backlogged: Callable[[], bool] = lambda: False) -> None:
        if full_frame_every < 0 or max_crops < 1 or input_size < 1:
            raise ValueError("need full_frame_every >= 0, max_crops >= 1, input_size >= 1")
        self.camera = camera
        self.board = board
        self.input_size = input_size
        self.max_crops = max_crops
        self.full_frame_every = full_frame_every
        self.phase = phase
        self.paced = paced
        self._backlogged = backlogged
        self.allocated_hz = 0.0
        """The rate the board gave this camera at its last frame (runs per second)."""
        self._frame_dt: float | None = None
        self._last_t: float | None = None
        self._next_due: float | None = None
        self._last_run: float | None = None
        self._run_gap: float | None = None
        self._images_per_run = 1.0

    @classmethod
    def for_camera(cls, settings: DetectorSettingsBase, camera: str, input_size: int,
                   board: RateBoard, *, paced: bool,
                   backlogged: Callable[[], bool]) -> AdaptiveSchedule:
        """The `detector:` section's crop rules for one camera, its rate from `board`."""
        return cls(camera, board, input_size=input_size, max_crops=settings.max_crops,
                   full_frame_every=settings.full_frame_every, phase=camera_phase(camera),
                   paced=paced, backlogged=backlogged)

    @property
    def fps(self) -> float:
        """The camera's analysed frames per second, as measured from the frames' times."""
        return 1.0 / self._frame_dt if self._frame_dt else FIRST_FPS

    def decide(self, index: int, rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int],
               t_s: float, tracks: TrackSummary) -> Decision:
        rois = np.asarray(rois_xyxy, np.float64).reshape(-1, 4)
        self._tick(t_s)
        every = self.full_frame_every
        full = every > 0 and (index + self.phase) % every == 0
        active = len(rois) > 0 or tracks.young > 0
        rate = self.allocated_hz = self.board.report(self.camera, Demand(
            self.fps, self._images_per_run, active, tracks.young > 0))
        if not (active or full):
            return SKIP
        if not (full or self._due(t_s)):
            return Decision(run=False, carry_steps=self._carry_steps(t_s, rate))
        if self.paced and self._backlogged():
            return Decision(run=False, carry_steps=self._carry_steps(t_s, rate),
                            deferred=True)
        regions: IntArray | None = None
        if not full:
            regions = plan_crops(rois if len(rois) else tracks.young_xyxy, frame_wh,
                                 self.input_size, self.max_crops)
        self._ran(t_s, rate, 1 if regions is None else len(regions))
        return Decision(run=True, regions=regions)

    def _tick(self, t: float) -> None:
        """Track the interval between frames; a clock that went back (a looped file's
        stream time) starts the timing over."""
        last, self._last_t = self._last_t, t
        if last is None:
            return
        if t < last:
            self._next_due = self._last_run = self._run_gap = None
            return
        dt = min(t - last, FRAME_DT_MAX_S)
        if dt > 0:
            self._frame_dt = dt if self._frame_dt is None else (
                0.2 * dt + 0.8 * self._frame_dt)

    def _due(self, t: float) -> bool:
        """A run is due at `next_due`, or up to half a frame early (so a rate equal to the
        camera's fps runs on every frame)."""
        if self.allocated_hz <= 0:
            return False
        slack = 0.5 * (self._frame_dt or 0.0)
        return self._next_due is None or t >= self._next_due - slack

    def _ran(self, t: float, rate: float, images: int) -> None:
        """Book a run: the next one is a period after this one's due time (so the average
        holds the rate), or after now when the camera was idle for longer than a period."""
        period = 1.0 / rate if rate > 0 else FRAME_DT_MAX_S
        due = self._next_due
        self._next_due = due + period if due is not None and t - due < period else t + period
        if self._last_run is not None and t - self._last_run <= 3 * period:
            self._run_gap = t - self._last_run
        self._last_run = t
        self._images_per_run = 0.8 * self._images_per_run + 0.2 * images

    def _carry_steps(self, t: float, rate: float) -> float:
        """How far the tracker carries: time since the last run, in run gaps."""
        if self._last_run is None:
            return 1.0
        gap = self._run_gap or (1.0 / rate if rate > 0 else self._frame_dt or 1.0)
        return (t - self._last_run) / max(gap, 1e-3)
