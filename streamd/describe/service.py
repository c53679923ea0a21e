"""Decides which objects to describe, and describes them in a worker thread of its own.

A vision-language model may take seconds per answer; detections must not wait for it.
`offer()` is called on the analysis path and never blocks: it decides (new object, label
changed, or `refresh_s` elapsed), takes a token from the rate limiter, and appends to a
bounded queue that drops its oldest request when full. The worker answers in FIFO order,
so each camera's descriptions leave in frame order, each carrying the frame it describes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from streamd.config import TemplateDescriberSettings
from streamd.describe import Describer, DescribeRequest

log = logging.getLogger(__name__)

ResultCallback = Callable[[DescribeRequest, str, float], None]
"""(request, text, latency_ms) — called from the worker thread."""


class TokenBucket:
    """At most `rate` events per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._last = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass
class DescriberStats:
    offered: int = 0
    queued: int = 0
    rate_limited: int = 0
    dropped: int = 0
    """Requests pushed out of the full queue (oldest first)."""
    described: int = 0
    failed: int = 0
    last_latency_ms: float = 0.0


class DescriberService:
    """`start()` returns self; `stop()` answers what is queued (bounded), then joins."""

    def __init__(self, describer: Describer, settings: TemplateDescriberSettings,
                 on_result: ResultCallback) -> None:
        self.describer = describer
        self.settings = settings
        self.stats = DescriberStats()
        self._on_result = on_result
        self._bucket = TokenBucket(settings.max_per_second)
        self._queue: collections.deque[DescribeRequest] = collections.deque()
        self._cond = threading.Condition()
        self._seen: dict[tuple[str, int], tuple[str, float]] = {}
        """(camera, object id) → (label, monotonic time) of its last description."""
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._thread = threading.Thread(target=self._run, name="describer", daemon=True)

    def start(self) -> DescriberService:
        self._thread.start()
        return self

    def stop(self, drain_timeout_s: float = 3.0) -> None:
        with self._cond:
            if self._stop.is_set():
                return
            self._drain_until = time.monotonic() + drain_timeout_s
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(drain_timeout_s + 1.0)
        if self._queue:
            log.warning("describer stopped with %d requests unanswered", len(self._queue))
        self.describer.close()

    def __enter__(self) -> DescriberService:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return len(self._queue)

    def wants(self, camera: str, object_id: int, label: str, now: float) -> bool:
        """Is this object due a description: new, relabelled, or described too long ago?"""
        last = self._seen.get((camera, object_id))
        return last is None or last[0] != label or now - last[1] >= self.settings.refresh_s

    def offer(self, request: DescribeRequest) -> bool:
        """Queue the request if the object is due and the rate allows; never blocks."""
        now = time.monotonic()
        self.stats.offered += 1
        if self.stats.offered % 512 == 0:
            self._prune(now)
        if not self.wants(request.camera, request.object_id, request.label, now):
            return False
        if not self._bucket.take(now):
            self.stats.rate_limited += 1
            return False  # still due: it is offered again with the next frame
        self._seen[(request.camera, request.object_id)] = (request.label, now)
        with self._cond:
            if len(self._queue) >= self.settings.queue_size:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append(request)
            self.stats.queued += 1
            self._cond.notify()
        return True

    def _prune(self, now: float) -> None:
        """Forget objects not described for two refresh periods, so the table stays
        bounded however many tracks come and go."""
        horizon = 2 * self.settings.refresh_s
        for key in [k for k, (_, t) in self._seen.items() if now - t > horizon]:
            del self._seen[key]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if not self._queue or (self._stop.is_set()
                                       and time.monotonic() > self._drain_until):
                    return
                request = self._queue.popleft()
            started = time.monotonic()
            try:
                text = self.describer.describe(request)
            except Exception as exc:  # a backend fault must not end the service
                self.stats.failed += 1
                log.warning("describer model=%s camera=%s object=%d failed: %s",
                            self.describer.model, request.camera, request.object_id, exc)
                continue
            latency_ms = (time.monotonic() - started) * 1000.0
            self.stats.described += 1
            self.stats.last_latency_ms = latency_ms
            self._on_result(request, text, latency_ms)
