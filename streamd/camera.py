"""A camera: its capture thread and its analysis pipeline, started and stopped together.

A reload restarts exactly these; the watchdog asks each one whether its threads still make
progress.
"""

from __future__ import annotations

from streamd.capture import CameraSettings, CaptureWorker, StateCallback
from streamd.frames import FrameSlot
from streamd.pipeline import DETECT_TIMEOUT_S, CameraPipeline, Stages
from streamd.state import Counter
from streamd.threads import Deadline

ANALYSIS_STALL_S = DETECT_TIMEOUT_S + 15.0
"""An analysis thread silent this long is stuck (a frame never takes longer than the
detector timeout plus motion and publishing)."""


class Camera:
    """One camera's capture and analysis threads, started and stopped together (a reload
    restarts exactly these)."""

    def __init__(self, settings: CameraSettings, stages: Stages, frame_ids: Counter,
                 on_state: StateCallback, max_frames: int | None = None) -> None:
        self.settings = settings
        self.pipeline = CameraPipeline(settings, FrameSlot(), stages)
        self.frame_ids = frame_ids
        self.capture = CaptureWorker(settings, self.pipeline.slot, frame_ids, on_state,
                                     max_frames)

    def start(self) -> Camera:
        self.pipeline.start()
        self.capture.start()
        return self

    def request_stop(self, deadline: Deadline, reason: str | None = None) -> None:
        """Stop reading and analyse what was read, until `deadline` at the latest."""
        self.capture.request_stop(reason)
        self.pipeline.request_stop(deadline)

    def join(self, deadline: Deadline) -> bool:
        """Wait for the threads until `deadline`, then keep the exact frame_id mark (also
        for a thread left stuck: nothing it reads later is published)."""
        ended = self.capture.join(deadline) & self.pipeline.join(deadline)
        self.frame_ids.commit()
        return ended

    def stop(self, reason: str | None = None, budget_s: float = 5.0) -> bool:
        deadline = Deadline(budget_s)
        self.request_stop(deadline, reason)
        return self.join(deadline)

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
