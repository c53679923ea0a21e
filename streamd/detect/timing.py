"""Where a detector's time goes: pre-processing, the model itself, post-processing.

Benchmarks and the stats topic need the split: a slow letterbox or NMS is fixed differently
from a slow model. Backends add to running totals; readers take differences.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class PhaseTimes:
    """Running totals in milliseconds per phase."""

    ms: dict[str, float] = field(default_factory=lambda: {
        "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0})

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - t0) * 1000.0

    def snapshot(self) -> dict[str, float]:
        return dict(self.ms)
