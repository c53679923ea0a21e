"""Shedding: when motion alone cannot keep up, analyse fewer frames, evenly, and count them.

The detector's rate adapts per camera (`streamd.detect.adaptive`), but every analysed frame
also pays motion (and decode, and publishing). When the fleet's frames cost more CPU than the
box has, each analysis thread falls behind: its live slot drops frames at random and every
frame waits longer for a core, so the capture→MQTT latency grows for all cameras. The
`ShedGovernor` measures that per analysed frame — the share of the camera's frame interval
its motion stage took (wall time: on a box short of CPU it grows with the wait for a core),
how long the frame took from capture until motion was done, and how many frames the slots
dropped meanwhile — and once a second sets one fleet-wide `factor`: the share of each paced
camera's frames to analyse. It decreases (multiplicatively) while motion takes more than
`BUSY_HIGH` of the frame interval on average (not at p90: cameras whose frames arrive
together make single frames wait for a core without any thread falling behind), frames wait
(p90) longer than the latency target, or a fifth of them are dropped; it increases
(additively) once motion takes under `BUSY_LOW`, frames wait under half the target and few
are dropped. Waiting for the detector is not motion falling behind (the detector's rate
adapts to that), so the busy share is the main signal. Each camera admits frames by a credit
that grows by `factor` per frame, so the frames it skips are spread evenly (at 0.5 every
other frame), before motion; they are counted as shed, with the reason `cpu`. Lossless files
are never shed: their reader waits for the analysis.

Detector time above the cameras' floor rates is given up first (`yield_detector`, the rate
board's): only when the detector already runs at the floors are frames shed. Recovering goes
the other way round: frames first, then detector time (`relax_detector`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

WINDOW_S = 1.0
MIN_SAMPLES = 5
"""Fewer analysed frames in a window say nothing: the factor is left as it is."""
MIN_FACTOR = 0.2
"""Never below a fifth of each camera's frames (2 fps of a 10 fps camera)."""
DECREASE = 0.85
INCREASE = 0.05
DROP_HIGH, DROP_LOW = 0.2, 0.05
BUSY_HIGH, BUSY_LOW = 0.6, 0.3
"""Motion's wall time per frame as a share of the camera's frame interval: above the first
the analysis thread is about to fall behind; under the second it has room."""
SHED_REASON = "cpu"


class ShedGovernor:
    """The fleet's analysis share (thread-safe; every paced camera's analysis thread calls
    `admit` per frame it takes and `observe` per frame it analysed)."""

    def __init__(self, latency_target_ms: float,
                 clock: Callable[[], float] = time.monotonic,
                 yield_detector: Callable[[], bool] = lambda: False,
                 relax_detector: Callable[[], None] = lambda: None) -> None:
        self.latency_target_ms = latency_target_ms
        self._clock = clock
        self._yield_detector = yield_detector
        self._relax_detector = relax_detector
        self._lock = threading.Lock()
        self._factor = 1.0
        self._credit: dict[str, float] = {}
        self._dropped_seen: dict[str, int] = {}
        self._lags_ms: list[float] = []
        self._busy: list[float] = []
        self._dropped = 0
        self._window_end = clock() + WINDOW_S

    @property
    def factor(self) -> float:
        """The share of each paced camera's frames analysed now (1.0: all)."""
        with self._lock:
            return self._factor

    def admit(self, camera: str) -> bool:
        """Analyse this frame of `camera` (True), or shed it (False)."""
        with self._lock:
            credit = self._credit.get(camera, 0.0) + self._factor
            if credit >= 1.0 - 1e-9:
                self._credit[camera] = credit - 1.0
                return True
            self._credit[camera] = credit
            return False

    def observe(self, camera: str, busy: float, lag_ms: float, dropped_total: int) -> None:
        """An admitted frame: motion's wall time as a share of the camera's frame interval,
        its capture→motion-done time, and its slot's dropped count so far."""
        with self._lock:
            before = self._dropped_seen.get(camera, dropped_total)
            self._dropped_seen[camera] = dropped_total
            self._dropped += max(0, dropped_total - before)
            self._lags_ms.append(lag_ms)
            self._busy.append(busy)
            now = self._clock()
            if now < self._window_end:
                return
            self._window_end = now + WINDOW_S
            lags, busy_, dropped = self._lags_ms, self._busy, self._dropped
            self._lags_ms, self._busy, self._dropped = [], [], 0
            if len(lags) < MIN_SAMPLES:
                return
            self._adjust(float(np.mean(busy_)), float(np.percentile(lags, 90)),
                         dropped / (dropped + len(lags)))

    def forget(self, camera: str) -> None:
        """A camera left (stopped, reloaded)."""
        with self._lock:
            self._credit.pop(camera, None)
            self._dropped_seen.pop(camera, None)

    def _adjust(self, busy: float, lag90_ms: float, drop_share: float) -> None:
        target = self.latency_target_ms
        old = self._factor
        if busy > BUSY_HIGH or lag90_ms > target or drop_share > DROP_HIGH:
            if not self._yield_detector():
                self._factor = max(MIN_FACTOR, old * DECREASE)
        elif busy < BUSY_LOW and lag90_ms < target / 2 and drop_share < DROP_LOW:
            if old < 1.0:
                self._factor = min(1.0, old + INCREASE)
            else:
                self._relax_detector()
        if (old == 1.0) != (self._factor == 1.0):
            log.info("analysis %s: %.0f%% of each camera's frames (motion %.0f%% of the "
                     "frame interval, capture→motion p90 %.0f ms, %.0f%% dropped)",
                     "shedding" if self._factor < 1 else "no longer shedding",
                     100 * self._factor, 100 * busy, lag90_ms, 100 * drop_share)
