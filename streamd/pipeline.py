"""One camera's analysis: motion → detect → track → publish → describe.

`streamd.camera.Camera` pairs a capture thread with a `CameraPipeline`; the pipeline runs in
two threads so the stages overlap: `analyse` (motion, and the schedule's decision what the
detector does) submits crops to the shared detector, `finish` waits for the objects in frame
order, tracks them, publishes and offers them to the describer. While the detector works on
frame n, motion already runs on frame n+1 and capture decodes frame n+2.

The pipeline gets its collaborators typed (`Stages`), never the app. State crossing threads
is either locked (`StageTimes`, `Failures`) or handed over by message (descriptions, which
the describer thread sends and the publish thread reads). Stopping is two calls so a fleet
stops in parallel: `request_stop(deadline)` on every camera, then `join(deadline)` on each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamd import contract
from streamd.capture import CameraSettings
from streamd.contract import Kind
from streamd.counters import Failures, StageTimes
from streamd.describe import DescribeRequest
from streamd.describe.service import DescriberService
from streamd.detect import DetectorService, ServiceStopped
from streamd.detect.schedule import YOUNG_TRACK_S, DetectionSchedule, TrackSummary
from streamd.detections import Detections
from streamd.frames import Frame, FrameSlot
from streamd.motion import MotionSettings, MotionStage, Rois
from streamd.publish import Publisher
from streamd.shed import SHED_REASON, ShedGovernor
from streamd.snapshot import SnapshotSettings, annotate
from streamd.threads import Deadline, join, lower_priority, name_os_thread
from streamd.track import Tracker

log = logging.getLogger(__name__)

DETECT_TIMEOUT_S = 30.0
"""Longest wait for one frame's objects; past it the frame goes out without them."""


class FrameView(Protocol):
    """A live view of what the pipeline saw (the web page). `wants` is O(1) and True only
    while a viewer is connected and its frame budget allows a new picture; `offer` only
    stores references (no drawing, no encoding on the analysis path)."""

    def wants(self, camera: str) -> bool: ...

    def offer(self, camera: str, frame: Frame, rois: Rois, dets: Detections,
              descriptions: Mapping[int, str],
              motion_mask: npt.NDArray[np.uint8] | None) -> None: ...


@dataclass(frozen=True)
class Stages:
    """What every camera's pipeline shares, built once by the app."""

    publisher: Publisher
    detector: DetectorService | None
    describer: DescriberService | None
    motion: MotionSettings
    snapshots: SnapshotSettings
    make_tracker: Callable[[], Tracker]
    make_schedule: Callable[[CameraSettings], DetectionSchedule]
    publish_empty: bool = False
    view: FrameView | None = None
    governor: ShedGovernor | None = None
    """Sheds frames of paced cameras (live, realtime files) evenly when motion cannot keep
    up; None: never shed."""


@dataclass
class _Pending:
    """A frame between the two halves of the pipeline: motion done, objects on their way."""

    frame: Frame
    rois: Rois
    motion_ms: float
    motion_mask: npt.NDArray[np.uint8] | None = None
    detection: Future[Detections] | None = None
    carry_steps: float | None = None
    """Set on frames the inference interval skips: the tracker carries boxes this far."""


class CameraPipeline:
    """One camera's analysis in two threads. Few frames wait between the halves: a live
    camera's backlog would be latency, so live sources keep one (and drop at the slot when
    analysis falls behind); files, which wait anyway, keep a few to smooth the flow."""

    IN_FLIGHT_LIVE = 1
    IN_FLIGHT_FILE = 3

    def __init__(self, camera: CameraSettings, slot: FrameSlot, stages: Stages) -> None:
        self.camera = camera
        self.slot = slot
        self.analysed = 0
        self.detector_runs = 0
        """Frames sent to the detector (the stats' `fps_detected` is its rate)."""
        self.deferred = 0
        """Due detector runs deferred because the detector's queue held its share."""
        self.shed = {SHED_REASON: 0}
        """Frames taken from the slot but not analysed, by reason (analysis thread only)."""
        self.times = StageTimes()
        self.failures = Failures(log, "analysis")
        """Frames whose analysis raised, by kind; counted from both threads."""
        self.last_progress_mono = time.monotonic()
        self.finish_progress_mono = time.monotonic()
        self._stages = stages
        self._schedule = stages.make_schedule(camera)
        self._motion = (MotionStage(stages.motion, camera.ignore)
                        if stages.motion.enabled else None)
        self._tracker = stages.make_tracker()
        self._motion_stream: int | None = None
        self._track_stream: int | None = None
        """The stream of the last frame each thread saw: a change is a reconnect."""
        self._snapshot_requested = threading.Event()
        self._described: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self._descriptions: dict[int, str] = {}
        """Latest description per live track id (publish thread only), for snapshots and
        the live view."""
        self._next_snapshot = time.monotonic() + stages.snapshots.interval_s
        self._stop_by: Deadline | None = None
        self._analysis_done = threading.Event()
        live = camera.paced
        self._paced = live
        """Frames come at the source's pace (not a lossless file, which waits for us)."""
        self._governor = stages.governor if live else None
        self._tracks_lock = threading.Lock()
        self._tracks = TrackSummary()
        """What the tracker knew after its last update: written by the publish thread, read
        by the analysis thread's schedule, under `_tracks_lock`."""
        self._first_seen: dict[int, float] = {}
        """Schedule time each live track id was first published (publish thread only)."""
        self._frame_interval_ms: float | None = None
        """The source's pace (EMA of capture time between frames taken), for the governor."""
        self._last_capture: float | None = None
        self._pending: queue.Queue[_Pending] = queue.Queue(
            self.IN_FLIGHT_LIVE if live else self.IN_FLIGHT_FILE)
        self._thread = threading.Thread(target=self._run, name=f"analysis-{camera.name}",
                                        daemon=True)
        self._finisher = threading.Thread(target=self._finish_loop,
                                          name=f"publish-{camera.name}", daemon=True)

    def start(self) -> CameraPipeline:
        self._finisher.start()
        self._thread.start()
        return self

    def request_stop(self, deadline: Deadline) -> None:
        """Analyse what was read, but give up on anything still waiting at `deadline`."""
        self._stop_by = deadline
        self.slot.close()

    def join(self, deadline: Deadline) -> bool:
        """Wait for both threads until `deadline`; True if both ended."""
        return join(self._thread, deadline) & join(self._finisher, deadline)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and not self._finisher.is_alive()

    def request_snapshot(self) -> None:
        """Publish an annotated snapshot of the next finished frame (any thread)."""
        self._snapshot_requested.set()

    def note_description(self, object_id: int, text: str) -> None:
        """The describer's latest words for an object (any thread), drawn on snapshots."""
        self._described.put((object_id, text))

    def stalled_for(self, now: float) -> float:
        """Seconds since the slower of the two threads last made progress."""
        marks = [m for t, m in ((self._thread, self.last_progress_mono),
                                (self._finisher, self.finish_progress_mono)) if t.is_alive()]
        return now - min(marks) if marks else 0.0

    def _past_stop(self) -> bool:
        return self._stop_by is not None and self._stop_by.expired

    def _run(self) -> None:
        name_os_thread()
        lower_priority()
        try:
            while True:
                frame = self.slot.take(timeout_s=0.5)
                self.last_progress_mono = time.monotonic()
                if frame is None:
                    if self.slot.closed:
                        break
                    continue
                governor = self._governor
                self._pace(frame)
                if governor is not None and not governor.admit(self.camera.name):
                    self.shed[SHED_REASON] += 1
                    continue
                try:
                    pending = self.analyse(frame)
                except Exception as exc:  # one bad frame must not end a camera
                    self.failures.record(exc, context=f"camera={self.camera.name} "
                                         f"frame_id={frame.frame_id}")
                    continue
                while True:  # a bounded wait that still shows progress to the watchdog
                    try:
                        self._pending.put(pending, timeout=0.5)
                        break
                    except queue.Full:
                        self.last_progress_mono = time.monotonic()
                        if self._past_stop():
                            log.warning("camera=%s frame_id=%d not published: stopping",
                                        self.camera.name, frame.frame_id)
                            break
        finally:
            self._analysis_done.set()
            if self._motion is not None:
                self._motion.close()

    def _finish_loop(self) -> None:
        name_os_thread()
        lower_priority()
        while True:
            try:
                pending = self._pending.get(timeout=0.25)
            except queue.Empty:
                self.finish_progress_mono = time.monotonic()
                if self._analysis_done.is_set() and self._pending.empty():
                    return
                continue
            self.finish_progress_mono = time.monotonic()
            try:
                self.finish(pending)
            except Exception as exc:
                self.failures.record(exc, context=f"camera={self.camera.name} "
                                     f"frame_id={pending.frame.frame_id}")

    def analyse(self, frame: Frame) -> _Pending:
        """Motion, and the schedule's decision what the detector does with this frame."""
        motion = self._motion
        t0 = time.perf_counter()
        if motion is not None and frame.stream != self._motion_stream:
            if self._motion_stream is not None:
                log.info("camera=%s new stream: motion and tracking restart",
                         self.camera.name)
                motion.reset()
            self._motion_stream = frame.stream
        rois = motion.propose(frame) if motion is not None else Rois.empty()
        mask = getattr(motion, "last_mask", None)
        pending = _Pending(frame, rois, (time.perf_counter() - t0) * 1000.0, mask)
        if self._governor is not None and self._frame_interval_ms and frame.captured_mono > 0:
            self._governor.observe(self.camera.name, pending.motion_ms / self._frame_interval_ms,
                                   (time.monotonic() - frame.captured_mono) * 1000.0,
                                   self.slot.dropped)
        index = self.analysed
        self.analysed += 1
        service = self._stages.detector
        if service is None:
            return pending
        with self._tracks_lock:
            tracks = self._tracks
        decision = self._schedule.decide(index, rois.xyxy, frame.wh, self._time(frame),
                                         tracks)
        if decision.run:
            pending.detection = service.submit(frame, decision.regions, paced=self._paced)
            self.detector_runs += 1
        else:
            pending.carry_steps = decision.carry_steps
            self.deferred += decision.deferred
        return pending

    def _pace(self, frame: Frame) -> None:
        """Follow the interval between the frames taken from the slot (shed or not)."""
        last, self._last_capture = self._last_capture, frame.captured_mono
        if last is None or not 0 < frame.captured_mono - last < 2.0:
            return
        ms = (frame.captured_mono - last) * 1000.0
        self._frame_interval_ms = ms if self._frame_interval_ms is None else (
            0.1 * ms + 0.9 * self._frame_interval_ms)

    def _time(self, frame: Frame) -> float:
        """The frame's schedule time: when it was captured, or for a lossless file (read as
        fast as analysis goes) its stream time, so its detector rate is per second of video."""
        if not self._paced and frame.pts is not None:
            return frame.pts
        return frame.captured_mono

    def _hand_over_tracks(self, frame: Frame, dets: Detections) -> None:
        """Publish thread: tell the schedule which tracks are young, and where."""
        now = self._time(frame)
        live = set(self._tracker.active_ids)
        seen = self._first_seen = {k: v for k, v in self._first_seen.items()
                                   if k in live and v <= now}
        young = np.zeros(len(dets), bool)
        for i, track_id in enumerate(dets.tracker_id.tolist()):
            first = seen.setdefault(int(track_id), now)
            young[i] = now - first < YOUNG_TRACK_S
        summary = TrackSummary(dets.xyxy[young])
        with self._tracks_lock:
            self._tracks = summary

    def finish(self, pending: _Pending) -> None:
        """Objects (in frame order), tracking, publishing, describing."""
        stages, frame, rois = self._stages, pending.frame, pending.rois
        t1 = time.perf_counter()
        dets = self._result(pending) if pending.detection is not None else Detections.empty()
        t2 = time.perf_counter()
        if frame.stream != self._track_stream:
            if self._track_stream is not None:
                self._tracker.reset()  # nothing from before a reconnect is matched after it
            self._track_stream = frame.stream
        if pending.carry_steps is not None:
            dets = self._tracker.carry(pending.carry_steps, frame.wh)
        else:
            dets = self._tracker.update(dets)
        self._hand_over_tracks(frame, dets)
        t3 = time.perf_counter()
        if len(rois) or len(dets) or stages.publish_empty:
            stages.publisher.publish_camera(self.camera.name, Kind.DETECTIONS,
                                            contract.detections(frame, rois, dets),
                                            origin_mono=frame.captured_mono)
        t4 = time.perf_counter()
        if stages.describer is not None:
            self._offer(stages.describer, frame, rois, dets)
        self._take_descriptions()
        view = stages.view
        if view is not None and view.wants(self.camera.name):
            view.offer(self.camera.name, frame, rois, dets, dict(self._descriptions),
                       pending.motion_mask)
        self._maybe_snapshot(frame, rois, dets)
        self.times.add({"motion": pending.motion_ms, "detect": (t2 - t1) * 1000.0,
                        "track": (t3 - t2) * 1000.0, "publish": (t4 - t3) * 1000.0})

    def _take_descriptions(self) -> None:
        """Take what the describer sent; keep only objects the tracker still follows."""
        while True:
            try:
                object_id, text = self._described.get_nowait()
            except queue.Empty:
                break
            self._descriptions[object_id] = text
        if self._descriptions:
            live = set(self._tracker.active_ids)
            self._descriptions = {k: v for k, v in self._descriptions.items() if k in live}

    def _maybe_snapshot(self, frame: Frame, rois: Rois, dets: Detections) -> None:
        snap = self._stages.snapshots
        now = time.monotonic()
        periodic = snap.interval_s > 0 and now >= self._next_snapshot
        if not (periodic or self._snapshot_requested.is_set()):
            return
        self._snapshot_requested.clear()
        if periodic:
            self._next_snapshot = now + snap.interval_s
        self._stages.publisher.publish_snapshot(frame.camera, annotate(
            frame, rois, dets, self._descriptions, max_width=snap.max_width,
            quality=snap.quality))

    def _result(self, pending: _Pending) -> Detections:
        """The frame's objects; on any failure none (the frame still goes out). Waits at
        most the detector timeout, and never past the stop deadline."""
        future = pending.detection
        assert future is not None
        frame = pending.frame
        give_up = time.monotonic() + DETECT_TIMEOUT_S
        while True:
            limit = give_up if self._stop_by is None else min(give_up, self._stop_by.at)
            try:
                return future.result(timeout=min(0.5, max(0.0, limit - time.monotonic())))
            except FutureTimeout:
                if time.monotonic() < limit:
                    continue
                if self._past_stop():
                    log.warning("camera=%s frame_id=%d published without objects: the "
                                "detector did not answer before the stop deadline",
                                self.camera.name, frame.frame_id)
                elif self._stages.detector is not None:
                    self._stages.detector.failures.record(
                        None, "timeout", f"camera={self.camera.name} "
                        f"frame_id={frame.frame_id} after {DETECT_TIMEOUT_S:.0f}s")
            except ServiceStopped:
                pass  # shutting down
            except Exception:
                pass  # counted and logged by the detector service
            return Detections.empty()

    def _offer(self, service: DescriberService, frame: Frame, rois: Rois,
               dets: Detections) -> None:
        for i in range(len(dets)):
            x1, y1, x2, y2 = contract.box(dets.xyxy[i])
            # The service crops (padded, sized for the model) only objects that are due.
            service.offer(DescribeRequest(
                camera=frame.camera, frame_id=frame.frame_id, ts=round(frame.ts, 6),
                object_id=int(dets.tracker_id[i]), label=dets.label(i),
                score=float(dets.confidence[i]), box=(x1, y1, x2, y2), frame_wh=frame.wh,
                flow_xy=rois.flow_at(dets.xyxy[i])), frame.image)
