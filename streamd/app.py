"""Wires the stages for a fleet and runs them until asked to stop or every camera ended.

The app is the one place that knows every stage: it builds them (publisher, detector
service, describer service, one `Camera` per configured camera), starts them in data-flow
order and stops them in reverse (an `ExitStack`), runs the main thread's duty cycle (reload,
stats, systemd status and watchdog) and reloads the camera list on SIGHUP. What a stage
does lives in its module; what goes on the wire lives in `streamd.contract`.

Shutdown fits systemd's stop timeout: every camera is signalled first, then all are joined
against one shared deadline, and the detector and describer get what is left of it, so a
hung detector call or a stuck RTSP read cannot add up past `TimeoutStopSec`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time

from streamd import __version__, contract
from streamd.camera import Camera
from streamd.capture import CameraSettings
from streamd.config import Config, ConfigError, preflight
from streamd.config import load as load_config
from streamd.contract import CameraState, Kind
from streamd.describe import Description, create_describer
from streamd.describe.base import DescriberBaseSettings
from streamd.describe.service import DescriberService
from streamd.detect import DetectorService, create_detector
from streamd.detect.adaptive import AdaptiveSchedule, DetectorLoad, RateBoard
from streamd.detect.schedule import DetectionSchedule, IntervalSchedule
from streamd.metrics import MetricsServer
from streamd.notify import Notifier
from streamd.pipeline import FrameView, Stages
from streamd.publish import Publisher
from streamd.report import Report
from streamd.shed import ShedGovernor
from streamd.sparkplug.node import EdgeNode, NodeInfo
from streamd.state import StateStore
from streamd.threads import GIL_SWITCH_INTERVAL_S, Deadline
from streamd.track import Tracker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_TEMPFAIL = 0, 75
"""75 (EX_TEMPFAIL): every camera ended but the broker did not take everything within
`mqtt.drain_timeout_s`; systemd's Restart=on-failure starts us again to send the rest."""
STATUS_INTERVAL_S = 5.0
ENGINE_BUILD_BUDGET_S = 1800
"""How long systemd should wait for startup while a TensorRT engine may be building."""
STOP_BUDGET_S = 5.0
"""Cameras, analysis, detector and describer together, from the stop signal on."""
FLUSH_BUDGET_S = 3.0
"""Then the outbox flush (while connected) and `offline`: well inside TimeoutStopSec=20."""


class App:
    """The daemon for one config. `run()` blocks until stopped or done; returns an exit code.

    `view` is the optional live view (the web page) every pipeline offers its frames to.
    """

    def __init__(self, config: Config, max_frames: int | None = None,
                 view: FrameView | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.max_frames = max_frames
        self.view = view
        self.state = StateStore(self.settings.resolved_state_dir())
        self.publisher = Publisher(self.settings, config.mqtt_password, self.state,
                                   on_snapshot_request=self.request_snapshot)
        self.detector_service: DetectorService | None = None
        self.describer_service: DescriberService | None = None
        self.cameras: dict[str, Camera] = {}
        self.notifier = Notifier()
        self.report = Report(self.publisher, lambda: self.cameras)
        self.sparkplug: EdgeNode | None = None
        self.abandoned = False
        """Some worker thread was still stuck at the stop deadline (left behind)."""
        self._stages: Stages | None = None
        self._ready = False
        self._started_mono = time.monotonic()
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._ended = False
        self._deadline: Deadline | None = None
        """Shared by every stop step; starts with the first of them (`_stop_deadline`)."""
        self._stranded = 0

    def request_stop(self, why: str) -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", why)
        self._stop.set()

    def request_reload(self) -> None:
        """Signal-safe: the main loop re-reads the config at its next tick."""
        self._reload.set()

    def request_snapshot(self, camera: str) -> None:
        """Publish an annotated snapshot of `camera`'s next frame. The MQTT snapshot request
        calls this; so may any component that offers the same command (any thread)."""
        target = self.cameras.get(camera)
        if target is None:
            log.warning("snapshot requested for unknown camera %r", camera)
            return
        target.pipeline.request_snapshot()

    def run(self) -> int:
        s = self.settings
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # the daemon owns its process
        if s.detector.backend == "tensorrt":  # a first engine build takes minutes
            self.notifier.send(f"EXTEND_TIMEOUT_USEC={ENGINE_BUILD_BUDGET_S * 10**6}",
                               "STATUS=loading the detector (building a TensorRT engine "
                               "if none is cached)")
        # Before MQTT: a bad model file stops startup with nothing announced (no `online`).
        detector = create_detector(s.detector)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.publisher)
            stack.callback(self._stop_publisher)
            stack.callback(self.report.publish_stats)  # a final figure after the drain
            input_size = 320
            adaptive = s.detector.interval is None
            load = DetectorLoad(s.detector.latency_target_ms) if adaptive else None
            if adaptive:  # the default; an explicit detector.interval is the fixed policy
                self.report.governor = self._governor(load, detector is not None)
            if detector is not None:
                input_size = detector.input_size
                service = self.detector_service = self.report.detector = \
                    DetectorService(detector, load=load)
                stack.callback(self._stop_detector, service)
                service.start()
            describer = create_describer(s.describer, self.config.describer_api_key)
            if describer is not None:
                assert isinstance(s.describer, DescriberBaseSettings)
                self.describer_service = DescriberService(describer, s.describer,
                                                          self._on_description)
                self.report.describer = self.describer_service
                stack.callback(self._stop_describer, self.describer_service)
                self.describer_service.start()
            stack.callback(self.notifier.close)
            if s.metrics.prometheus_port is not None:
                server = MetricsServer(s.metrics.host, s.metrics.prometheus_port,
                                       self.report.figures)
                stack.callback(server.close)
            if s.web.enabled:  # the live view: up before the cameras, down after them
                from streamd.web.server import WebServer

                web = stack.enter_context(WebServer(
                    s.web, self.config.web_password,
                    lambda: {n: c.settings.ignore for n, c in list(self.cameras.items())},
                    lambda: self.publisher.connected))
                self.publisher.add_listener(web.on_message)
                self.view = web.view
            self._stages = Stages(
                publisher=self.publisher, detector=self.detector_service,
                describer=self.describer_service, motion=s.motion, snapshots=s.snapshots,
                make_tracker=functools.partial(Tracker, s.tracker),
                publish_empty=s.mqtt.publish_empty, view=self.view,
                make_schedule=functools.partial(self._schedule, input_size),
                governor=self.report.governor)
            if s.sparkplug is not None and s.sparkplug.enabled:  # Sparkplug B edge node
                classes = getattr(s.detector, "classes", None)
                labels = [lb for lb in (detector.labels if detector is not None else ())
                          if classes is None or lb in classes]
                info = NodeInfo(__version__, s.detector.backend,
                                str(getattr(s.detector, "model", "") or ""))
                self.sparkplug = EdgeNode.create(s, self.config.mqtt_password, info, labels,
                                                 request_snapshot=self.request_snapshot)
                self.publisher.add_listener(self.sparkplug.listener)
                stack.enter_context(self.sparkplug)  # stops after the cameras' last words
            stack.callback(self._stop_cameras)
            for cam in s.cameras:
                if cam.enabled:
                    self.cameras[cam.name] = self._camera(cam).start()
            log.info("running site=%s cameras=%d detector=%s describer=%s", s.site,
                     len(self.cameras), s.detector.backend, s.describer.backend)
            self._loop()
            stopping_mono = time.monotonic()
        log.info("stopped in %.1fs", time.monotonic() - stopping_mono)
        if self._ended and self._stranded:
            log.error("%d messages could not be delivered within mqtt.drain_timeout_s=%.0fs; "
                      "exiting %d so the service manager restarts streamd to send them",
                      self._stranded, s.mqtt.drain_timeout_s, EXIT_TEMPFAIL)
            return EXIT_TEMPFAIL
        return EXIT_OK

    def _governor(self, load: DetectorLoad | None, detects: bool) -> ShedGovernor:
        """Adaptive: the board splitting the detector's measured capacity between cameras
        (when a detector runs), and the governor that sheds frames when analysis falls
        behind, after the detector gave back its time above the floors."""
        det = self.settings.detector
        if load is None or not detects:
            return ShedGovernor(det.latency_target_ms)
        board = self.report.rates = RateBoard(load, det.min_rate_hz)
        return ShedGovernor(det.latency_target_ms, yield_detector=board.yield_capacity,
                            relax_detector=load.raise_ceiling)

    def _schedule(self, input_size: int, cam: CameraSettings) -> DetectionSchedule:
        """The fixed policy when `detector.interval` is set, else the adaptive one: each
        camera's rate from the board."""
        det = self.settings.detector
        service, board = self.detector_service, self.report.rates
        if board is None or service is None:
            return IntervalSchedule.for_camera(det, cam.name, input_size)
        return AdaptiveSchedule.for_camera(
            det, cam.name, input_size, board, paced=cam.paced,
            backlogged=service.backlogged)

    def _camera(self, settings: CameraSettings) -> Camera:
        assert self._stages is not None
        return Camera(settings, self._stages, self.state.counter(f"frame_id/{settings.name}"),
                      self._on_camera_state, self.max_frames)

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
                self._ended = True
                self._drain()
                break
            if now >= next_stats:
                next_stats = now + s.mqtt.stats_interval_s
                self.report.publish_stats()
            if not self._ready and ((self.publisher.connected and any(
                    c.pipeline.analysed for c in self.cameras.values()))
                    or now - self._started_mono >= s.ready_timeout_s):
                self._ready = True
                self.notifier.ready(self.report.summary())
                log.info("ready: %s", self.report.summary())
            elif now >= next_status:
                self.notifier.status(self.report.summary())
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

    def _drain(self) -> None:
        """Every camera ended: let the broker take what is pending (reconnecting, up to
        `mqtt.drain_timeout_s`; a stop signal cuts it short), feeding the watchdog."""
        timeout_s = self.settings.mqtt.drain_timeout_s
        pending = self.publisher.pending
        log.info("every camera ended; publishing what is pending (%d messages)", pending)
        deadline = Deadline(timeout_s)
        while pending and not deadline.expired and not self._stop.is_set():
            pending = self.publisher.drain(min(1.0, deadline.remaining()))
            self.notifier.watchdog()
        if pending:
            log.warning("%d messages still unacknowledged after %.0fs", pending, timeout_s)

    def _stop_deadline(self) -> Deadline:
        if self._deadline is None:
            self._deadline = Deadline(STOP_BUDGET_S)
        return self._deadline

    def _stop_cameras(self) -> None:
        """Signal every camera, then join them all against the shared deadline."""
        t0 = time.monotonic()
        deadline = self._stop_deadline()
        for cam in self.cameras.values():
            cam.request_stop(deadline)
        for cam in self.cameras.values():
            if not cam.join(deadline):
                self.abandoned = True
        log.info("cameras stopped in %.1fs", time.monotonic() - t0)

    def _stop_detector(self, service: DetectorService) -> None:
        if service.stop(self._stop_deadline().remaining()):
            service.detector.close()
        else:  # a call still runs inside the detector; closing it under that call is unsafe
            self.abandoned = True

    def _stop_describer(self, service: DescriberService) -> None:
        service.stop(drain_timeout_s=min(3.0, self._stop_deadline().remaining()))

    def _stop_publisher(self) -> None:
        self._stranded = self.publisher.stop(flush_timeout_s=FLUSH_BUDGET_S)

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
        if self.sparkplug is not None:  # DDEATH for removed cameras, births for new ones
            for name in removed:
                self.sparkplug.remove_camera(name)
            for name in added:
                self.sparkplug.add_camera(name)
        deadline = Deadline(STOP_BUDGET_S)
        leaving = {n: self.cameras.pop(n) for n in removed + changed}
        for name, cam in leaving.items():
            cam.request_stop(deadline, "removed from the config" if name in removed
                             else "restarting with new settings")
        for name, cam in leaving.items():
            cam.join(deadline)
            self.report.forget(name)
        for name in changed + added:
            self.cameras[name] = self._camera(wanted[name]).start()
        self.settings = self.settings.model_copy(update={"cameras": new.cameras})
        log.info("reload of %s: added=%s removed=%s restarted=%s unchanged=%d", path,
                 ",".join(added) or "-", ",".join(removed) or "-", ",".join(changed) or "-",
                 len(self.cameras) - len(added) - len(changed))
        return True

    def _on_camera_state(self, camera: str, state: CameraState, reason: str | None) -> None:
        self.publisher.publish_status(camera, state, reason)

    def _on_description(self, d: Description) -> None:
        """Describer thread: publish, and hand the text to the camera's snapshot drawing."""
        request = d.request
        camera = self.cameras.get(request.camera)
        if camera is not None:
            camera.pipeline.note_description(request.object_id, d.text)
        self.publisher.publish_camera(request.camera, Kind.DESCRIPTIONS,
                                      contract.description(d))

