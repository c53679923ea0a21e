"""Build progress: TensorRT's IProgressMonitor callbacks as a few readable lines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class BuildProgress:
    """Turns TensorRT's IProgressMonitor callbacks into a few readable lines with the elapsed
    time: phase starts and ends up to `max_depth`, and at most one "step i/n" line per
    `interval_s`. TensorRT calls it from its own threads, hence the lock. Builds on a Jetson
    take minutes; an operator must see that it is alive."""

    def __init__(self, report: Callable[[str], None], *, interval_s: float = 5.0,
                 max_depth: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self._report = report
        self._interval_s = interval_s
        self._max_depth = max_depth
        self._clock = clock
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int, float]] = {}  # name -> depth, steps, start
        self.started = clock()
        self._last_step_line = self.started

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def line(self, text: str) -> None:
        self._report(f"[{self.elapsed_s():7.1f} s] {text}")

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = 0 if parent_phase is None else self._phases.get(parent_phase,
                                                                     (-1, 0, 0.0))[0] + 1
            self._phases[phase_name] = (depth, num_steps, self._clock())
            if depth <= self._max_depth:
                self.line(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        """Always True: returning False would cancel the build."""
        with self._lock:
            now = self._clock()
            if now - self._last_step_line >= self._interval_s:
                self._last_step_line = now
                depth, steps, _ = self._phases.get(phase_name, (0, 0, now))
                self.line(f"{'  ' * depth}{phase_name}: step {step + 1}/{steps}")
        return True

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            depth, _, start = self._phases.pop(phase_name, (0, 0, self._clock()))
            if depth <= self._max_depth:
                self.line(f"{'  ' * depth}{phase_name} done ({self._clock() - start:.1f} s)")


def progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A `trt.IProgressMonitor` that hands every callback to `progress`."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None,
                        num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return _Monitor()
