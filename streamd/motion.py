"""Motion stage: where in a frame something moves, as boxes the detector crops.

The detector is the expensive stage, so it runs on crops of moving regions rather than on
whole frames. Motion is found with Farneback dense optical flow on a downscaled grey frame:
flow measures displacement, so its threshold means "moved at least N px/frame", which is
stable across lighting and contrast where a frame difference is not; dense flow also gives
each box a mean velocity (`Rois.flow_xy`) that the describer turns into text.

Per frame (one `MotionStage` per camera, called from one thread):

1. grey, downscale to `scale_width` (aspect kept); ignored pixels are frozen to the previous
   frame's values, so ignore zones produce neither flow nor seams at their border;
2. change test on a 160 px wide float copy: a pixel "changed" if the difference around it
   exceeds what this camera's own frame-to-frame noise explains (`flow._CHANGE_TESTS`);
3. Farneback flow, only over the boxes of the groups of changed pixels (`flow.flow_regions`):
   a person covers a few % of a street scene, and elsewhere nothing changed beyond the
   noise, so there is nothing for the flow to find (vtest.avi: 22 % of the frame, 8x less
   Farneback time). If no group is large enough, the flow is skipped: a still scene, noisy
   or not, costs two resizes and a difference (~1 ms), not a Farneback run (~10 ms);
   -> magnitude (0 outside the boxes) -> threshold (fixed, or `auto`: an exponentially
   smoothed median + k * MAD of the magnitude, the noise floor of this camera, never below
   a floor);
4. morphology (open removes specks, close joins the fragments of one object), outer
   contours, merge boxes that touch, drop boxes with no changed pixel (flow where nothing
   changed beyond the noise is the flow of noise, typically in flat areas where Farneback
   is ill-conditioned) and boxes below `min_area`, pad, clip, merge the padded boxes that
   overlap, keep the `max_rois` largest;
5. boxes are mapped back to full-frame pixels.

The flow regions and the per-box change test read the same change mask. A box needs a
changed pixel in any case; the regions also leave out groups of fewer than
`flow._REGION_MIN_CHANGED` changed pixels (mostly compression and sensor noise: 190 groups a
frame on vtest.avi), fewer than a moving object of `min_area` changes. Flow over a region
differs from whole-frame flow only near the region's border; `gate=False` runs the
whole-frame flow on every frame, the reference the tests compare against.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field

from streamd import flow, geometry
from streamd.detections import readonly
from streamd.frames import Frame
from streamd.settings import StrictModel

log = logging.getLogger(__name__)


class MotionSettings(StrictModel):
    """`motion:`: how moving regions are found (the same for every camera)."""

    enabled: bool = Field(
        True, description="false: no motion gating; the detector then needs "
        "`full_frame_every` (the naive baseline of `streamd bench`).")
    scale_width: int = Field(
        320, ge=32, le=1920, description="Flow is computed at this width. 240 costs ~45 % "
        "of 320 and finds the same moving objects down to ~20 px (at 640 px wide); 160 "
        "also misses objects slower than ~2 px/frame.")
    threshold: Literal["auto"] | Annotated[float, Field(gt=0)] = Field(
        "auto", description="Flow magnitude (px/frame at full resolution) that counts as "
        "motion; `auto` adapts to the scene's noise floor.")
    min_area: float = Field(0.001, ge=0.0, lt=1.0, description="Smallest ROI, fraction of frame.")
    pad: float = Field(0.15, ge=0.0, le=2.0, description="ROI padding, fraction of its size.")
    max_rois: int = Field(8, ge=1, le=64, description="Largest ROIs kept per frame.")

BoxArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float32]
_F32 = npt.NDArray[np.float32]
_U8 = npt.NDArray[np.uint8]
_Mask = npt.NDArray[np.bool_]
_Box = geometry.Row
"""xyxy at the flow scale, one box."""

# Auto threshold.
_AUTO_K = 5.0
"""Robust sigmas (1.4826 * MAD) above the median magnitude that count as motion."""
_AUTO_FLOOR = 0.3
"""px/frame at the flow scale (0.72 px/frame at 768 px wide with scale_width 320): on a
clean scene the noise estimate is ~0, and sub-pixel flow jitter must not become motion."""
_AUTO_ALPHA = 0.1
"""EMA weight of a new frame: the floor follows a scene over ~10 analysed frames, while one
frame dominated by a large mover barely moves it."""

_MAX_COMPONENTS = 256
"""Largest connected components considered; the box merge is O(N^2) per pass."""
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, eq=False)
class Rois:
    """N moving regions of one frame, one array per field, read-only.

    `xyxy` (N, 4) int32: boxes in full-frame pixels, `x2`/`y2` exclusive (so
    `image[y1:y2, x1:x2]` is the crop), clipped to the frame, largest first.
    `motion` (N,) float32: mean flow magnitude of the moving pixels inside the box,
    px/frame at full resolution. `flow_xy` (N, 2) float32: their mean flow vector (dx, dy),
    px/frame at full resolution; image y grows downwards, so dy > 0 is "moving down".
    """

    xyxy: BoxArray
    motion: FloatArray
    flow_xy: FloatArray

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, np.int32).reshape(-1, 4)
        n = len(xyxy)
        motion = np.asarray(self.motion, np.float32).reshape(-1)
        flow_xy = np.asarray(self.flow_xy, np.float32).reshape(-1, 2)
        for name, arr in (("motion", motion), ("flow_xy", flow_xy)):
            if len(arr) != n:
                raise ValueError(f"Rois.{name} has {len(arr)} rows, xyxy has {n}")
        object.__setattr__(self, "xyxy", readonly(xyxy))
        object.__setattr__(self, "motion", readonly(motion))
        object.__setattr__(self, "flow_xy", readonly(flow_xy))

    @classmethod
    def empty(cls) -> Rois:
        return cls(np.empty((0, 4), np.int32), np.empty(0, np.float32),
                   np.empty((0, 2), np.float32))

    def __len__(self) -> int:
        return len(self.xyxy)

    def flow_at(self, box: npt.ArrayLike) -> tuple[float, float] | None:
        """Mean flow (dx, dy) of the ROI that overlaps `box` most, None if none does: how
        an object moves, which the describer puts into words."""
        best = geometry.most_overlapping(box, self.xyxy)
        if best is None:
            return None
        fx, fy = self.flow_xy[best]
        return float(fx), float(fy)


class MotionStage:
    """One per camera; stateful (keeps the previous small grey frame).

    `ignore` holds polygons in full-frame pixels where motion is ignored (a flag, a road
    outside the fence); they are rasterised once per frame size. Not thread-safe: one
    analysis thread calls `propose`. `gate=False` runs the flow over the whole frame on
    every frame: the reference for measuring what the regions save and checking that they
    hide nothing.
    """

    def __init__(self, settings: MotionSettings,
                 ignore: Sequence[Sequence[tuple[float, float]]] = (), *,
                 gate: bool = True) -> None:
        self._settings = settings
        self._ignore_polys = [np.asarray(p, np.float64).reshape(-1, 2) for p in ignore]
        for i, poly in enumerate(self._ignore_polys):
            if len(poly) < 3:
                raise ValueError(f"ignore polygon {i} needs at least 3 points, has {len(poly)}")
        self._gate = gate
        self._closed = False
        self._frame_wh: tuple[int, int] | None = None
        self._small_wh = (0, 0)
        self._coarse_wh = (0, 0)
        self._scale = 1.0
        self._scale_xy = (1.0, 1.0)
        self._ignore: _Mask | None = None
        self._coarse_live: _Mask | None = None
        self._open_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close_kernel = self._open_kernel
        self._prev: _U8 | None = None
        self._prev_coarse: _F32 | None = None
        self._change = flow.ChangeTest()
        self._auto: float | None = None
        self._last_mask: _U8 | None = None
        self._still_mask = _frozen(np.zeros((1, 1), np.uint8))
        self.skipped = 0
        """Frames for which the flow was skipped (no group of changed pixels to run it on)."""
        self.analysed = 0
        """Frames for which the flow ran."""

    def reset(self) -> None:
        """Forget the previous frame and the learnt noise levels (after a reconnect or a
        frame-size change the next frame is not a continuation of the last one)."""
        self._prev = None
        self._prev_coarse = None
        self._change.reset()
        self._auto = None
        self._last_mask = None

    @property
    def last_mask(self) -> _U8 | None:
        """(h, w) uint8 at the flow scale, read-only: 255 where the flow magnitude exceeded
        the threshold on the last proposed frame, else 0 (all 0 when nothing changed and the
        flow was skipped); None before the first flow (and after `reset`). The stage
        computes it anyway; the live view only reads it."""
        return self._last_mask

    def close(self) -> None:
        """Release the frames held; `propose` raises afterwards. Safe to call twice."""
        self.reset()
        self._closed = True

    def propose(self, frame: Frame) -> Rois:
        """Moving regions of `frame` relative to the previous frame; the first frame (and the
        first after `reset` or a size change) has no predecessor and gets `Rois.empty()`."""
        if self._closed:
            raise RuntimeError("MotionStage.propose() after close()")
        if frame.wh != self._frame_wh:
            if self._frame_wh is not None:
                log.info("camera %s: frame size changed from %dx%d to %dx%d; motion reset",
                         frame.camera, *self._frame_wh, *frame.wh)
            self._configure(frame.wh)
        small = flow.small_grey(frame.image, self._small_wh)
        prev = self._prev
        if prev is not None and self._ignore is not None:
            np.copyto(small, prev, where=self._ignore)
        coarse = np.asarray(cv2.resize(small.astype(np.float32), self._coarse_wh,
                                       interpolation=cv2.INTER_AREA), np.float32)
        prev_coarse = self._prev_coarse
        self._prev, self._prev_coarse = small, coarse
        if prev is None or prev_coarse is None:
            return Rois.empty()
        changed = self._change.changed(coarse, prev_coarse, self._coarse_live)
        sw, sh = self._small_wh
        regions = flow.flow_regions(changed, self._small_wh) if self._gate else [(0, 0, sw, sh)]
        if not regions:
            self.skipped += 1
            if self._last_mask is not None:
                self._last_mask = self._still_mask
            return Rois.empty()
        self.analysed += 1
        flow_xy, mag = flow.farneback(prev, small, regions)
        return self._rois(mag, flow_xy, self._threshold(mag, regions), changed)

    # --- per frame size -------------------------------------------------------------------

    def _configure(self, wh: tuple[int, int]) -> None:
        """Sizes, scale factors and the ignore mask for frames of `wh`; forgets the past."""
        self.reset()
        w, h = wh
        sw = min(self._settings.scale_width, w)  # never upscale a small source
        sh = max(1, round(h * sw / w))
        tw = min(flow.CHANGE_WIDTH, max(1, sw // 2))  # >= 2x2 averaging: no quantised steps
        th = max(1, round(sh * tw / sw))
        self._frame_wh = wh
        self._small_wh = (sw, sh)
        self._coarse_wh = (tw, th)
        self._scale_xy = (w / sw, h / sh)
        self._scale = (w / sw + h / sh) / 2
        self._still_mask = _frozen(np.zeros((sh, sw), np.uint8))
        close = max(3, (sw // 64) | 1)  # 5 px at 320: bridges the gaps inside one object
        self._close_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
        self._ignore = self._coarse_live = None
        if self._ignore_polys:
            mask = np.zeros((sh, sw), np.uint8)
            sx, sy = self._scale_xy
            pts = [np.round(p / (sx, sy)).astype(np.int32) for p in self._ignore_polys]
            cv2.fillPoly(mask, pts, 1)
            self._ignore = mask.astype(bool)
            # change-frame pixels not wholly inside a zone: the frozen ones differ by exactly
            # 0 and would drag the noise estimate down
            area = cv2.resize(mask.astype(np.float32), (tw, th), interpolation=cv2.INTER_AREA)
            self._coarse_live = np.asarray(area, np.float32) < 0.999

    # --- per frame ------------------------------------------------------------------------

    def _threshold(self, mag: _F32, regions: list[flow.Region]) -> float:
        """Magnitude threshold at the flow scale (px/frame); `regions`: where the flow ran
        (the magnitude is 0 elsewhere)."""
        fixed = self._settings.threshold
        if fixed != "auto":
            return float(fixed) / self._scale
        sample = mag[::2, ::2]
        if self._ignore is not None:
            sample = sample[~self._ignore[::2, ::2]]
        if sample.size == 0:
            return _AUTO_FLOOR if self._auto is None else max(_AUTO_FLOOR, self._auto)
        # sampled pixels inside the regions: an upper bound on the non-zero ones that spares
        # counting them when the regions alone are too small (the usual case)
        inside = sum(((x2 + 1) // 2 - (x1 + 1) // 2) * ((y2 + 1) // 2 - (y1 + 1) // 2)
                     for x1, y1, x2, y2 in regions)
        if 2 * inside < sample.size or 2 * np.count_nonzero(sample) < sample.size:
            noise = 0.0  # flow ran over less than half the frame: median and MAD are 0
        else:
            med = flow.median(sample)
            mad = flow.median(np.abs(sample - np.float32(med)))
            noise = med + _AUTO_K * _MAD_TO_SIGMA * mad
        if self._auto is None:
            self._auto = noise
        else:
            self._auto += _AUTO_ALPHA * (noise - self._auto)
        return max(_AUTO_FLOOR, self._auto)

    def _rois(self, mag: _F32, flow_xy: _F32, threshold: float, changed: _Mask) -> Rois:
        """Boxes from the thresholded magnitude (h, w); `flow_xy` (h, w, 2) is the flow
        (dx, dy), `changed` the coarse-frame change mask. Also sets `last_mask`."""
        s = self._settings
        sw, sh = self._small_wh
        moving = np.asarray(cv2.compare(mag, np.float64(threshold), cv2.CMP_GT),
                            np.uint8)  # 0 / 255
        if self._ignore is not None:
            moving[self._ignore] = 0
        self._last_mask = _frozen(moving)
        mask = np.asarray(cv2.morphologyEx(moving, cv2.MORPH_OPEN, self._open_kernel), np.uint8)
        mask = np.asarray(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close_kernel),
                          np.uint8)
        if self._ignore is not None:  # closing may bridge into an ignore zone
            mask[self._ignore] = 0
        # outer contours: the boxes of the 8-connected components (one nested in another's
        # hole is inside its box and merged anyway), at ~1/15 of connectedComponents' cost
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        rects = [cv2.boundingRect(c) for c in contours]
        if len(rects) > _MAX_COMPONENTS:
            log.debug("%d motion components; keeping the %d largest", len(rects),
                      _MAX_COMPONENTS)
            rects = sorted(rects, key=lambda r: r[2] * r[3], reverse=True)[:_MAX_COMPONENTS]
        min_px = s.min_area * sw * sh
        boxes = [b for b in geometry.merge_touching_rows(
                     [(x, y, x + w, y + h) for x, y, w, h in rects])
                 if _area(b) >= min_px and self._any_changed(b, changed)]
        if not boxes:
            return Rois.empty()
        f = s.pad
        boxes = geometry.merge_touching_rows([
            (min(max(x1 - (x2 - x1) * f, 0.0), sw), min(max(y1 - (y2 - y1) * f, 0.0), sh),
             min(max(x2 + (x2 - x1) * f, 0.0), sw), min(max(y2 + (y2 - y1) * f, 0.0), sh))
            for x1, y1, x2, y2 in boxes])
        boxes = sorted(boxes, key=_area, reverse=True)[:s.max_rois]  # stable, as documented
        return self._measure(boxes, np.asarray(cv2.bitwise_and(moving, mask), np.uint8), mag,
                             flow_xy)

    def _any_changed(self, box: _Box, changed: _Mask) -> bool:
        """Does `box` (flow scale) hold a coarse-frame pixel that changed?"""
        th, tw = changed.shape
        sw, sh = self._small_wh
        kx, ky = tw / sw, th / sh
        x1, y1, x2, y2 = box
        tx1, ty1 = math.floor(x1 * kx), math.floor(y1 * ky)
        tx2, ty2 = max(math.ceil(x2 * kx), tx1 + 1), max(math.ceil(y2 * ky), ty1 + 1)
        return bool(changed[ty1:ty2, tx1:tx2].any())

    def _measure(self, boxes: list[_Box], moving: _U8, mag: _F32, field: _F32) -> Rois:
        """Map boxes (flow scale) to full-frame pixels and measure the flow of the moving
        pixels inside each: the mean over the whole box would shrink with the padding.
        `field` (h, w, 2) is the flow (dx, dy)."""
        w, h = self._frame_wh or (0, 0)
        sx, sy = self._scale_xy
        n = len(boxes)
        xyxy = np.empty((n, 4), np.int32)
        motion = np.zeros(n, np.float32)
        flow_xy = np.zeros((n, 2), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            xyxy[i] = (max(0, math.floor(x1 * sx)), max(0, math.floor(y1 * sy)),
                       min(w, math.ceil(x2 * sx)), min(h, math.ceil(y2 * sy)))
            rows = slice(math.floor(y1), math.ceil(y2))
            cols = slice(math.floor(x1), math.ceil(x2))
            inside = moving[rows, cols]
            if cv2.countNonZero(inside):
                motion[i] = cv2.mean(mag[rows, cols], mask=inside)[0] * self._scale
                mx, my, _, _ = cv2.mean(field[rows, cols], mask=inside)
                flow_xy[i] = (mx * sx, my * sy)
        return Rois(xyxy, motion, flow_xy)


def _area(box: _Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _frozen(a: _U8) -> _U8:
    """`a`, write-protected (it is handed out by reference)."""
    a.setflags(write=False)
    return a
