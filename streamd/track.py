"""Per-camera object tracking: stable ids for detections across frames.

A small greedy IoU tracker rather than a library: supervision's ByteTrack pulls in
opencv-python (GUI build) and matplotlib, which conflict with opencv-python-headless on an
edge box, and scipy (for Hungarian matching) is not a dependency either. Motion ROIs are
sparse, a handful of objects per camera, so matching by IoU greedily, best pair first, finds
the same pairs an optimal assignment would in all but contrived cases. A constant-velocity
guess of where each track moved keeps two objects that cross from swapping ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import Field

from streamd import geometry
from streamd.detections import Detections
from streamd.settings import StrictModel

Box = npt.NDArray[np.float64]


class TrackerSettings(StrictModel):
    """The `tracker:` section: how detections of consecutive frames become one object."""

    iou: float = Field(
        0.3, gt=0.0, le=1.0, description="A detection continues a track when its IoU with the "
        "track's predicted box is at least this; lower keeps fast or jittery objects, higher "
        "keeps two objects that pass close to each other apart.")
    max_missed: int = Field(
        15, ge=0, le=10_000, description="Analysed frames a track survives without a "
        "matching detection before its id is retired (an object hidden for longer comes "
        "back with a new id).")


@dataclass
class _Track:
    id: int
    class_id: int
    xyxy: Box
    velocity: Box
    """Box change per frame (all four coordinates), smoothed."""
    score: float = 0.0
    missed: int = 0
    hits: int = 1

    def predicted(self) -> Box:
        return self.xyxy + self.velocity * (self.missed + 1)


class Tracker:
    """Assigns `tracker_id`s to one camera's detections, frame after frame.

    Each `update` matches detections to live tracks of the same class by IoU with the
    track's predicted box (>= `settings.iou`, best pair first); unmatched detections start
    new tracks with ids 1, 2, 3, ... (never reused); a track unmatched for more than
    `settings.max_missed` consecutive updates is retired. Call `update` once per analysed
    frame, with an empty `Detections` when nothing was found, so that missing objects age.
    """

    def __init__(self, settings: TrackerSettings | None = None, *,
                 max_tracks: int = 256) -> None:
        self.settings = settings if settings is not None else TrackerSettings()
        self.max_tracks = max_tracks
        """A cap on live tracks: a noisy model or a too-low confidence must cost bounded
        CPU (the IoU matrix is tracks x detections); the longest-unseen go first."""
        self._tracks: list[_Track] = []
        self._labels: tuple[str, ...] = ()
        self._next_id = 1

    @property
    def active_ids(self) -> tuple[int, ...]:
        """Ids of the tracks still alive (seen within the last `max_missed` updates); the
        pipeline keeps descriptions only for these."""
        return tuple(t.id for t in self._tracks)

    def update(self, dets: Detections) -> Detections:
        """The same rows, in the same order, with `tracker_id` set."""
        if dets.labels:
            self._labels = tuple(dets.labels)
        boxes = dets.xyxy.astype(np.float64)
        ids = np.full(len(dets), -1, np.int64)
        matched_tracks: set[int] = set()
        if self._tracks and len(dets):
            predicted = np.stack([t.predicted() for t in self._tracks])
            iou = geometry.iou(predicted, boxes)
            track_cls = np.array([t.class_id for t in self._tracks])
            iou[track_cls[:, None] != dets.class_id[None, :]] = 0.0
            for t, d in geometry.greedy_pairs(iou, self.settings.iou):
                self._follow(self._tracks[t], boxes[d], float(dets.confidence[d]))
                ids[d] = self._tracks[t].id
                matched_tracks.add(t)
        survivors = []
        for i, track in enumerate(self._tracks):
            if i not in matched_tracks:
                track.missed += 1
            if track.missed <= self.settings.max_missed:
                survivors.append(track)
        self._tracks = survivors
        for new in np.flatnonzero(ids == -1):
            track = _Track(self._next_id, int(dets.class_id[new]), boxes[new].copy(),
                           np.zeros(4), float(dets.confidence[new]))
            self._next_id += 1
            self._tracks.append(track)
            ids[new] = track.id
        if len(self._tracks) > self.max_tracks:
            self._tracks.sort(key=lambda t: t.missed)  # stable: among equals, oldest first
            del self._tracks[self.max_tracks:]
        return dets.with_tracker_id(ids)

    def reset(self) -> None:
        """Forget every track (a reconnect starts a new stream: nothing seen before it is
        matched after it). Ids keep counting up, so an old id never names a new object."""
        self._tracks = []

    def carry(self, steps: float, frame_wh: tuple[int, int]) -> Detections:
        """Where the objects seen at the last `update` are now, `steps` updates later, by
        their constant-velocity guess — what an inference interval publishes on the frames
        the detector skips (DeepStream's `interval`). Tracks are not aged by this. The guess
        is cut to the frame (`frame_wh`), and one that left it is not published: boxes on
        the wire are always inside the frame."""
        live = [t for t in self._tracks if t.missed == 0]
        if not live:
            return Detections.empty(self._labels)
        xyxy = geometry.clip(np.stack([t.xyxy + t.velocity * steps for t in live]), frame_wh)
        inside = (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
        carried = Detections(xyxy.astype(np.float32),
                             np.array([t.score for t in live], np.float32),
                             np.array([t.class_id for t in live], np.int64),
                             np.array([t.id for t in live], np.int64), labels=self._labels)
        return carried[inside]

    @staticmethod
    def _follow(track: _Track, box: Box, score: float) -> None:
        step = (box - track.xyxy) / (track.missed + 1)
        track.velocity = step if track.hits == 1 else (track.velocity + step) / 2
        track.xyxy = box.copy()
        track.score = score
        track.missed = 0
        track.hits += 1
