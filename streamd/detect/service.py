"""One detector shared by every camera: requests are batched across cameras.

An accelerator runs a batch of crops almost as fast as one, so the worker waits a bounded
few milliseconds after the first request for others (from any camera) and sends all their
crops together. Callers get a `Future` per frame and never touch the detector themselves,
so a slow or failing detector can neither block capture nor kill a camera's thread.

With a `DetectorLoad` the service reports what each call cost and how long each request
waited in the queue, which is what the adaptive schedule splits between cameras, and says
when its queue already holds its share of work (`backlogged`), so a camera defers a due run
instead of growing the backlog.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from types import TracebackType

import numpy as np
import numpy.typing as npt

from streamd.counters import Failures
from streamd.detect.adaptive import DetectorLoad
from streamd.detect.base import Detector
from streamd.detections import Detections, IntArray
from streamd.frames import Frame
from streamd.geometry import nms
from streamd.threads import name_os_thread

log = logging.getLogger(__name__)

EMA_ALPHA = 0.1


class ServiceStopped(RuntimeError):
    """The detector service stopped before it analysed the frame (or was used after stop)."""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class _Request:
    frame: Frame
    regions: IntArray
    future: Future[Detections]
    paced: bool = True
    """From a live camera (or a realtime file): its wait in the queue is latency. A lossless
    file's frames queue behind each other by design (its reader waits for the analysis), so
    their waits say nothing about oversubscription and are not reported to the load."""


class DetectorService:
    """A worker thread that feeds `detector` batches of crops from all cameras.

    `submit(frame, regions)` returns a `Future[Detections]` with boxes in frame pixels:
    detections of all regions of that frame, shifted back by each region's offset, with
    duplicates from overlapping regions removed by class-aware NMS at `merge_iou`. A detector
    exception resolves the futures of that batch with it; the worker goes on.

    The detector is passed in and stays the caller's to close, after `stop()`.
    Counters for the stats topic: `batches` (detector calls), `crops`, `last_batch_size`
    and `infer_ms_ema` (smoothed time of one call); `failures` counts failed
    frames by kind (the exception's class; `timeout` when a camera gave up waiting).
    """

    def __init__(self, detector: Detector, batch_wait_ms: float = 3.0,
                 merge_iou: float = 0.5, load: DetectorLoad | None = None) -> None:
        self.detector = detector
        self.load = load
        self.batch_wait_s = batch_wait_ms / 1000
        self.merge_iou = merge_iou
        self.batches = 0
        self.crops = 0
        self.last_batch_size = 0
        self.infer_ms_ema = 0.0
        self.failures = Failures(log, "detector")
        self._cond = threading.Condition()
        self._queue: deque[tuple[float, _Request]] = deque()
        self._queued_crops = 0
        self._running_crops = 0
        """Images of the batch in the detector not answered yet."""
        self._state = _State.NEW
        self._thread = threading.Thread(target=self._run, name="detector", daemon=True)

    def start(self) -> DetectorService:
        with self._cond:
            if self._state is not _State.NEW:
                raise RuntimeError(f"DetectorService is {self._state.value}, cannot start")
            self._state = _State.RUNNING
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the worker; frames still queued fail with `ServiceStopped`. Idempotent.

        A batch already in the detector finishes (within `timeout_s`) and resolves normally.
        Returns False when the worker is still inside a detector call after `timeout_s` (it
        is left behind; the detector must then not be closed under it).
        """
        with self._cond:
            if self._state is _State.STOPPED:
                return not self._thread.is_alive()
            started = self._state is _State.RUNNING
            self._state = _State.STOPPED
            pending = [req for _, req in self._queue]
            self._queue.clear()
            self._queued_crops = 0
            self._cond.notify_all()
        for req in pending:
            if req.future.set_running_or_notify_cancel():
                req.future.set_exception(ServiceStopped(
                    f"detector service stopped before frame {req.frame.frame_id} of "
                    f"{req.frame.camera!r} was analysed"))
        if started:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("detector worker still busy after %.1f s; leaving it", timeout_s)
                return False
        return True

    def __enter__(self) -> DetectorService:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def submit(self, frame: Frame, regions: npt.ArrayLike | None = None, *,
               paced: bool = True) -> Future[Detections]:
        """Queue `frame` for detection in `regions` ((M, 4) int xyxy, clipped to the frame;
        None: the whole frame). M == 0 resolves at once with no detections. `paced` False:
        from a lossless file (its queue wait is not reported to the load)."""
        w, h = frame.wh
        if regions is None:
            boxes = np.array([[0, 0, w, h]], np.int64)
        else:
            boxes = np.clip(np.asarray(regions, np.int64).reshape(-1, 4), 0, [w, h, w, h])
            boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        future: Future[Detections] = Future()
        with self._cond:
            if self._state is _State.STOPPED:
                raise ServiceStopped("detector service is stopped")
            if len(boxes) == 0:
                future.set_result(Detections.empty(self.detector.labels))
                return future
            self._queue.append((time.monotonic(), _Request(frame, boxes, future, paced)))
            self._queued_crops += len(boxes)
            self._cond.notify_all()
        return future

    @property
    def queued_images(self) -> int:
        """Images waiting for the next batch (not counting the batch in the detector)."""
        with self._cond:
            return self._queued_crops

    @property
    def unanswered_images(self) -> int:
        """Images queued or in the detector: the work a new request waits behind."""
        with self._cond:
            return self._queued_crops + self._running_crops

    def backlogged(self) -> bool:
        """The work a new request would wait behind (queued, and the batch in the detector)
        exceeds the load's wait budget, and is more than one image: a camera whose run is
        due defers it. False without a load."""
        load = self.load
        if load is None:
            return False
        ms = load.ms_per_image
        return self.unanswered_images * ms > max(load.wait_budget_ms(), ms)

    def _next_batch(self) -> list[_Request]:
        """Block for a first request, then gather more until `batch_wait_s` after it or a
        full detector batch; [] once stopped."""
        with self._cond:
            while not self._queue and self._state is _State.RUNNING:
                self._cond.wait()
            if self._state is not _State.RUNNING:
                return []
            deadline = self._queue[0][0] + self.batch_wait_s
            while (self._state is _State.RUNNING
                   and self._queued_crops < self.detector.max_batch
                   and (left := deadline - time.monotonic()) > 0):
                self._cond.wait(left)
            batch = [req for _, req in self._queue]
            waited = [t for t, req in self._queue if req.paced]
            if self.load is not None and waited:  # the oldest request waited longest
                self.load.observe_wait((time.monotonic() - waited[0]) * 1000.0)
            self._queue.clear()
            self._running_crops, self._queued_crops = self._queued_crops, 0
            return batch

    def _run(self) -> None:
        name_os_thread()
        while batch := self._next_batch():
            self._detect([req for req in batch if req.future.set_running_or_notify_cancel()])

    def _detect(self, batch: list[_Request]) -> None:
        """Run the batch's crops in chunks of `max_batch` images. Each frame's future resolves
        as soon as the chunk holding its last crop is done (with a backend that runs one image
        per call, the first camera in a batch does not wait for the others'); a failing chunk
        fails the frames not answered yet."""
        crops = [req.frame.image[y1:y2, x1:x2]
                 for req in batch for x1, y1, x2, y2 in req.regions]
        step = max(self.detector.max_batch, 1)
        waiting = list(batch)
        found: list[Detections] = []
        try:
            for start in range(0, len(crops), step):
                chunk = crops[start:start + step]
                t0 = time.perf_counter()
                out = self.detector.detect(chunk)
                infer_ms = (time.perf_counter() - t0) * 1000
                if len(out) != len(chunk):
                    raise RuntimeError(f"detector returned {len(out)} results for "
                                       f"{len(chunk)} images")
                self.infer_ms_ema = (infer_ms if self.batches == 0 else EMA_ALPHA * infer_ms
                                     + (1 - EMA_ALPHA) * self.infer_ms_ema)
                with self._cond:
                    self._running_crops -= len(chunk)
                self.batches += 1
                self.crops += len(chunk)
                self.last_batch_size = len(chunk)
                if self.load is not None:
                    self.load.observe_call(len(chunk), infer_ms)
                found += out
                while waiting and len(found) >= len(waiting[0].regions):
                    req = waiting[0]
                    dets = self._to_frame(req.regions, found[:len(req.regions)])
                    found = found[len(req.regions):]
                    waiting.pop(0)
                    req.future.set_result(dets)
        except Exception as exc:
            for req in waiting:
                self.failures.record(exc, context=f"camera={req.frame.camera} "
                                     f"frame_id={req.frame.frame_id}")
                req.future.set_exception(exc)
        finally:
            with self._cond:
                self._running_crops = 0

    def _to_frame(self, regions: IntArray, parts: list[Detections]) -> Detections:
        """Shift each region's detections into frame pixels; merge duplicates."""
        shifted = [replace(d, xyxy=d.xyxy + np.asarray(r[[0, 1, 0, 1]], np.float32))
                   for r, d in zip(regions, parts, strict=True) if len(d)]
        if not shifted:
            return Detections.empty(self.detector.labels)
        merged = Detections.merge(shifted)
        if len(shifted) > 1:
            merged = merged[nms(merged.xyxy, merged.confidence, self.merge_iou,
                                merged.class_id)]
        return merged
