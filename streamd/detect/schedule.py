"""When and where the detector runs, per camera: the one place that decides it.

The pipeline asks its schedule once per analysed frame, `decide(index, rois_xyxy, frame_wh,
t_s, tracks)`, and gets a `Decision`: run the detector (on the whole frame, or on crop
regions planned around the motion ROIs), or not, and if not, whether the tracker carries the
last boxes forward (a detector run skipped this frame) or ages them (nothing moved). `t_s`
is the frame's schedule time in seconds (capture monotonic time; stream time for a lossless
file) and `tracks` what the camera's tracker last knew (`TrackSummary`, handed over from the
publish thread). Two policies fit the seam:

`IntervalSchedule`, the fixed policy (`detector.interval` set in the YAML):

- `interval` k: the detector runs on every k-th analysed frame that has motion; the tracker
  carries the boxes in between (DeepStream's `interval`);
- `full_frame_every` N: every N-th analysed frame goes to the detector whole, motion or not,
  so objects that stopped moving are not lost;
- a per-camera phase (from the camera's name) offsets both counters, so cameras started
  together do not all hit the detector on the same tick.

`AdaptiveSchedule` (`streamd.detect.adaptive`), the default: the detector runs when
the camera's rate, allocated from measured detector capacity, says a run is due.

Both plan crops the same way (`plan_crops`). A frame that the model's input shrinks at most
`WHOLE_FRAME_MAX_DOWNSCALE` times goes whole: objects keep enough pixels, a crop costs the
same one inference, and the whole frame gives the answers the same detector gives on every
frame. A larger frame is cropped around the motion (the ROIs become at most `max_crops`
square regions), unless the crops would cover half the frame or more, which costs more than
one whole-frame pass.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorSettingsBase
from streamd.detect.crops import plan_regions
from streamd.detections import FloatArray, IntArray

WHOLE_FRAME_SHARE = 0.5
"""Crops covering this share of the frame or more: one whole-frame pass instead (each crop
costs one full inference at the model's input size)."""
WHOLE_FRAME_MAX_DOWNSCALE = 3.0
"""Frames whose longer side is at most this many model inputs always go whole (768x576 at
300 is 2.6). Measured with the SSD by `benchmarks/crops.py` on vtest.avi: one crop around
the motion finds 0.70 of the objects the whole frame finds, at the same cost; with the same
scene pasted into a larger frame, crops begin to win at a downscale of 3.4 (0.66 of the
objects found at the clip's own size, against 0.61 whole) and win clearly at 4.3 (0.65 vs
0.36) and 6.4 (0.65 vs 0.13)."""


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
    deferred: bool = False
    """A run was due but the detector's queue already held its share of work: the tracker
    carries instead (counted; the queue never grows without bound)."""


SKIP = Decision(run=False)
"""Nothing to detect and nothing to carry: tracks age."""


def _no_boxes() -> FloatArray:
    return np.empty((0, 4), np.float32)


@dataclass(frozen=True)
class TrackSummary:
    """What a camera's tracker knew after its last update, for the schedule.

    The tracker lives on the publish thread and the schedule on the analysis thread, so the
    pipeline hands this immutable value over under a lock after each update.
    """

    young_xyxy: FloatArray = field(default_factory=_no_boxes)
    """(K, 4) boxes of tracks first seen less than `YOUNG_TRACK_S` ago, in frame pixels."""

    @property
    def young(self) -> int:
        return len(self.young_xyxy)


NO_TRACKS = TrackSummary()
YOUNG_TRACK_S = 1.0
"""A track this new is worth another look soon: it may be a false positive, or the object
may have stopped moving before the detector confirmed it."""


class DetectionSchedule(Protocol):
    """Decides, frame after frame, for one camera. Called from one thread only."""

    def decide(self, index: int, rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int],
               t_s: float, tracks: TrackSummary) -> Decision: ...


def plan_crops(rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int], input_size: int,
               max_crops: int) -> IntArray | None:
    """Crop regions around the ROIs, or None when the whole frame is the better pass: small
    enough for the model's input, or the crops would cover half of it."""
    w, h = frame_wh
    if max(w, h) <= WHOLE_FRAME_MAX_DOWNSCALE * input_size:
        return None
    regions = plan_regions(rois_xyxy, frame_wh, input_size, max_crops)
    area = float(np.prod(regions[:, 2:] - regions[:, :2], axis=1).sum())
    return None if area >= WHOLE_FRAME_SHARE * w * h else regions


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
        return cls(input_size=input_size, interval=settings.interval or 1,
                   full_frame_every=settings.full_frame_every, max_crops=settings.max_crops,
                   phase=camera_phase(camera))

    def decide(self, index: int, rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int],
               t_s: float = 0.0, tracks: TrackSummary = NO_TRACKS) -> Decision:
        """`t_s` and `tracks` are not used: this policy counts frames."""
        rois = np.asarray(rois_xyxy).reshape(-1, 4)
        every = self.full_frame_every
        full = every > 0 and (index + self.phase) % every == 0
        self._since_detect += 1
        due = self._since_detect >= self.interval
        if full or (due and len(rois)):
            self._since_detect = 0
            return Decision(run=True, regions=None if full else plan_crops(
                rois, frame_wh, self.input_size, self.max_crops))
        if not due:  # between detector runs the tracker carries the boxes
            return Decision(run=False, carry_steps=self._since_detect / self.interval)
        self._since_detect = 0  # nothing moved: objects age and are retired in time
        return SKIP
