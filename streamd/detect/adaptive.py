"""Adaptive detection rates: how often each camera may use the shared detector.

A fixed `detector.interval` is right for one fleet on one box and wrong for the next: eight
cameras that each send every frame oversubscribe a CPU detector, its queue grows, and the
capture→MQTT latency grows with it. Here the daemon measures what its detector costs (ms per
image, as it runs, on this box) and what each camera asks for (analysed fps, images per
detector run, whether anything moves), and splits the detector's capacity:

1. A still camera (no motion, no tracks) asks for nothing and gets nothing.
2. Every active camera first gets up to a floor rate (`min_rate_hz`), evenly scaled down when
   even the floors do not fit.
3. What is left goes first to cameras with young tracks (a new object is worth a closer look),
   then to every active camera, max-min fair (water-filling), never above a camera's own fps.

Capacity is `utilisation * 1000 / ms_per_image` images per second. The utilisation follows the
detector's queueing delay (additive increase, multiplicative decrease): a queue that waits
longer than a quarter of the latency target means the detector is oversubscribed, so the
backlog stays bounded instead of growing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

EMA_ALPHA = 0.1
UTILISATION_MIN = 0.3
UTILISATION_MAX = 0.9
RECOMPUTE_S = 0.25
"""Allocations are recomputed at most this often (each camera reports every frame)."""
STALE_S = 2.0
"""A camera that has not reported for this long (stopped, stalled) is left out."""


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

    def observe_call(self, images: int, ms: float) -> None:
        """One detector call of `images` images took `ms` (DetectorService reports each)."""
        if images <= 0:
            return
        per = ms / images
        with self._lock:
            self._ms_per_image = per if not self._measured else (
                EMA_ALPHA * per + (1 - EMA_ALPHA) * self._ms_per_image)
            self._measured = True

    def observe_wait(self, ms: float) -> None:
        """A request waited `ms` in the detector's queue before its batch started."""
        with self._lock:
            if ms > self.latency_target_ms / 4:
                self._utilisation = max(UTILISATION_MIN, self._utilisation * 0.9)
            else:
                self._utilisation = min(UTILISATION_MAX, self._utilisation + 0.002)

    @property
    def ms_per_image(self) -> float:
        with self._lock:
            return self._ms_per_image

    @property
    def utilisation(self) -> float:
        with self._lock:
            return self._utilisation

    def capacity_ips(self) -> float:
        """Images per second the detector can take while its queue stays short."""
        with self._lock:
            return self._utilisation * 1000.0 / max(self._ms_per_image, 1e-3)


class RateBoard:
    """The shared table of camera demands and their allocated detector rates.

    Each camera's analysis thread calls `report()` once per frame and reads `rate_hz()`; the
    split is recomputed at most every `RECOMPUTE_S` by whichever thread reports next, under
    one lock, so no thread of its own is needed.
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
            self._demands[camera] = (now, demand)
            if now >= self._next_compute or camera not in self._rates:
                self._next_compute = now + RECOMPUTE_S
                fresh = {n: d for n, (t, d) in self._demands.items() if now - t <= STALE_S}
                self._rates = share_rates(self.load.capacity_ips(), fresh, self.min_rate_hz)
            return self._rates.get(camera, 0.0)

    def remove(self, camera: str) -> None:
        with self._lock:
            self._demands.pop(camera, None)
            self._rates.pop(camera, None)

    def rates(self) -> dict[str, float]:
        """The last split, for stats and Prometheus."""
        with self._lock:
            return dict(self._rates)
