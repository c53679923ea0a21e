"""Decides which objects to describe, and describes them in a worker thread of its own.

A vision-language model may take seconds per answer, or hang; detections must not wait for
it. `offer()` is called on the analysis path and never blocks on the model:

1. **Due?** An object is described when it first appears, when its label changes, when it
   moves into another zone (`on_zone_change`), and again every `refresh_s`.
2. **Cache.** The due object's padded crop is hashed; a near-duplicate crop with the same
   (camera, label, zone, prompt) reuses the stored text and costs no model call.
3. **Rate.** Otherwise it needs a token from the overall bucket (`max_per_second`) and from
   its camera's bucket (`camera_max_per_second`). Without one it is counted as rate-limited
   and stays due, so it is offered again with the next frame.
4. **Queue.** Requests wait in a FIFO bounded by `queue_size`. When it is full the *oldest*
   request is dropped (counted in `dropped`): it is the stalest, and its object becomes due
   again, so a live object is described from a fresher frame rather than never.

One worker answers in FIFO order, cached answers included, so each camera's descriptions
leave in frame order, each carrying the `frame_id`/`ts` of the frame it describes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from streamd.describe.base import (
    Describer,
    DescriberBaseSettings,
    DescribeRequest,
    Description,
    PromptedDescriberSettings,
)
from streamd.describe.cache import Context, DescriptionCache
from streamd.describe.inputs import crop_for, dhash, render_prompt
from streamd.frames import Image

log = logging.getLogger(__name__)

ResultCallback = Callable[[Description], None]
"""Called from the worker thread with every answer (model or cache)."""

_LATENCY_EMA = 0.2
"""Weight of the newest model latency in the moving average published in stats."""


class TokenBucket:
    """At most `rate` events per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._last = time.monotonic()

    def ready(self, now: float | None = None) -> bool:
        """Is a token available? Refills, takes nothing: two buckets can be checked before
        either is charged."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens >= 1.0

    def take(self, now: float | None = None) -> bool:
        if self.ready(now):
            self._tokens -= 1.0
            return True
        return False


@dataclass
class DescriberStats:
    """Totals since start; `DescriberService.snapshot()` publishes them with the stats."""

    offered: int = 0
    """Objects handed to `offer()` (one per object per analysed frame)."""
    queued: int = 0
    rate_limited: int = 0
    """Due objects refused a token (overall or per-camera); they are offered again."""
    dropped: int = 0
    """Requests pushed out of the full queue (oldest first)."""
    described: int = 0
    """Answers published, from the model or the cache."""
    failed: int = 0
    """Model calls that raised (timeouts, HTTP errors, ...)."""
    cache_hits: int = 0
    cache_misses: int = 0
    latency_ms_ema: float = 0.0

    @property
    def cache_hit_rate(self) -> float:
        """Share of queued requests the cache answered (0 before any)."""
        lookups = self.cache_hits + self.cache_misses
        return self.cache_hits / lookups if lookups else 0.0


@dataclass(frozen=True)
class _Seen:
    label: str
    zone: str
    mono: float
    frame_id: int


@dataclass(frozen=True, eq=False)
class _Job:
    request: DescribeRequest
    context: Context
    phash: int
    cached_text: str | None


class DescriberService:
    """`start()` returns self; `stop()` answers what is queued (bounded), then joins.

    `offer()` may be called from any number of analysis threads at once.
    """

    def __init__(self, describer: Describer, settings: DescriberBaseSettings,
                 on_result: ResultCallback) -> None:
        self.describer = describer
        self.settings = settings
        self.stats = DescriberStats()
        self._on_result = on_result
        self._bucket = TokenBucket(settings.max_per_second)
        self._camera_buckets: dict[str, TokenBucket] = {}
        self._cache = DescriptionCache(settings.cache_size, settings.cache_max_distance)
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._seen: dict[tuple[str, int], _Seen] = {}
        """(camera, object id) → what it was last queued as."""
        self._stopping = False
        self._abandoned = False
        """stop() gave up waiting for a model call: its late answer must not be published."""
        self._drain_until = 0.0
        self._failures_in_row = 0
        self._thread = threading.Thread(target=self._run, name="describer", daemon=True)

    def start(self) -> DescriberService:
        self._thread.start()
        return self

    def stop(self, drain_timeout_s: float = 3.0) -> None:
        """Answer what is queued for up to `drain_timeout_s`, then return even if the model
        is stuck (the worker is a daemon thread and its late answer is discarded). Idempotent.
        """
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._drain_until = time.monotonic() + drain_timeout_s
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(drain_timeout_s + 1.0)
        with self._cond:
            left = len(self._queue)
            if self._thread.is_alive():
                self._abandoned = True
                log.warning("describer model=%s still busy after %.0f s; abandoning its "
                            "answer and %d queued requests", self.describer.model,
                            drain_timeout_s + 1.0, left)
            elif left:
                log.warning("describer stopped with %d requests unanswered", left)
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

    def snapshot(self) -> dict[str, Any]:
        """The figures the stats topic carries under `describer`."""
        s = self.stats
        return {"model": self.describer.model, "queue": self.depth, "offered": s.offered,
                "queued": s.queued, "described": s.described, "dropped": s.dropped,
                "rate_limited": s.rate_limited, "failed": s.failed,
                "cache_hits": s.cache_hits, "cache_hit_rate": round(s.cache_hit_rate, 3),
                "latency_ms": round(s.latency_ms_ema, 2)}

    def wants(self, camera: str, object_id: int, label: str, zone: str, now: float) -> bool:
        """Is this object due a description: new, relabelled, moved to another zone, or
        described too long ago?"""
        last = self._seen.get((camera, object_id))
        return (last is None or last.label != label
                or (self.settings.on_zone_change and last.zone != zone)
                or now - last.mono >= self.settings.refresh_s)

    def offer(self, request: DescribeRequest, image: Image) -> bool:
        """Queue a description of `request`'s object in `image` (the whole frame it was seen
        in) if it is due and the cache or the rate limits allow; never waits for the model.
        Returns whether it was queued."""
        now = time.monotonic()
        s = self.settings
        with self._cond:
            self.stats.offered += 1
            if self.stats.offered % 512 == 0:
                self._prune(now)
            zone = request.zone
            if self._stopping or not self.wants(request.camera, request.object_id,
                                                request.label, zone, now):
                return False
            looks = self.describer.input_size > 0
            crop = crop_for(image, request.box, s.crop_pad, self.describer.input_size,
                            self.describer.square_input) if looks else None
            prompt = ""
            if isinstance(s, PromptedDescriberSettings):
                prompt = render_prompt(s.prompts.get(request.label, s.prompt), request.label,
                                       request.camera, zone)
            context: Context = (request.camera, request.label, zone, prompt)
            phash = dhash(crop) if crop is not None else 0
            cached = s.cache_size > 0 and looks
            text = self._cache.get(context, phash) if cached else None
            if text is None and not self._take_tokens(request.camera, now):
                self.stats.rate_limited += 1
                return False  # still due: it is offered again with the next frame
            if cached:
                if text is None:
                    self.stats.cache_misses += 1
                else:
                    self.stats.cache_hits += 1
            self._seen[(request.camera, request.object_id)] = _Seen(
                request.label, zone, now, request.frame_id)
            if len(self._queue) >= s.queue_size:
                self._forget(self._queue.popleft().request)
                self.stats.dropped += 1
            job = _Job(dataclasses.replace(request, crop=crop, prompt=prompt), context, phash,
                       text)
            self._queue.append(job)
            self.stats.queued += 1
            self._cond.notify()
        return True

    def _take_tokens(self, camera: str, now: float) -> bool:
        """One token from the overall bucket and one from the camera's, or none at all."""
        cam_rate = self.settings.camera_max_per_second
        cam = None
        if cam_rate is not None:
            cam = self._camera_buckets.get(camera)
            if cam is None:
                cam = self._camera_buckets[camera] = TokenBucket(cam_rate)
        if not self._bucket.ready(now) or (cam is not None and not cam.ready(now)):
            return False
        self._bucket.take(now)
        if cam is not None:
            cam.take(now)
        return True

    def _forget(self, dropped: DescribeRequest) -> None:
        """A dropped request's object is due again, unless a newer request replaced it."""
        key = (dropped.camera, dropped.object_id)
        seen = self._seen.get(key)
        if seen is not None and seen.frame_id == dropped.frame_id:
            del self._seen[key]

    def _prune(self, now: float) -> None:
        """Forget objects not described for two refresh periods, so the table stays
        bounded however many tracks come and go."""
        horizon = 2 * self.settings.refresh_s
        for key in [k for k, v in self._seen.items() if now - v.mono > horizon]:
            del self._seen[key]

    def _next_job(self) -> _Job | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue or (self._stopping and time.monotonic() > self._drain_until):
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            started = time.monotonic()
            if job.cached_text is not None:
                text, cached = job.cached_text, True
            else:
                try:
                    text = self.describer.describe(job.request)
                except Exception as exc:  # a backend fault must not end the service
                    if self._abandoned:
                        return  # stop() closed the backend under this call: not a fault
                    self._failed(job.request, exc)
                    continue
                cached = False
                if self._failures_in_row:
                    log.info("describer model=%s answers again after %d failures",
                             self.describer.model, self._failures_in_row)
                    self._failures_in_row = 0
                if job.request.crop is not None:  # a backend that looks at pixels
                    self._cache.put(job.context, job.phash, text)
            latency_ms = (time.monotonic() - started) * 1000.0
            with self._cond:
                if self._abandoned:
                    return
                self.stats.described += 1
                if not cached:
                    ema = self.stats.latency_ms_ema
                    self.stats.latency_ms_ema = latency_ms if not ema else \
                        ema + _LATENCY_EMA * (latency_ms - ema)
            try:
                self._on_result(Description(job.request, text, self.describer.model,
                                            latency_ms, cached))
            except Exception:
                log.exception("publishing a description failed")

    def _failed(self, request: DescribeRequest, exc: Exception) -> None:
        """Count a failed model call; log the first of a run and every 100th, not each."""
        with self._cond:
            self.stats.failed += 1
        self._failures_in_row += 1
        n = self._failures_in_row
        if n == 1 or n % 100 == 0:
            log.warning("describer model=%s camera=%s frame_id=%d object=%d failed (%d in a "
                        "row): %s", self.describer.model, request.camera, request.frame_id,
                        request.object_id, n, exc)
