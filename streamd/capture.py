"""One thread per camera: read frames, stamp them, hand them to analysis; reconnect alone.

The capture thread owns its connection, so it also owns reconnecting: a dead camera never
needs the rest of the daemon (or an operator) to notice. Live sources overwrite the
`FrameSlot` (latest wins, overwritten frames are counted there); file sources wait for the
consumer unless `realtime: true` paces them at their native rate.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import cv2
import numpy as np
import tenacity
from pydantic import Field, field_validator

from streamd.contract import CameraState
from streamd.frames import Frame, FrameSlot, Image, SlotClosed
from streamd.redact import redact
from streamd.settings import NAME_PATTERN, Problem, StrictModel
from streamd.state import Counter
from streamd.threads import Deadline, join, lower_priority, name_os_thread

log = logging.getLogger(__name__)


Point = tuple[float, float]


class CameraSettings(StrictModel):
    """One entry of `cameras:`: its source and how it is read and reconnected."""

    name: str = Field(pattern=NAME_PATTERN, description="Topic level; unique in the fleet.")
    url: str | int = Field(description="rtsp://…, a file path, or a V4L2 device index.")
    fps: float | None = Field(None, gt=0, le=240, description="Analysis rate cap.")
    realtime: bool = Field(False, description="Pace a file at its native fps (live-like).")
    loop: bool = Field(False, description="Restart a file at its end.")
    rtsp_transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP over TCP (passes firewalls, no lost packets) or UDP.")
    open_timeout_s: float = Field(10.0, gt=0, le=120,
                                  description="Longest wait for the source to open.")
    read_timeout_s: float = Field(
        5.0, gt=0, le=120, description="A source silent this long is reconnected.")
    reconnect_max_s: float = Field(
        1.5, gt=0, le=300, description="Longest wait between reconnect attempts (plus jitter); "
        "short, so a camera is back within seconds of its source.")
    ignore: list[list[Point]] = Field(
        default_factory=list, description="Polygons (full-frame pixels) where motion is ignored.")
    enabled: bool = Field(True, description="false: configured, but not started.")

    @field_validator("ignore")
    @classmethod
    def _polygons(cls, v: list[list[Point]]) -> list[list[Point]]:
        for i, poly in enumerate(v):
            if len(poly) < 3:
                raise ValueError(f"polygon {i} needs at least 3 points, has {len(poly)}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 0:
            raise ValueError("a device index is >= 0")
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v

    @property
    def kind(self) -> Literal["rtsp", "file", "device"]:
        """What `url` names: a network stream, a file, or a V4L2 device index."""
        if isinstance(self.url, int):
            return "device"
        if re.match(r"^(rtsps?|rtmp|https?|udp|tcp)://", self.url, re.I):
            return "rtsp"
        return "file"

    @property
    def paced(self) -> bool:
        """Frames come at the source's pace: a live source or a `realtime` file, not a
        lossless file (read as fast as analysis takes its frames)."""
        return self.kind != "file" or self.realtime

    def preflight(self, file: str, key: str) -> list[Problem]:
        """A file source must exist (a live one can only be tried by connecting)."""
        if self.kind == "file" and not Path(str(self.url)).is_file():
            return [Problem(file, f"{key}.url", f"{self.url} does not exist")]
        return []

_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# FFmpeg and OpenCV print a line per failed connect or damaged packet straight to stderr: a
# dead camera would fill the journal. The camera status carries the reason instead, and
# damaged frames are counted (`decode_errors`). Set these variables to debug a source.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
_env_lock = threading.Lock()
"""OpenCV reads FFmpeg options from the process environment at open time; serialise opens."""


StateCallback = Callable[[str, CameraState, "str | None"], None]
"""(camera name, new state, reason) — called from the capture thread; must not block."""


class SourceError(Exception):
    """The source could not be opened or stopped delivering; the message is safe to log."""


@dataclass
class CaptureStats:
    """Counters read (without locking: ints are atomic enough for stats) by the stats loop."""

    frames_read: int = 0
    frames_out: int = 0
    skipped: int = 0
    """Frames read but not analysed because of the `fps` cap (by design, not a loss)."""
    decode_errors: int = 0
    reconnects: int = 0
    decode_ms: float = 0.0
    """Time spent in grab() + retrieve() (demux, decode, colour conversion), in total."""
    heartbeat_mono: float = 0.0
    """Last time the thread showed it is not stuck (a read returned, a backoff slice ended);
    the systemd watchdog is fed only while every camera's heartbeat is fresh."""


class CaptureWorker:
    """Reads one camera in its own thread. `start()` returns self; `stop()` is idempotent."""

    def __init__(self, camera: CameraSettings, slot: FrameSlot, frame_ids: Counter,
                 on_state: StateCallback, max_frames: int | None = None) -> None:
        self.camera = camera
        self.slot = slot
        self.stats = CaptureStats()
        self.state = CameraState.STARTING
        self.reason: str | None = None
        self._frame_ids = frame_ids
        self._on_state = on_state
        self._max_frames = max_frames
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._streams = 0
        """Connections that delivered frames; `Frame.stream` tells analysis which one."""
        self._state_lock = threading.Lock()
        self._abandoned = False
        """Set when `join` gave up on the thread: its final state was published for it."""
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera.name}",
                                        daemon=True)

    def start(self) -> CaptureWorker:
        self._set_state(CameraState.STARTING, None)
        self.stats.heartbeat_mono = time.monotonic()
        self._thread.start()
        return self

    def request_stop(self, reason: str | None = None) -> None:
        """Ask the thread to stop (returns at once); `reason` goes into the final `stopped`
        status. A read blocked in the source ends within `read_timeout_s`."""
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()
        self.slot.close()

    def join(self, deadline: Deadline) -> bool:
        """Wait for the thread until `deadline`. A thread still stuck in its source then is
        left behind (it is a daemon thread) and its `stopped` status is published for it,
        so the retained state is right even if the process exits first."""
        if join(self._thread, deadline):
            return True
        log.warning("camera=%s capture thread stuck in its source; leaving it",
                    self.camera.name)
        with self._state_lock:
            self._abandoned = True
            self._publish_state(CameraState.STOPPED, self._stop_reason)
        return False

    def stop(self, timeout_s: float = 5.0, reason: str | None = None) -> None:
        """`request_stop`, then `join` for at most `timeout_s`."""
        self.request_stop(reason)
        self.join(Deadline(timeout_s))

    def __enter__(self) -> CaptureWorker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stalled_for(self, now: float) -> float:
        """Seconds since the thread last showed progress; 0 when it is not running."""
        if not self._thread.is_alive():
            return 0.0
        return now - self.stats.heartbeat_mono

    @property
    def stall_limit_s(self) -> float:
        """Longest a healthy thread can go without a heartbeat: one open or read timeout
        plus a backoff step, with margin."""
        cam = self.camera
        return max(cam.open_timeout_s, cam.read_timeout_s) + cam.reconnect_max_s + 10.0

    def _set_state(self, state: CameraState, reason: str | None) -> None:
        with self._state_lock:  # never after `join` published the final state for us
            if self._abandoned or ((state, reason) == (self.state, self.reason)
                                   and state != CameraState.STARTING):
                return
            self._publish_state(state, reason)

    def _publish_state(self, state: CameraState, reason: str | None) -> None:
        self.state, self.reason = state, reason
        level = logging.WARNING if state == CameraState.RECONNECTING else logging.INFO
        log.log(level, "camera=%s state=%s reason=%s", self.camera.name, state.value,
                reason or "-")
        self._on_state(self.camera.name, state, reason)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        name_os_thread()
        lower_priority()
        final: CameraState = CameraState.STOPPED
        reason: str | None = None
        try:
            while not self._stop.is_set():
                try:
                    cap = self._connect()
                except SourceError as exc:  # a file that cannot be read will not heal
                    final, reason = CameraState.ENDED, str(exc)
                    break
                if cap is None:
                    break
                try:
                    outcome = self._stream(cap)
                except SourceError as exc:
                    self.stats.reconnects += 1
                    self._set_state(CameraState.RECONNECTING, str(exc))
                    continue
                finally:
                    cap.release()
                if outcome is not None:
                    final, reason = CameraState.ENDED, outcome
                    break
        except Exception as exc:  # a bug, not a camera fault: report it, do not take the fleet
            log.exception("camera=%s capture failed", self.camera.name)
            final, reason = CameraState.ENDED, redact(f"internal error: {exc}")
        finally:
            self.slot.close()
            if final == CameraState.STOPPED:
                reason = self._stop_reason
            self._set_state(final, reason)

    def _connect(self) -> cv2.VideoCapture | None:
        """Open the source, retrying with capped exponential backoff plus jitter; None if
        stopped meanwhile. A file is tried once: SourceError if it cannot be read.

        The sleep is the stop event's wait, so shutdown never waits out a backoff.
        """
        if self.camera.kind == "file":
            return self._open()

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            self._set_state(CameraState.RECONNECTING, str(exc))

        def sleep(seconds: float) -> None:
            deadline = Deadline(seconds)
            while not self._stop.wait(min(0.5, deadline.remaining())):
                self.stats.heartbeat_mono = time.monotonic()
                if deadline.expired:
                    return

        retrying = tenacity.Retrying(
            sleep=sleep,
            wait=tenacity.wait_exponential_jitter(
                multiplier=0.25, max=self.camera.reconnect_max_s, jitter=0.5),
            retry=tenacity.retry_if_exception_type(SourceError),
            stop=lambda rs: self._stop.is_set(),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._open)
        except SourceError:
            return None  # stopped while retrying

    def _open(self) -> cv2.VideoCapture:
        cam = self.camera
        if self._stop.is_set():
            raise SourceError("stopping")
        self.stats.heartbeat_mono = time.monotonic()
        if cam.kind == "device":
            cap = cv2.VideoCapture(int(cam.url))
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cam.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cam.read_timeout_s * 1000)]
            with _env_lock:
                if cam.kind == "rtsp":
                    # A short probe: FFmpeg's default analysis takes ~3 s and then hands out a
                    # burst of stale buffered frames.
                    os.environ[_FFMPEG_ENV] = (f"rtsp_transport;{cam.rtsp_transport}"
                                               "|analyzeduration;500000")
                else:
                    os.environ.pop(_FFMPEG_ENV, None)
                cap = cv2.VideoCapture(str(cam.url), cv2.CAP_FFMPEG, params)
        self.stats.heartbeat_mono = time.monotonic()
        if not cap.isOpened():
            cap.release()
            what = "not a readable video" if cam.kind == "file" else "no answer or refused"
            raise SourceError(f"cannot open {redact(cam.url)}: {what}")
        return cap

    def _stream(self, cap: cv2.VideoCapture) -> str | None:
        """Read until the source fails (SourceError), ends (returns why) or we stop (None)."""
        cam = self.camera
        is_file = cam.kind == "file"
        lossless = not cam.paced
        interval = 1.0 / cam.fps if cam.fps else 0.0
        native_fps = cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        next_due: float | None = None
        pace_origin: tuple[float, float] | None = None  # (monotonic, pts) for realtime files
        streaming = False
        while not self._stop.is_set():
            t0 = time.perf_counter()
            grabbed = cap.grab()
            self.stats.decode_ms += (time.perf_counter() - t0) * 1000.0
            self.stats.heartbeat_mono = time.monotonic()
            if not grabbed:
                if is_file and cam.loop and self.stats.frames_read:
                    if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        raise SourceError("cannot rewind file for loop")
                    pace_origin, next_due = None, None
                    continue
                if is_file:
                    return "end of file" if streaming else "no frame could be decoded"
                raise SourceError("no frame within read timeout or stream ended")
            now_mono, ts = time.monotonic(), time.time()
            self.stats.frames_read += 1
            pts = self._pts(cap, native_fps)
            # Rate cap: by stream time for files, by arrival time for live sources. A live
            # frame may come a quarter interval early (network jitter) without being
            # skipped; the schedule then keeps the average at the cap.
            clock = pts if is_file and pts is not None else now_mono
            if interval:
                early = interval * (0.01 if is_file else 0.25)
                if next_due is not None and clock < next_due - early:
                    self.stats.skipped += 1
                    continue
                next_due = clock + interval if next_due is None or clock > next_due + \
                    interval else next_due + interval
            if is_file and cam.realtime and pts is not None:
                if pace_origin is None:
                    pace_origin = (now_mono, pts)
                delay = pace_origin[0] + (pts - pace_origin[1]) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return None
                now_mono, ts = time.monotonic(), time.time()
            t0 = time.perf_counter()
            ok, raw = cap.retrieve()
            self.stats.decode_ms += (time.perf_counter() - t0) * 1000.0
            image = self._as_bgr(np.asarray(raw)) if ok and raw is not None else None
            if image is None:
                self.stats.decode_errors += 1
                continue
            if not streaming:
                self._streams += 1
            frame = Frame(cam.name, self._frame_ids.next(), ts, image, pts, now_mono,
                          self._streams)
            try:
                self.slot.put(frame, wait=lossless)
            except SlotClosed:
                return None
            self.stats.frames_out += 1
            if not streaming:
                streaming = True
                self._set_state(CameraState.STREAMING, None if self._streams == 1 else
                                "reconnected: a new stream, motion and tracking restart")
            if self._max_frames is not None and self.stats.frames_out >= self._max_frames:
                return f"max-frames {self._max_frames} reached"
        return None

    @staticmethod
    def _pts(cap: cv2.VideoCapture, native_fps: float) -> float | None:
        msec = cap.get(cv2.CAP_PROP_POS_MSEC)
        if msec and msec > 0:
            return round(float(msec) / 1000.0, 6)
        if native_fps > 0:  # some containers report no time; derive it from the frame index
            return round(max(cap.get(cv2.CAP_PROP_POS_FRAMES) - 1, 0) / native_fps, 6)
        return None

    def _as_bgr(self, image: np.ndarray) -> Image | None:
        """Normalise what decoders hand back (grey, BGRA, 16-bit) to 8-bit BGR, or None."""
        if image.dtype != np.uint8:
            if image.dtype != np.uint16:
                return None
            image = (image >> 8).astype(np.uint8)
        if image.ndim == 2:
            return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
        if image.ndim == 3 and image.shape[2] == 4:
            return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), np.uint8)
        if image.ndim == 3 and image.shape[2] == 3:
            return np.asarray(image, np.uint8)
        return None
