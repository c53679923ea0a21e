"""Box geometry shared by the detectors, the detector service and the tracker.

Boxes are `xyxy` float arrays of shape (N, 4) in pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

Boxes = npt.NDArray[np.floating]
Indices = npt.NDArray[np.intp]


def box_iou(a: Boxes, b: Boxes) -> npt.NDArray[np.float64]:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M); 0 where a box has no area."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou: npt.NDArray[np.float64] = np.divide(inter, union, out=np.zeros_like(inter),
                                             where=union > 0)
    return iou


def nms(xyxy: Boxes, scores: npt.NDArray[np.floating], iou_threshold: float,
        class_id: npt.NDArray[np.integer] | None = None) -> Indices:
    """Greedy non-maximum suppression; with `class_id`, boxes only suppress their own class.

    Returns the kept indices, best score first. A box is suppressed when its IoU with a kept
    one is above `iou_threshold` (the torchvision/Ultralytics convention). OpenCV's C++ NMS
    does the O(N^2) part: a few thousand candidates from an untrained or busy model stay
    in the low milliseconds where a Python loop would not.
    """
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    if len(xyxy) == 0:
        return np.empty(0, np.intp)
    # OpenCV wants scores above a threshold >= 0; pass ranks instead (exact in float32, any
    # sign), the earlier box winning a tie.
    order = np.argsort(-np.asarray(scores).reshape(-1), kind="stable")
    rank = np.empty(len(order), np.float32)
    rank[order] = np.arange(len(order), 0, -1, dtype=np.float32)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    if class_id is None:
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), rank.tolist(), 0.0, iou_threshold)
    else:
        cls = np.asarray(class_id, np.int64).reshape(-1).tolist()
        keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), rank.tolist(), cls, 0.0, iou_threshold)
    return np.asarray(keep, np.intp).reshape(-1)
