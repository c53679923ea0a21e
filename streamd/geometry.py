"""Box geometry, in one place: area, intersection, IoU, overlap, NMS, pad, clip, union.

Boxes are `xyxy` in pixels: one box is shape (4,), N boxes (N, 4); `x2`/`y2` are the far
edges, so a box's width is `x2 - x1` and two boxes sharing an edge touch without
overlapping. Every function takes the empty (0, 4) array and answers with an empty result,
never an error, because "no motion" and "no detections" are the common case. Results are
float64 unless the function says otherwise; inputs are never modified.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

Boxes = npt.NDArray[np.float64]
"""(N, 4) float64 xyxy (or (4,) for one box)."""
Indices = npt.NDArray[np.intp]


def as_boxes(xyxy: npt.ArrayLike) -> Boxes:
    """Any box-like input as a fresh (N, 4) float64 array (one box becomes one row)."""
    return np.array(xyxy, np.float64).reshape(-1, 4)


def area(xyxy: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N,) area of each box; 0 for an inverted or degenerate box."""
    b = as_boxes(xyxy)
    area_: npt.NDArray[np.float64] = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    return area_


def intersection(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N, M) area shared by every box of `a` (N, 4) with every box of `b` (M, 4)."""
    a, b = as_boxes(a), as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter: npt.NDArray[np.float64] = np.clip(rb - lt, 0.0, None).prod(axis=2)
    return inter


def iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N, M) intersection over union; 0 where both boxes have no area."""
    inter = intersection(a, b)
    union_ = area(a)[:, None] + area(b)[None, :] - inter
    out: npt.NDArray[np.float64] = np.divide(inter, union_, out=np.zeros_like(inter),
                                             where=union_ > 0)
    return out


def overlap(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N, M) intersection over the smaller of the two areas: 1.0 when one box contains the
    other, however different their sizes (where IoU would be small); 0 where the smaller box
    has no area."""
    inter = intersection(a, b)
    smaller = np.minimum(area(a)[:, None], area(b)[None, :])
    out: npt.NDArray[np.float64] = np.divide(inter, smaller, out=np.zeros_like(inter),
                                             where=smaller > 0)
    return out


def most_overlapping(box: npt.ArrayLike, boxes: npt.ArrayLike) -> int | None:
    """Index of the box in `boxes` (M, 4) sharing the largest area with `box` (4,), the
    first one on a tie; None when none overlaps it (touching is not overlapping)."""
    inter = intersection(box, boxes).reshape(-1)
    if not len(inter):
        return None
    best = int(np.argmax(inter))
    return best if inter[best] > 0 else None


def greedy_pairs(scores: npt.NDArray[np.float64], minimum: float) -> list[tuple[int, int]]:
    """Row/column pairs of `scores` (an IoU matrix) at or above `minimum`, best first, each
    row and each column used at most once (ties in row-major order). Greedy rather than an
    optimal assignment: with a handful of boxes and a threshold this high, two candidates for
    the same box overlap each other so much that both pick the same pairs."""
    rows, cols = np.nonzero(scores >= minimum)
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs = []
    for k in np.argsort(-scores[rows, cols], kind="stable"):
        r, c = int(rows[k]), int(cols[k])
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        pairs.append((r, c))
    return pairs


def nms(xyxy: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float,
        class_id: npt.ArrayLike | None = None) -> Indices:
    """Greedy non-maximum suppression; with `class_id`, boxes only suppress their own class.

    Returns the kept indices, best score first. A box is suppressed when its IoU with a kept
    one is above `iou_threshold` (the torchvision/Ultralytics convention). OpenCV's C++ NMS
    does the O(N^2) part: a few thousand candidates from an untrained or busy model stay
    in the low milliseconds where a Python loop would not.
    """
    boxes = as_boxes(xyxy)
    if len(boxes) == 0:
        return np.empty(0, np.intp)
    # OpenCV wants scores above a threshold >= 0; pass ranks instead (exact in float32, any
    # sign), the earlier box winning a tie.
    order = np.argsort(-np.asarray(scores).reshape(-1), kind="stable")
    rank = np.empty(len(order), np.float32)
    rank[order] = np.arange(len(order), 0, -1, dtype=np.float32)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    if class_id is None:
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), rank.tolist(), 0.0, iou_threshold)
    else:
        cls = np.asarray(class_id, np.int64).reshape(-1).tolist()
        keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), rank.tolist(), cls, 0.0, iou_threshold)
    return np.asarray(keep, np.intp).reshape(-1)


def pad(xyxy: npt.ArrayLike, fraction: float, square: bool = False) -> Boxes:
    """(N, 4) boxes grown by `fraction` of their own width and height on each side; with
    `square`, each is first widened to a square of its longer side around its centre (a
    model that centre-crops to a square then sees the whole object). Not clipped: see
    `clip`."""
    b = as_boxes(xyxy)
    if square:
        half = (b[:, 2:] - b[:, :2]).max(axis=1, keepdims=True) / 2
        centre = (b[:, :2] + b[:, 2:]) / 2
        b = np.hstack([centre - half, centre + half])
    wh = b[:, 2:] - b[:, :2]
    padded: Boxes = b + np.hstack([-wh, wh]) * fraction
    return padded


def clip(xyxy: npt.ArrayLike, frame_wh: tuple[float, float]) -> Boxes:
    """(N, 4) boxes cut to the frame [0, w] x [0, h] (a box outside it becomes empty)."""
    w, h = frame_wh
    clipped: Boxes = np.clip(as_boxes(xyxy), 0.0, [w, h, w, h])
    return clipped


def union(a: npt.ArrayLike, b: npt.ArrayLike) -> Boxes:
    """(N, 4) smallest boxes holding `a[i]` and `b[i]`, row by row (shapes must match)."""
    a, b = as_boxes(a), as_boxes(b)
    return np.hstack([np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])])


Row = tuple[float, float, float, float]
"""One box as plain floats, for the few boxes of one frame."""
ROWS_MAX = 32
"""Boxes up to which `merge_touching` runs in plain Python: at ~5 boxes numpy's fixed cost
per call (0.04-0.15 ms) is the whole cost, against ~0.01 ms; more boxes (a noisy frame)
go to numpy, whose O(N^2) test is vectorised."""


def merge_touching(xyxy: npt.ArrayLike) -> Boxes:
    """Replace every group of boxes that overlap or touch by their union, until none do.

    Boxes sharing an edge touch. A union can reach a box neither member touched, hence the
    outer loop. Returns (M, 4), M <= N; group order follows the first box of each group.
    """
    boxes = as_boxes(xyxy)
    if len(boxes) <= ROWS_MAX:
        return as_boxes(merge_touching_rows([(x1, y1, x2, y2)
                                             for x1, y1, x2, y2 in boxes.tolist()]))
    return _merge_touching_arrays(boxes)


def merge_touching_rows(boxes: list[Row]) -> list[Row]:
    """`merge_touching` on boxes as plain tuples (same groups, same order), without numpy
    below `ROWS_MAX` boxes: union-find, a group's root being its smallest index."""
    if len(boxes) > ROWS_MAX:
        return [(x1, y1, x2, y2) for x1, y1, x2, y2 in _merge_touching_arrays(
            as_boxes(boxes)).tolist()]
    while len(boxes) > 1:
        n = len(boxes)
        root = list(range(n))
        for i in range(n):
            ax1, ay1, ax2, ay2 = boxes[i]
            for j in range(i + 1, n):
                bx1, by1, bx2, by2 = boxes[j]
                if ax1 <= bx2 and bx1 <= ax2 and ay1 <= by2 and by1 <= ay2:
                    ri, rj = _root(root, i), _root(root, j)
                    root[max(ri, rj)] = min(ri, rj)
        groups: dict[int, Row] = {}
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            r = _root(root, i)
            g = groups.get(r)
            groups[r] = ((x1, y1, x2, y2) if g is None else
                         (min(g[0], x1), min(g[1], y1), max(g[2], x2), max(g[3], y2)))
        if len(groups) == n:
            break
        boxes = list(groups.values())  # in the order of each group's first box
    return boxes


def _root(root: list[int], i: int) -> int:
    while root[i] != i:
        i = root[i]
    return i


def _merge_touching_arrays(boxes: Boxes) -> Boxes:
    """`merge_touching` vectorised: label propagation over the touch matrix."""
    while len(boxes) > 1:
        n = len(boxes)
        x1, y1, x2, y2 = boxes.T
        touch = ((x1[:, None] <= x2[None, :]) & (x1[None, :] <= x2[:, None])
                 & (y1[:, None] <= y2[None, :]) & (y1[None, :] <= y2[:, None]))
        if np.count_nonzero(touch) == n and touch.diagonal().all():
            break  # each box touches only itself (the common case): nothing to merge
        group = np.arange(n)
        while True:  # label propagation: each box takes the smallest id it is connected to
            new = np.where(touch, group[None, :], n).min(axis=1)
            if np.array_equal(new, group):
                break
            group = new
        ids, inverse = np.unique(group, return_inverse=True)
        if len(ids) == n:
            break
        merged = np.empty((len(ids), 4))
        merged[:, :2] = np.inf
        merged[:, 2:] = -np.inf
        np.minimum.at(merged[:, 0], inverse, x1)
        np.minimum.at(merged[:, 1], inverse, y1)
        np.maximum.at(merged[:, 2], inverse, x2)
        np.maximum.at(merged[:, 3], inverse, y2)
        boxes = merged
    return boxes
