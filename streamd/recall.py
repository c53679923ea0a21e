"""What a pipeline's speed cost in answers: its published objects against a reference run.

`streamd bench` runs the configured pipeline and a *reference* (the same detector on every
whole frame, no motion gating, no inference interval) on the same video and collects what
each one published on MQTT. A reference object counts as found when the pipeline published
an object for the same `frame_id` with the same label and IoU >= 0.5 — boxes the tracker
carried between detector runs count, because that is what a subscriber sees. Objects the
pipeline published that match no reference object are `extra`.

Matching is greedy, best IoU first, within one frame and one label (as the tracker does): a
frame holds a handful of objects, and with a 0.5 threshold two candidates for the same box
overlap each other so much that an optimal assignment picks the same pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamd import geometry

IOU_MIN = 0.5

Labelled = tuple[str, Sequence[float]]
"""One published object: its label and its `[x1, y1, x2, y2]` box in frame pixels."""

ObjectsByFrame = Mapping[int, Sequence[Labelled]]


@dataclass(frozen=True)
class RecallCounts:
    """Objects counted over all frames of a comparison."""

    reference: int
    """Objects the reference published."""
    matched: int
    """Reference objects the pipeline also published (same frame, label, IoU >= min)."""
    published: int
    """Objects the pipeline published."""

    @property
    def extra(self) -> int:
        """Pipeline objects that match no reference object."""
        return self.published - self.matched

    @property
    def recall(self) -> float | None:
        """matched / reference; None when the reference found nothing (nothing to miss)."""
        return self.matched / self.reference if self.reference else None

    def as_dict(self) -> dict[str, Any]:
        recall = self.recall
        return {"recall": None if recall is None else round(recall, 4),
                "reference_objects": self.reference, "matched": self.matched,
                "missed": self.reference - self.matched, "published": self.published,
                "extra": self.extra}


def match_frame(reference: Sequence[Labelled], published: Sequence[Labelled],
                iou_min: float = IOU_MIN) -> int:
    """How many of one frame's reference objects the published ones match, each object used
    at most once, pairs taken best IoU first, labels equal."""
    matched = 0
    for label in {lbl for lbl, _ in reference} & {lbl for lbl, _ in published}:
        ref = [box for lbl, box in reference if lbl == label]
        got = [box for lbl, box in published if lbl == label]
        iou = geometry.iou(np.asarray(ref, np.float64), np.asarray(got, np.float64))
        matched += len(geometry.greedy_pairs(iou, iou_min))
    return matched


def compare(reference: ObjectsByFrame, published: ObjectsByFrame,
            iou_min: float = IOU_MIN) -> RecallCounts:
    """Count the reference objects `published` matches, frame by frame (a frame missing on
    either side matches nothing there)."""
    matched = sum(match_frame(objs, published.get(fid, ()), iou_min)
                  for fid, objs in reference.items())
    return RecallCounts(reference=sum(len(v) for v in reference.values()), matched=matched,
                        published=sum(len(v) for v in published.values()))


def stability(reference: ObjectsByFrame, lag: int = 1) -> RecallCounts:
    """The reference against itself `lag` frames earlier: the recall a pipeline would get
    on a frame whose detector run it skipped, if it published the last run's boxes exactly
    where they were. It bounds what skipping runs can keep: a detector whose answers change
    from frame to frame (boxes jitter, objects near the confidence cut come and go) cannot
    be skipped on a share s of the frames at a recall above 1 - s * (1 - stability), however
    well the tracker carries."""
    earlier = {fid: reference.get(fid - lag, ()) for fid in reference}
    return compare(reference, earlier)


def objects_by_frame(payloads: Iterable[Mapping[str, Any]]) -> dict[int, list[Labelled]]:
    """Contract-v1 `detections` payloads → objects per `frame_id` (a redelivered message
    replaces the first copy rather than doubling its objects)."""
    out: dict[int, list[Labelled]] = {}
    for p in payloads:
        out[int(p["frame_id"])] = [(str(o["label"]), tuple(float(v) for v in o["box"]))
                                   for o in p.get("objects", ())]
    return out
