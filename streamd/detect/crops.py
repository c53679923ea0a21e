"""Which parts of a frame go to the detector, given the motion ROIs.

A detector sees a crop resized to its square input. Feeding it each ROI as is would upscale a
small ROI many times (a 30 px crop at 320 px input is 10x, and models find little in blur)
and squash elongated ones; feeding it the whole frame shrinks small distant objects below
what the model can see. So each ROI becomes a square region of at least half the input size
around it, kept inside the frame, and regions that overlap heavily are merged, so one object
is not detected twice in two crops and the batch stays small.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamd import geometry
from streamd.detections import IntArray

MERGE_OVERLAP = 0.5
"""Two regions are merged when their intersection covers this much of the smaller one."""


def _square(box: npt.NDArray[np.float64], min_side: float, frame_wh: tuple[int, int]
            ) -> npt.NDArray[np.float64]:
    """Grow a box to a square of at least `min_side` around its centre, then shift it inside
    the frame; an axis longer than the frame is clipped to the frame."""
    fw, fh = frame_wh
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, min_side)
    sw, sh = min(side, fw), min(side, fh)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    nx1 = min(max(cx - sw / 2, 0.0), fw - sw)
    ny1 = min(max(cy - sh / 2, 0.0), fh - sh)
    return np.array([nx1, ny1, nx1 + sw, ny1 + sh])


def plan_regions(rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int], input_size: int,
                 max_regions: int = 8) -> IntArray:
    """Motion ROIs (N, 4) xyxy in frame pixels -> crop regions (M, 4) int64 xyxy, M <= N and
    M <= `max_regions`, every ROI inside some region, every region inside the frame.

    Regions are squares of side max(ROI width, ROI height, input_size / 2), so a crop is at
    most 2x upscaled by the model's letterbox; a frame smaller than that side gives regions
    as wide or as tall as the frame. Regions overlapping by `MERGE_OVERLAP` of the smaller one
    are merged into one square around both; past `max_regions`, the pair whose union is
    smallest is merged until the count fits, so no ROI is ever dropped.
    """
    rois = geometry.clip(rois_xyxy, frame_wh)
    rois = rois[(rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])]
    min_side = input_size / 2
    regions = [_square(r, min_side, frame_wh) for r in rois]

    def merge(i: int, j: int) -> None:
        regions[i] = _square(geometry.union(regions[i], regions[j])[0], min_side, frame_wh)
        del regions[j]

    merged = True
    while merged:
        merged = False
        over = np.triu(geometry.overlap(regions, regions), k=1) >= MERGE_OVERLAP
        if over.any():
            i, j = (int(k) for k in np.argwhere(over)[0])  # first pair in row-major order
            merge(i, j)
            merged = True
    while len(regions) > max(max_regions, 1):
        pairs = [(float(geometry.area(geometry.union(regions[i], regions[j]))[0]), i, j)
                 for i in range(len(regions)) for j in range(i + 1, len(regions))]
        _, i, j = min(pairs)
        merge(i, j)
    if not regions:
        return np.empty((0, 4), np.int64)
    out = np.array(regions)
    out[:, :2], out[:, 2:] = np.floor(out[:, :2] + 1e-6), np.ceil(out[:, 2:] - 1e-6)
    return geometry.clip(out, frame_wh).astype(np.int64)
