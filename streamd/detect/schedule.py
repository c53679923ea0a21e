"""When and where the detector runs, per camera: the one place that decides it.

The pipeline asks its schedule once per analysed frame, `decide(index, rois_xyxy, frame_wh)`,
and gets a `Decision`: run the detector (on the whole frame, or on crop regions planned
around the motion ROIs), or not, and if not, whether the tracker carries the last boxes
forward (an inference interval skipped this frame) or ages them (nothing moved). This is
the seam an adaptive scheduler replaces: anything with `decide` fits.

`IntervalSchedule` is the fixed policy the YAML describes:

- `interval` k: the detector runs on every k-th analysed frame that has motion; the tracker
  carries the boxes in between (DeepStream's `interval`);
- `full_frame_every` N: every N-th analysed frame goes to the detector whole, motion or not,
  so objects that stopped moving are not lost;
- `max_crops`: the ROIs become at most this many square regions (`plan_regions`); regions
  covering half the frame or more cost more than one whole-frame pass, so the whole frame
  goes instead;
- a per-camera phase (from the camera's name) offsets both counters, so cameras started
  together do not all hit the detector on the same tick.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorSettingsBase
from streamd.detect.crops import plan_regions
from streamd.detections import IntArray

WHOLE_FRAME_SHARE = 0.5
"""Crops covering this share of the frame or more: one whole-frame pass instead (each crop
costs one full inference at the model's input size)."""


@dataclass(frozen=True)
class Decision:
    """What the detector does with one frame.

    `run`: submit the frame; `regions` (M, 4) int64 xyxy in frame pixels, or None for the
    whole frame. When not running, `carry_steps` is how far (in detector intervals) the
    tracker should carry the last boxes, or None when the tracker should age them instead.
    """

    run: bool
    regions: IntArray | None = None
    carry_steps: float | None = None


SKIP = Decision(run=False)
"""Nothing to detect and nothing to carry: tracks age."""


class DetectionSchedule(Protocol):
    """Decides, frame after frame, for one camera. Called from one thread only."""

    def decide(self, index: int, rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int]
               ) -> Decision: ...


def camera_phase(camera: str) -> int:
    """A stable per-camera offset (the same across restarts and processes)."""
    return zlib.crc32(camera.encode())


class IntervalSchedule:
    """The fixed interval / full-frame / crops policy (see the module docstring).

    `index` is the frame's position among this camera's analysed frames (0, 1, 2, ...).
    """

    def __init__(self, *, input_size: int, interval: int = 1, full_frame_every: int = 0,
                 max_crops: int = 1, phase: int = 0) -> None:
        if interval < 1 or full_frame_every < 0 or max_crops < 1 or input_size < 1:
            raise ValueError("need interval >= 1, full_frame_every >= 0, max_crops >= 1, "
                             "input_size >= 1")
        self.input_size = input_size
        self.interval = interval
        self.full_frame_every = full_frame_every
        self.max_crops = max_crops
        self.phase = phase
        self._since_detect = phase % interval

    @classmethod
    def for_camera(cls, settings: DetectorSettingsBase, camera: str, input_size: int
                   ) -> IntervalSchedule:
        """The `detector:` section's policy for one camera, phased by its name."""
        return cls(input_size=input_size, interval=settings.interval,
                   full_frame_every=settings.full_frame_every, max_crops=settings.max_crops,
                   phase=camera_phase(camera))

    def decide(self, index: int, rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int]
               ) -> Decision:
        rois = np.asarray(rois_xyxy).reshape(-1, 4)
        every = self.full_frame_every
        full = every > 0 and (index + self.phase) % every == 0
        self._since_detect += 1
        due = self._since_detect >= self.interval
        if full or (due and len(rois)):
            self._since_detect = 0
            return Decision(run=True, regions=None if full else self._regions(rois, frame_wh))
        if not due:  # between detector runs the tracker carries the boxes
            return Decision(run=False, carry_steps=self._since_detect / self.interval)
        self._since_detect = 0  # nothing moved: objects age and are retired in time
        return SKIP

    def _regions(self, rois: npt.NDArray[np.generic], frame_wh: tuple[int, int]
                 ) -> IntArray | None:
        """Crop regions around the ROIs, or None when the whole frame is the cheaper pass."""
        regions = plan_regions(rois, frame_wh, self.input_size, self.max_crops)
        w, h = frame_wh
        area = float(np.prod(regions[:, 2:] - regions[:, :2], axis=1).sum())
        return None if area >= WHOLE_FRAME_SHARE * w * h else regions
