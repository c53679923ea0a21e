"""The frame that crosses every stage boundary, and the double buffer capture writes into.

A `Frame` is immutable: stages derive new values from it and never change it, so a frame
handed to the detector and to the describer at the same time cannot be corrupted by either.
`FrameSlot` decouples capture from analysis: live sources overwrite (latest wins) and count
what was overwritten unseen; file sources wait, so a file is analysed losslessly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""A BGR image, shape (H, W, 3), dtype uint8 — OpenCV's native layout."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured image and the identity every downstream message carries.

    `frame_id` is monotonic per camera (across restarts too, see `streamd.state`); `ts` is
    UTC epoch seconds taken when the frame was read; `pts` is the stream's presentation
    time in seconds when the source provides one.
    """

    camera: str
    frame_id: int
    ts: float
    image: Image = field(repr=False)
    pts: float | None = None
    captured_mono: float = 0.0
    """`time.monotonic()` at capture, for latency figures; never published."""
    stream: int = 0
    """Which connection of its camera the frame came from (1, 2, ... per reconnect): a new
    stream is not a continuation of the last one, so motion and tracking restart on it."""

    @property
    def wh(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        h, w = self.image.shape[:2]
        return int(w), int(h)


class SlotClosed(Exception):
    """Raised by a blocking `FrameSlot.put` when the slot was closed while it waited."""


class FrameSlot:
    """A double buffer between one producer (capture) and one consumer (analysis).

    `put(frame, wait=False)` overwrites the back slot: if the previous frame was never taken,
    it counts as dropped. `put(frame, wait=True)` blocks until the consumer took the previous
    one (lossless file playback). `take()` returns the newest complete frame or None on
    timeout. `close()` wakes both sides; after it, `take()` drains what is left, then
    returns None.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0
        """Frames overwritten before analysis saw them."""

    def put(self, frame: Frame, *, wait: bool = False) -> None:
        with self._cond:
            if wait:
                while self._frame is not None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise SlotClosed
            elif self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def take(self, timeout_s: float | None = None) -> Frame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout_s)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
