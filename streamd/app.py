"""Wires the stages for a fleet and runs them until asked to stop or every file ended.

Per camera: a capture thread fills a `FrameSlot`; an analysis thread takes the newest frame
and runs motion → detect (through the shared `DetectorService`, which batches crops of all
cameras) → track → publish, then offers new objects to the `DescriberService`. Data only
flows forward; the app is the one place that knows every stage. Workers start in data-flow
order and stop in reverse (an `ExitStack`), so nothing is published after the publisher
flushed and every frame that was read is analysed before shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import zlib
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from streamd.capture import CameraState, CaptureWorker
from streamd.config import (
    CameraSettings,
    Config,
    ConfigError,
    NoDescriberSettings,
    preflight,
)
from streamd.config import load as load_config
from streamd.describe import DescribeRequest, Description, create_describer
from streamd.describe.service import DescriberService
from streamd.detect import DetectorService, ServiceStopped, create_detector, plan_regions
from streamd.detections import Detections
from streamd.frames import Frame, FrameSlot
from streamd.metrics import CameraFigures, Figures, MetricsServer
from streamd.motion import MotionStage, Rois
from streamd.notify import Notifier
from streamd.publish import Publisher
from streamd.snapshot import annotate
from streamd.state import StateStore
from streamd.track import Tracker

log = logging.getLogger(__name__)

DETECT_TIMEOUT_S = 30.0
ANALYSIS_STALL_S = DETECT_TIMEOUT_S + 15.0
"""An analysis thread silent this long is stuck (a frame never takes longer than the
detector timeout plus motion and publishing)."""
STATUS_INTERVAL_S = 5.0
ENGINE_BUILD_BUDGET_S = 1800
"""How long systemd should wait for startup while a TensorRT engine may be building."""


@dataclass
class StageTimes:
    """Sums over the current stats interval; the stats loop swaps it for a fresh one."""

    frames: int = 0
    ms: dict[str, float] = field(default_factory=lambda: {
        "motion": 0.0, "detect": 0.0, "track": 0.0, "publish": 0.0})

    def mean_ms(self) -> dict[str, float]:
        return {k: round(v / self.frames, 2) if self.frames else 0.0 for k, v in self.ms.items()}


def _box(xyxy: np.ndarray) -> list[int]:
    return [round(float(v)) for v in xyxy]


def _flow_for(box: np.ndarray, rois: Rois) -> tuple[float, float] | None:
    """Mean motion of the ROI that overlaps the object most (None if none overlaps)."""
    if not len(rois):
        return None
    x1 = np.maximum(rois.xyxy[:, 0], box[0])
    y1 = np.maximum(rois.xyxy[:, 1], box[1])
    x2 = np.minimum(rois.xyxy[:, 2], box[2])
    y2 = np.minimum(rois.xyxy[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    best = int(np.argmax(inter))
    if inter[best] <= 0:
        return None
    fx, fy = rois.flow_xy[best]
    return float(fx), float(fy)


@dataclass
class _Pending:
    """A frame between the two halves of the pipeline: motion done, objects on their way."""

    frame: Frame
    rois: Rois
    motion_ms: float
    detection: Future[Detections] | None = None
    carry_steps: float | None = None
    """Set on frames the inference interval skips: the tracker carries boxes this far."""


class CameraPipeline:
    """One camera's analysis, in two threads so the stages overlap: `analyse` runs motion
    and submits crops to the shared detector, `finish` waits for the objects (in frame
    order), tracks them and publishes. While the detector works on frame n, motion already
    runs on frame n+1 and capture decodes frame n+2. Few frames sit between the halves: a
    live camera's backlog would be latency, so live sources keep one (and drop at the slot
    when analysis falls behind); files, which wait anyway, keep a few to smooth the flow."""

    IN_FLIGHT_LIVE = 1
    IN_FLIGHT_FILE = 3

    def __init__(self, camera: CameraSettings, slot: FrameSlot, app: App) -> None:
        self.camera = camera
        self.slot = slot
        self.analysed = 0
        self.times = StageTimes()
        self.totals = StageTimes()
        """Since start, for `streamd bench`; `times` is reset by every stats message."""
        self.last_progress_mono = time.monotonic()
        self.finish_progress_mono = time.monotonic()
        self._app = app
        # Cameras started together would all run the detector on the same ticks (interval,
        # full_frame_every): a burst every k frames and idle in between. A per-camera phase
        # spreads the load, which is what keeps the latency tail short.
        self._phase = zlib.crc32(camera.name.encode())
        self._since_detect = self._phase % max(getattr(app.settings.detector, "interval", 1), 1)
        self._motion = (MotionStage(app.settings.motion, camera.ignore)
                        if app.settings.motion.enabled else None)
        self._tracker = Tracker()
        self.snapshot_requested = threading.Event()
        self.descriptions: dict[int, str] = {}
        """Latest description per track id, drawn on snapshots."""
        self._next_snapshot = time.monotonic() + app.settings.snapshots.interval_s
        self._errors = 0
        self._detect_errors = 0
        live = camera.kind != "file" or camera.realtime
        self._pending: queue.Queue[_Pending | None] = queue.Queue(
            self.IN_FLIGHT_LIVE if live else self.IN_FLIGHT_FILE)
        self._thread = threading.Thread(target=self._run, name=f"analysis-{camera.name}",
                                        daemon=True)
        self._finisher = threading.Thread(target=self._finish_loop,
                                          name=f"publish-{camera.name}", daemon=True)

    def start(self) -> CameraPipeline:
        self._finisher.start()
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.slot.close()
        for thread in (self._thread, self._finisher):
            if thread.is_alive():
                thread.join(timeout_s)

    def __enter__(self) -> CameraPipeline:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and not self._finisher.is_alive()

    def stalled_for(self, now: float) -> float:
        """Seconds since the slower of the two threads last made progress."""
        marks = [m for t, m in ((self._thread, self.last_progress_mono),
                                (self._finisher, self.finish_progress_mono)) if t.is_alive()]
        return now - min(marks) if marks else 0.0

    def _failed(self, frame: Frame) -> None:
        """One bad frame must not end a camera: one traceback, then a count."""
        self._errors += 1
        if self._errors == 1:
            log.exception("camera=%s frame_id=%d analysis failed", self.camera.name,
                          frame.frame_id)
        elif self._errors % 100 == 0:
            log.error("camera=%s analysis failed %d times", self.camera.name, self._errors)

    def _run(self) -> None:
        try:
            while True:
                frame = self.slot.take(timeout_s=0.5)
                self.last_progress_mono = time.monotonic()
                if frame is None:
                    if self.slot.closed:
                        break
                    continue
                try:
                    pending = self.analyse(frame)
                except Exception:
                    self._failed(frame)
                    continue
                while True:  # a bounded wait that still shows progress to the watchdog
                    try:
                        self._pending.put(pending, timeout=0.5)
                        break
                    except queue.Full:
                        self.last_progress_mono = time.monotonic()
        finally:
            self._pending.put(None)
            if self._motion is not None:
                self._motion.close()

    def _finish_loop(self) -> None:
        while True:
            try:
                pending = self._pending.get(timeout=0.5)
            except queue.Empty:
                self.finish_progress_mono = time.monotonic()
                continue
            self.finish_progress_mono = time.monotonic()
            if pending is None:
                return
            try:
                self.finish(pending)
            except Exception:
                self._failed(pending.frame)

    def analyse(self, frame: Frame) -> _Pending:
        """Motion, and the decision what the detector does with this frame."""
        app = self._app
        t0 = time.perf_counter()
        rois = self._motion.propose(frame) if self._motion is not None else Rois.empty()
        pending = _Pending(frame, rois, (time.perf_counter() - t0) * 1000.0)
        index = self.analysed
        self.analysed += 1
        service = app.detector_service
        if service is None:
            return pending
        det = app.settings.detector
        every = getattr(det, "full_frame_every", 0)
        interval = getattr(det, "interval", 1)
        full = every > 0 and (index + self._phase) % every == 0
        self._since_detect += 1
        due = self._since_detect >= interval
        if full or (due and len(rois)):
            regions = None
            if not full:
                regions = plan_regions(rois.xyxy, frame.wh, app.detector_input_size,
                                       getattr(det, "max_crops", 1))
                w, h = frame.wh
                area = float(np.prod(regions[:, 2:] - regions[:, :2], axis=1).sum())
                if area >= 0.5 * w * h:
                    regions = None
            pending.detection = service.submit(frame, regions)
            self._since_detect = 0
        elif not due:  # between detector runs the tracker carries the boxes
            pending.carry_steps = self._since_detect / interval
        else:  # nothing moved: objects age and are retired after max_missed
            self._since_detect = 0
        return pending

    def finish(self, pending: _Pending) -> None:
        """Objects (in frame order), tracking, publishing, describing."""
        app, frame, rois = self._app, pending.frame, pending.rois
        t1 = time.perf_counter()
        dets = self._result(pending) if pending.detection is not None else Detections.empty()
        t2 = time.perf_counter()
        if pending.carry_steps is not None:
            dets = self._tracker.carry(pending.carry_steps)
        else:
            dets = self._tracker.update(dets)
        t3 = time.perf_counter()
        if len(rois) or len(dets) or app.settings.mqtt.publish_empty:
            app.publisher.publish_camera(self.camera.name, "detections",
                                         self._payload(frame, rois, dets),
                                         origin_mono=frame.captured_mono)
        t4 = time.perf_counter()
        if app.describer_service is not None:
            self._offer(frame, rois, dets)
        self._maybe_snapshot(frame, rois, dets)
        for times in (self.times, self.totals):
            times.frames += 1
            times.ms["motion"] += pending.motion_ms
            for key, dt in (("detect", t2 - t1), ("track", t3 - t2), ("publish", t4 - t3)):
                times.ms[key] += dt * 1000.0

    def _maybe_snapshot(self, frame: Frame, rois: Rois, dets: Detections) -> None:
        snap = self._app.settings.snapshots
        now = time.monotonic()
        periodic = snap.interval_s > 0 and now >= self._next_snapshot
        if not (periodic or self.snapshot_requested.is_set()):
            return
        self.snapshot_requested.clear()
        if periodic:
            self._next_snapshot = now + snap.interval_s
        live = set(dets.tracker_id.tolist())
        current = dict(self.descriptions)  # one C-level copy: the describer thread writes too
        self.descriptions = {k: v for k, v in current.items() if k in live}
        self._app.publisher.publish_snapshot(frame.camera, annotate(
            frame, rois, dets, self.descriptions, max_width=snap.max_width,
            quality=snap.quality))

    def _result(self, pending: _Pending) -> Detections:
        """The frame's objects; on any failure none (the frame still goes out)."""
        assert pending.detection is not None
        name, frame = self.camera.name, pending.frame
        try:
            return pending.detection.result(DETECT_TIMEOUT_S)
        except FutureTimeout:
            log.error("camera=%s frame_id=%d detector timed out after %.0fs", name,
                      frame.frame_id, DETECT_TIMEOUT_S)
        except ServiceStopped:
            pass  # shutting down
        except Exception as exc:
            self._detect_errors += 1
            if self._detect_errors == 1 or self._detect_errors % 100 == 0:
                log.error("camera=%s frame_id=%d detector failed (%d so far): %s",
                          name, frame.frame_id, self._detect_errors, exc)
        return Detections.empty()

    def _payload(self, frame: Frame, rois: Rois, dets: Detections) -> dict[str, Any]:
        w, h = frame.wh
        return {
            "frame_id": frame.frame_id,
            "ts": round(frame.ts, 6),
            "pts": frame.pts,
            "width": w,
            "height": h,
            "rois": [{"box": _box(rois.xyxy[i]), "motion": round(float(rois.motion[i]), 2)}
                     for i in range(len(rois))],
            "objects": [{"id": int(dets.tracker_id[i]), "label": dets.label(i),
                         "score": round(float(dets.confidence[i]), 3),
                         "box": _box(dets.xyxy[i])} for i in range(len(dets))],
        }

    def _offer(self, frame: Frame, rois: Rois, dets: Detections) -> None:
        service = self._app.describer_service
        assert service is not None
        for i in range(len(dets)):
            box = _box(dets.xyxy[i])
            x1, y1, x2, y2 = box
            # The service crops (padded, sized for the model) only objects that are due.
            service.offer(DescribeRequest(
                camera=frame.camera, frame_id=frame.frame_id, ts=round(frame.ts, 6),
                object_id=int(dets.tracker_id[i]), label=dets.label(i),
                score=float(dets.confidence[i]), box=(x1, y1, x2, y2), frame_wh=frame.wh,
                flow_xy=_flow_for(dets.xyxy[i], rois)), frame.image)


class Camera:
    """One camera's capture and analysis threads, started and stopped together (a reload
    restarts exactly these)."""

    def __init__(self, settings: CameraSettings, app: App) -> None:
        self.settings = settings
        self.pipeline = CameraPipeline(settings, FrameSlot(), app)
        self.frame_ids = app.state.counter(f"frame_id/{settings.name}")
        self.capture = CaptureWorker(settings, self.pipeline.slot, self.frame_ids,
                                     app._on_camera_state, app.max_frames)

    def start(self) -> Camera:
        self.pipeline.start()
        self.capture.start()
        return self

    def stop_capture(self, reason: str | None = None) -> None:
        self.capture.stop(reason=reason)

    def stop(self, reason: str | None = None) -> None:
        """Stop reading, analyse what was read, keep the exact frame_id mark."""
        self.capture.stop(reason=reason)
        self.pipeline.stop()
        self.frame_ids.commit()

    @property
    def done(self) -> bool:
        return self.pipeline.done

    def stall(self, now: float) -> str | None:
        """Why this camera's threads look stuck, or None while they make progress."""
        stalled = self.capture.stalled_for(now)
        if stalled > self.capture.stall_limit_s:
            return f"capture of {self.settings.name} stuck for {stalled:.0f}s"
        stuck = self.pipeline.stalled_for(now)
        if stuck > ANALYSIS_STALL_S:
            return f"analysis of {self.settings.name} stuck for {stuck:.0f}s"
        return None


class App:
    """The daemon for one config. `run()` blocks until stopped or done; returns an exit code."""

    def __init__(self, config: Config, max_frames: int | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.max_frames = max_frames
        self.state = StateStore(self.settings.resolved_state_dir())
        self.publisher = Publisher(self.settings, config.mqtt_password, self.state)
        self.detector_service: DetectorService | None = None
        self.describer_service: DescriberService | None = None
        self.detector_input_size = 320
        self.cameras: dict[str, Camera] = {}
        self.notifier = Notifier()
        self._ready = False
        self._started_mono = time.monotonic()
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._last_stats_mono = time.monotonic()
        self._last_frames_in: dict[str, int] = {}

    def request_stop(self, why: str) -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", why)
        self._stop.set()

    def request_reload(self) -> None:
        """Signal-safe: the main loop re-reads the config at its next tick."""
        self._reload.set()

    def run(self) -> int:
        s = self.settings
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.publisher)
            stack.callback(self._publish_stats)  # a final figure after everything drained
            if s.detector.backend == "tensorrt":  # a first engine build takes minutes
                self.notifier.send(f"EXTEND_TIMEOUT_USEC={ENGINE_BUILD_BUDGET_S * 10**6}",
                                   "STATUS=loading the detector (building a TensorRT engine "
                                   "if none is cached)")
            detector = create_detector(s.detector)
            if detector is not None:
                stack.callback(detector.close)
                self.detector_input_size = detector.input_size
                self.detector_service = stack.enter_context(DetectorService(detector))
            describer = create_describer(s.describer, self.config.describer_api_key)
            if describer is not None:
                assert not isinstance(s.describer, NoDescriberSettings)
                self.describer_service = stack.enter_context(
                    DescriberService(describer, s.describer, self._on_description))
            stack.callback(self.notifier.close)
            self.publisher.on_snapshot_request = self._on_snapshot_request
            if s.metrics.prometheus_port is not None:
                server = MetricsServer(s.metrics.host, s.metrics.prometheus_port, self.figures)
                stack.callback(server.close)
            stack.callback(self._stop_cameras)
            for cam in s.cameras:
                if cam.enabled:
                    self.cameras[cam.name] = Camera(cam, self).start()
            log.info("running site=%s cameras=%d detector=%s describer=%s", s.site,
                     len(self.cameras), s.detector.backend, s.describer.backend)
            self._loop()
        return 0

    def _loop(self) -> None:
        """The main thread's duty cycle: reloads, stats, systemd status and watchdog."""
        s = self.settings
        now = time.monotonic()
        next_stats = now + s.mqtt.stats_interval_s
        next_status = now
        next_watchdog = now
        while not self._stop.wait(0.2):
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self.cameras and all(c.done for c in self.cameras.values()):
                log.info("every camera ended; publishing what is pending")
                break
            if now >= next_stats:
                next_stats = now + s.mqtt.stats_interval_s
                self._publish_stats()
            if not self._ready and ((self.publisher.connected and any(
                    c.pipeline.analysed for c in self.cameras.values()))
                    or now - self._started_mono >= s.ready_timeout_s):
                self._ready = True
                self.notifier.ready(self.summary())
                log.info("ready: %s", self.summary())
            elif now >= next_status:
                self.notifier.status(self.summary())
            if now >= next_status:
                next_status = now + STATUS_INTERVAL_S
            interval = self.notifier.watchdog_interval_s
            if interval is not None and now >= next_watchdog:
                stalls = [r for c in self.cameras.values() if (r := c.stall(now))]
                if stalls:  # systemd restarts us after WatchdogSec: say why, once a tick
                    log.error("watchdog withheld: %s", "; ".join(stalls))
                else:
                    self.notifier.watchdog()
                    next_watchdog = now + interval
        self.notifier.stopping("draining")

    def figures(self) -> Figures:
        """Cumulative figures for the Prometheus endpoint (read at scrape time)."""
        cams = {}
        for name, camera in list(self.cameras.items()):
            st, pipe = camera.capture.stats, camera.pipeline
            cams[name] = CameraFigures(
                state=camera.capture.state.value, frames_in=st.frames_read,
                frames_analysed=pipe.totals.frames, dropped=pipe.slot.dropped,
                skipped=st.skipped, decode_errors=st.decode_errors, reconnects=st.reconnects,
                stage_ms={"decode": st.decode_ms, **pipe.totals.ms},
                latency_ms=self.publisher.latency[name].percentiles())
        d = self.detector_service
        described = self.describer_service.snapshot() if self.describer_service else {}
        return Figures(cams, self.publisher.pending, dict(self.publisher.dropped),
                       self.publisher.connected, d.batches if d else 0, d.crops if d else 0,
                       {k: float(v) for k, v in described.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})

    def summary(self) -> str:
        """One line for `systemctl status`."""
        states = [c.capture.state for c in self.cameras.values()]
        streaming = sum(st == CameraState.STREAMING for st in states)
        fps = sum(c.pipeline.times.frames for c in self.cameras.values()) / max(
            time.monotonic() - self._last_stats_mono, 1e-3)
        broker = "connected" if self.publisher.connected else "DISCONNECTED"
        return (f"{streaming}/{len(states)} cameras streaming, {fps:.1f} fps analysed, "
                f"broker {broker}, outbox {self.publisher.pending}")

    def _stop_cameras(self) -> None:
        """Stop all captures at once (so none waits on another), then drain analysis."""
        for cam in self.cameras.values():
            cam.stop_capture()
        for cam in self.cameras.values():
            cam.stop()

    def reload(self) -> bool:
        """Re-read the config file. Invalid: keep everything running as it is. Valid: stop
        removed cameras, restart changed ones, start new ones; leave the others alone."""
        path = self.config.source
        try:
            new_cfg = load_config(path)
            problems = preflight(new_cfg)
        except ConfigError as exc:
            problems = exc.problems
        if problems:
            log.error("reload of %s failed; keeping the running config (%d problem(s)): %s",
                      path, len(problems), "; ".join(str(p) for p in problems))
            return False
        new = new_cfg.settings
        ignored = [k for k in type(new).model_fields
                   if k != "cameras" and getattr(new, k) != getattr(self.settings, k)]
        if ignored:
            log.warning("reload: %s changed; that takes effect after a restart",
                        ", ".join(ignored))
        wanted = {c.name: c for c in new.cameras if c.enabled}
        removed = [n for n in self.cameras if n not in wanted]
        changed = [n for n in self.cameras if n in wanted
                   and wanted[n] != self.cameras[n].settings]
        added = [n for n in wanted if n not in self.cameras]
        for name in removed:
            self.cameras.pop(name).stop("removed from the config")
            self._last_frames_in.pop(name, None)
        for name in changed:
            self.cameras.pop(name).stop("restarting with new settings")
            self._last_frames_in.pop(name, None)
        for name in changed + added:
            self.cameras[name] = Camera(wanted[name], self).start()
        self.settings = self.settings.model_copy(update={"cameras": new.cameras})
        log.info("reload of %s: added=%s removed=%s restarted=%s unchanged=%d", path,
                 ",".join(added) or "-", ",".join(removed) or "-", ",".join(changed) or "-",
                 len(self.cameras) - len(added) - len(changed))
        return True

    def _on_snapshot_request(self, camera: str) -> None:
        target = self.cameras.get(camera)
        if target is None:
            log.warning("snapshot requested for unknown camera %r", camera)
            return
        target.pipeline.snapshot_requested.set()

    def _on_camera_state(self, camera: str, state: CameraState, reason: str | None) -> None:
        self.publisher.publish_status(camera, state.value, reason)

    def _on_description(self, d: Description) -> None:
        request = d.request
        camera = self.cameras.get(request.camera)
        if camera is not None:  # drawn on the next snapshot
            camera.pipeline.descriptions[request.object_id] = d.text
        self.publisher.publish_camera(request.camera, "descriptions", {
            "frame_id": request.frame_id, "ts": request.ts, "object_id": request.object_id,
            "label": request.label, "box": list(request.box), "text": d.text,
            "model": d.model, "latency_ms": round(d.latency_ms, 2), "cached": d.cached})

    def _publish_stats(self) -> None:
        """Per camera: rates over the time since the last stats, totals since start."""
        now = time.monotonic()
        elapsed = max(now - self._last_stats_mono, 1e-3)
        self._last_stats_mono = now
        shared: dict[str, Any] = {"mqtt_pending": self.publisher.pending,
                                  "mqtt_dropped": dict(self.publisher.dropped)}
        if self.detector_service is not None:
            d = self.detector_service
            shared["detector"] = {"batches": d.batches, "crops": d.crops,
                                  "last_batch_size": d.last_batch_size,
                                  "infer_ms": round(d.infer_ms_ema, 2)}
        if self.describer_service is not None:
            shared["describer"] = self.describer_service.snapshot()
        for name, camera in list(self.cameras.items()):
            pipe, cap = camera.pipeline, camera.capture
            times, pipe.times = pipe.times, StageTimes()
            payload: dict[str, Any] = {
                "ts": round(time.time(), 6),
                "state": cap.state.value,
                "interval_s": round(elapsed, 3),
                "fps_analysed": round(times.frames / elapsed, 2),
                "frames_analysed": pipe.analysed,
                "stage_ms": times.mean_ms(),
                "latency_ms": self.publisher.latency[name].percentiles(),
                "dropped": pipe.slot.dropped,
                **shared,
            }
            st = cap.stats
            last = self._last_frames_in.get(name, 0)
            self._last_frames_in[name] = st.frames_read
            payload.update(fps_in=round((st.frames_read - last) / elapsed, 2),
                           frames_in=st.frames_read, skipped=st.skipped,
                           decode_errors=st.decode_errors, reconnects=st.reconnects)
            self.publisher.publish_camera(name, "stats", payload,
                                          qos=self.settings.mqtt.stats_qos)
