"""The one result type detectors, the tracker and the publisher exchange.

One array per field, checked on creation, never mutated: a stage that changes boxes or
assigns track ids returns a new `Detections` (see `with_tracker_id`). Boxes are `xyxy` in
pixels of the frame the detections belong to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def readonly(a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """A contiguous, write-protected array: result types share arrays, never mutate them."""
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Detections:
    """N objects: `xyxy` (N, 4) float32, `confidence` (N,) float32, `class_id` (N,) int64,
    `tracker_id` (N,) int64 with -1 for "not tracked yet".

    `labels` maps class ids to names; it travels with the detections so the publisher never
    has to ask the detector.
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray
    tracker_id: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    labels: Sequence[str] = ()

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, np.float32).reshape(-1, 4)
        n = len(xyxy)
        confidence = np.asarray(self.confidence, np.float32).reshape(-1)
        class_id = np.asarray(self.class_id, np.int64).reshape(-1)
        tracker_id = np.asarray(self.tracker_id, np.int64).reshape(-1)
        if tracker_id.size == 0 and n:
            tracker_id = np.full(n, -1, np.int64)
        for name, arr in (("confidence", confidence), ("class_id", class_id),
                          ("tracker_id", tracker_id)):
            if len(arr) != n:
                raise ValueError(f"Detections.{name} has {len(arr)} rows, xyxy has {n}")
        object.__setattr__(self, "xyxy", readonly(xyxy))
        object.__setattr__(self, "confidence", readonly(confidence))
        object.__setattr__(self, "class_id", readonly(class_id))
        object.__setattr__(self, "tracker_id", readonly(tracker_id))
        object.__setattr__(self, "labels", tuple(self.labels))

    @classmethod
    def empty(cls, labels: Sequence[str] = ()) -> Detections:
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.float32),
                   np.empty(0, np.int64), labels=labels)

    @classmethod
    def merge(cls, parts: Sequence[Detections]) -> Detections:
        """Concatenate; the labels of the first non-empty part win (one model, one table)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.xyxy for p in parts]),
                   np.concatenate([p.confidence for p in parts]),
                   np.concatenate([p.class_id for p in parts]),
                   np.concatenate([p.tracker_id for p in parts]),
                   labels=parts[0].labels)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | slice
                    ) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index],
                          self.tracker_id[index], labels=self.labels)

    def with_tracker_id(self, tracker_id: IntArray) -> Detections:
        return replace(self, tracker_id=tracker_id)

    def label(self, i: int) -> str:
        cid = int(self.class_id[i])
        return self.labels[cid] if 0 <= cid < len(self.labels) else str(cid)
