"""Counters that several threads update: failures by kind, and stage times.

Failures must not stop the daemon, nor hide: a bad frame or a failing detector call must not
end a camera, nor fill the journal with one traceback per frame. `Failures` counts by kind
(the exception's class, or a name such as `timeout`), logs the first failure of each kind
with its traceback, then one line every `every` failures; the counts are published in stats
and on the Prometheus endpoint. `StageTimes` sums per-stage milliseconds for the stats
interval and since start. Several threads touch each instance, so every update is locked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

STAGES = ("motion", "detect", "track", "publish")


class Failures:
    """Thread-safe failure counts by kind; `what` names the failing thing in log lines."""

    def __init__(self, log: logging.Logger, what: str, every: int = 100) -> None:
        self._log = log
        self._what = what
        self._every = every
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def record(self, exc: BaseException | None, kind: str | None = None,
               context: str = "") -> int:
        """Count one failure of `kind` (default: the exception's class name); returns the
        count of that kind. The first of each kind is logged with `exc`'s traceback."""
        kind = kind or (type(exc).__name__ if exc is not None else "unknown")
        with self._lock:
            n = self._counts[kind] = self._counts.get(kind, 0) + 1
        where = f"{context} " if context else ""
        if n == 1:
            self._log.error("%s%s failed (%s): %s", where, self._what, kind, exc or kind,
                            exc_info=exc if isinstance(exc, Exception) else None)
        elif n % self._every == 0:
            self._log.error("%s%s failed %d times (%s) so far", where, self._what, n, kind)
        return n

    def counts(self) -> dict[str, int]:
        """A copy: kind -> failures since start."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class StageTimes:
    """Stage milliseconds summed per stats interval and since start. The publish thread
    adds, the stats loop takes the interval: both under one lock, so no frame is lost
    between them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames = 0
        self._ms = dict.fromkeys(STAGES, 0.0)
        self._total_frames = 0
        self._total_ms = dict.fromkeys(STAGES, 0.0)

    def add(self, ms: Mapping[str, float]) -> None:
        with self._lock:
            self._frames += 1
            self._total_frames += 1
            for key, value in ms.items():
                self._ms[key] += value
                self._total_ms[key] += value

    def take(self) -> tuple[int, dict[str, float]]:
        """(frames, mean ms per stage) since the last `take`, and start a new interval."""
        with self._lock:
            frames, ms = self._frames, self._ms
            self._frames, self._ms = 0, dict.fromkeys(STAGES, 0.0)
        return frames, {k: round(v / frames, 2) if frames else 0.0 for k, v in ms.items()}

    @property
    def interval_frames(self) -> int:
        with self._lock:
            return self._frames

    def totals(self) -> tuple[int, dict[str, float]]:
        """(frames, ms per stage) since start."""
        with self._lock:
            return self._total_frames, dict(self._total_ms)
