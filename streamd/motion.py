"""Motion stage: where in a frame something moves, as boxes the detector crops.

The detector is the expensive stage, so it runs on crops of moving regions rather than on
whole frames. Motion is found with Farneback dense optical flow on a downscaled grey frame:
flow measures displacement, so its magnitude threshold means "moved at least N px/frame",
which is stable across lighting and contrast where a frame difference is not; dense flow
also gives each box a mean velocity (`Rois.flow_xy`) that the describer turns into text.

Per frame (one `MotionStage` per camera, called from one thread):

1. grey, downscale to `scale_width` (aspect kept); ignored pixels are frozen to the previous
   frame's values, so ignore zones produce neither flow nor seams at their border;
2. change gate: if no pixel of an ~80 px wide copy changed by more than the scene's own
   noise (a few grey levels at most), skip the flow and return no ROIs: a still scene costs
   two resizes and a difference, not a Farneback run;
3. Farneback flow -> magnitude -> threshold (fixed, or `auto`: an exponentially smoothed
   median + k * MAD of the magnitude, the noise floor of this camera);
4. morphology (open removes specks, close joins the fragments of one object), connected
   components, merge boxes that touch, drop boxes below `min_area`, pad, clip, merge the
   padded boxes that overlap, keep the `max_rois` largest;
5. boxes are mapped back to full-frame pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from streamd.config import MotionSettings
from streamd.frames import Frame

log = logging.getLogger(__name__)

BoxArray = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_Mask = npt.NDArray[np.bool_]

# Farneback, tuned for finding regions rather than for accurate vectors: 3 pyramid levels
# at 320 px reach ~25 px/frame of full-resolution motion; a 13 px window at the small scale
# is robust to sensor noise; 3 iterations are enough for a mask; poly_n 5 / sigma 1.1 are
# OpenCV's recommended pair for small neighbourhoods.
_PYR_SCALE = 0.5
_LEVELS = 3
_WINSIZE = 13
_ITERATIONS = 3
_POLY_N = 5
_POLY_SIGMA = 1.1

# Change gate, on float32 frames about this wide (INTER_AREA averages ~10x10 full pixels
# into one, which cuts sensor noise tenfold while a moving edge keeps its displacement).
_GATE_WIDTH = 80
_GATE_K = 5.0
"""The gate opens when a pixel changed by more than this many robust sigmas of the
difference image: the max of ~5 000 noise pixels stays below ~4.5 sigma."""
_GATE_MIN = 1.0
"""Grey levels: below this nothing physical moved (quantisation, identical encoder frames)."""
_GATE_MAX = 4.0
"""Grey levels: however noisy the scene, a change this large runs the flow, so the gate can
never hide a mover that Farneback would see; noisy scenes are then the auto threshold's job."""
_GATE_ALPHA = 0.1

# Auto threshold.
_AUTO_K = 5.0
"""Robust sigmas (1.4826 * MAD) above the median magnitude that count as motion."""
_AUTO_FLOOR = 0.3
"""px/frame at the flow scale: Farneback's sub-pixel jitter on a clean, textured still
image stays below it, so a clean scene cannot drive the threshold to zero."""
_AUTO_ALPHA = 0.1
"""EMA weight of a new frame: the floor follows a scene over ~10 analysed frames, while one
frame dominated by a large mover barely moves it."""

_MAX_COMPONENTS = 256
"""Largest connected components considered; the box merge is O(N^2) per pass."""
_MAD_TO_SIGMA = 1.4826
_HALF_NORMAL_MEDIAN = 0.6745


def _readonly(a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


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
        object.__setattr__(self, "xyxy", _readonly(xyxy))
        object.__setattr__(self, "motion", _readonly(motion))
        object.__setattr__(self, "flow_xy", _readonly(flow_xy))

    @classmethod
    def empty(cls) -> Rois:
        return cls(np.empty((0, 4), np.int32), np.empty(0, np.float32),
                   np.empty((0, 2), np.float32))

    def __len__(self) -> int:
        return len(self.xyxy)


def _merge_boxes(boxes: _F64) -> _F64:
    """Replace every group of boxes that overlap or touch by their union, until none do.

    `boxes` (N, 4) float64 xyxy with exclusive ends, so boxes sharing an edge touch. A union
    can reach a box neither member touched, hence the outer loop.
    """
    while len(boxes) > 1:
        n = len(boxes)
        x1, y1, x2, y2 = boxes.T
        touch = ((x1[:, None] <= x2[None, :]) & (x1[None, :] <= x2[:, None])
                 & (y1[:, None] <= y2[None, :]) & (y1[None, :] <= y2[:, None]))
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


class MotionStage:
    """One per camera; stateful (keeps the previous small grey frame).

    `ignore` holds polygons in full-frame pixels where motion is ignored (a flag, a road
    outside the fence); they are rasterised once per frame size. Not thread-safe: one
    analysis thread calls `propose`. `gate=False` turns the change gate off, for measuring
    what it saves and checking that it hides nothing.
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
        self._tiny_wh = (0, 0)
        self._scale = 1.0
        self._scale_xy = (1.0, 1.0)
        self._ignore: _Mask | None = None
        self._open_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close_kernel = self._open_kernel
        self._prev: _U8 | None = None
        self._prev_tiny: npt.NDArray[np.float32] | None = None
        self._gate_sigma: float | None = None
        self._auto: float | None = None
        self._threshold_small: float | None = None
        self.skipped = 0
        """Frames for which the change gate skipped the flow (nothing changed)."""
        self.analysed = 0
        """Frames for which the flow ran."""

    @property
    def threshold_px(self) -> float | None:
        """Magnitude threshold last applied, px/frame at full resolution (None before the
        first flow); with `threshold: auto` this is the learnt noise floor of the scene."""
        if self._threshold_small is None:
            return None
        return self._threshold_small * self._scale

    def reset(self) -> None:
        """Forget the previous frame and the learnt noise levels (after a reconnect or a
        frame-size change the next frame is not a continuation of the last one)."""
        self._prev = None
        self._prev_tiny = None
        self._gate_sigma = None
        self._auto = None
        self._threshold_small = None

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
        small = self._small_grey(frame.image)
        prev = self._prev
        if prev is not None and self._ignore is not None:
            np.copyto(small, prev, where=self._ignore)
        tiny = np.asarray(cv2.resize(small.astype(np.float32), self._tiny_wh,
                                     interpolation=cv2.INTER_AREA), np.float32)
        prev_tiny = self._prev_tiny
        self._prev, self._prev_tiny = small, tiny
        if prev is None or prev_tiny is None:
            return Rois.empty()
        if self._gate and not self._changed(prev_tiny, tiny):
            self.skipped += 1
            return Rois.empty()
        self.analysed += 1
        flow = cv2.calcOpticalFlowFarneback(
            prev, small, np.empty((*prev.shape, 2), np.float32), _PYR_SCALE, _LEVELS,
            _WINSIZE, _ITERATIONS, _POLY_N, _POLY_SIGMA, 0)
        fx, fy = (np.asarray(c, np.float32) for c in cv2.split(flow))
        mag = np.asarray(cv2.magnitude(fx, fy), np.float32)
        threshold = self._threshold(mag)
        self._threshold_small = threshold
        return self._rois(mag, fx, fy, threshold)

    # --- per frame size -------------------------------------------------------------------

    def _configure(self, wh: tuple[int, int]) -> None:
        """Sizes, scale factors and the ignore mask for frames of `wh`; forgets the past."""
        self.reset()
        w, h = wh
        sw = min(self._settings.scale_width, w)  # never upscale a small source
        sh = max(1, round(h * sw / w))
        tw = min(_GATE_WIDTH, sw)
        th = max(1, round(sh * tw / sw))
        self._frame_wh = wh
        self._small_wh = (sw, sh)
        self._tiny_wh = (tw, th)
        self._scale_xy = (w / sw, h / sh)
        self._scale = (w / sw + h / sh) / 2
        close = max(3, (sw // 64) | 1)  # ~5 px at 320: bridges the gaps inside one object
        self._close_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
        self._ignore = None
        if self._ignore_polys:
            mask = np.zeros((sh, sw), np.uint8)
            sx, sy = self._scale_xy
            pts = [np.round(p / (sx, sy)).astype(np.int32) for p in self._ignore_polys]
            cv2.fillPoly(mask, pts, 1)
            self._ignore = mask.astype(bool)

    def _small_grey(self, image: npt.NDArray[np.uint8]) -> _U8:
        if image.ndim == 2:
            grey = image
        elif image.shape[2] == 1:
            grey = image[:, :, 0]
        else:
            code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            grey = np.asarray(cv2.cvtColor(image, code), np.uint8)
        return np.asarray(cv2.resize(grey, self._small_wh, interpolation=cv2.INTER_AREA),
                          np.uint8)

    # --- per frame ------------------------------------------------------------------------

    def _changed(self, prev_tiny: npt.NDArray[np.float32],
                 tiny: npt.NDArray[np.float32]) -> bool:
        """The change gate: did any pixel of the tiny frame change beyond the noise?

        The noise is the median absolute difference (robust to a mover covering less than
        half the frame), smoothed over frames; the level is capped at `_GATE_MAX` grey
        levels so a noisy camera cannot make the gate blind.
        """
        diff = cv2.absdiff(tiny, prev_tiny)
        sigma = float(np.median(diff)) / _HALF_NORMAL_MEDIAN
        if self._gate_sigma is None:
            self._gate_sigma = sigma
        else:
            self._gate_sigma += _GATE_ALPHA * (sigma - self._gate_sigma)
        level = min(_GATE_MAX, max(_GATE_MIN, _GATE_K * self._gate_sigma))
        return float(diff.max()) >= level

    def _threshold(self, mag: npt.NDArray[np.float32]) -> float:
        """Magnitude threshold at the flow scale (px/frame)."""
        fixed = self._settings.threshold
        if fixed != "auto":
            return float(fixed) / self._scale
        sample = mag[::2, ::2]
        if self._ignore is not None:
            sample = sample[~self._ignore[::2, ::2]]
        if sample.size == 0:
            return _AUTO_FLOOR if self._auto is None else self._auto
        med = float(np.median(sample))
        mad = float(np.median(np.abs(sample - med)))
        noise = med + _AUTO_K * _MAD_TO_SIGMA * mad
        if self._auto is None:
            self._auto = noise
        else:
            self._auto += _AUTO_ALPHA * (noise - self._auto)
        return max(_AUTO_FLOOR, self._auto)

    def _rois(self, mag: npt.NDArray[np.float32], fx: npt.NDArray[np.float32],
              fy: npt.NDArray[np.float32], threshold: float) -> Rois:
        s = self._settings
        sw, sh = self._small_wh
        mask = (mag > threshold).astype(np.uint8)
        if self._ignore is not None:
            mask[self._ignore] = 0
        mask = np.asarray(cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open_kernel), np.uint8)
        mask = np.asarray(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close_kernel),
                          np.uint8)
        if self._ignore is not None:  # closing may bridge into an ignore zone
            mask[self._ignore] = 0
        n, _labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n <= 1:
            return Rois.empty()
        stats = stats[1:]
        if len(stats) > _MAX_COMPONENTS:
            log.debug("%d motion components; keeping the %d largest", len(stats),
                      _MAX_COMPONENTS)
            order = np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")
            stats = stats[order[:_MAX_COMPONENTS]]
        x = stats[:, cv2.CC_STAT_LEFT].astype(np.float64)
        y = stats[:, cv2.CC_STAT_TOP].astype(np.float64)
        boxes = np.stack([x, y, x + stats[:, cv2.CC_STAT_WIDTH],
                          y + stats[:, cv2.CC_STAT_HEIGHT]], axis=1)
        boxes = _merge_boxes(boxes)
        wh = boxes[:, 2:] - boxes[:, :2]
        boxes = boxes[wh[:, 0] * wh[:, 1] >= s.min_area * sw * sh]
        if not len(boxes):
            return Rois.empty()
        wh = boxes[:, 2:] - boxes[:, :2]
        boxes = boxes + np.hstack([-wh, wh]) * s.pad
        boxes = np.clip(boxes, 0, [sw, sh, sw, sh])
        boxes = _merge_boxes(boxes)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes[np.argsort(-area, kind="stable")[:s.max_rois]]
        return self._measure(boxes, mask, mag, fx, fy)

    def _measure(self, boxes: _F64, mask: _U8, mag: npt.NDArray[np.float32],
                 fx: npt.NDArray[np.float32], fy: npt.NDArray[np.float32]) -> Rois:
        """Map boxes (flow scale) to full-frame pixels and measure the flow of the moving
        pixels inside each: the mean over the whole box would shrink with the padding."""
        w, h = self._frame_wh or (0, 0)
        sx, sy = self._scale_xy
        n = len(boxes)
        xyxy = np.empty((n, 4), np.int32)
        motion = np.zeros(n, np.float32)
        flow_xy = np.zeros((n, 2), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            ix1, iy1 = math.floor(x1), math.floor(y1)
            ix2, iy2 = math.ceil(x2), math.ceil(y2)
            xyxy[i] = (max(0, math.floor(x1 * sx)), max(0, math.floor(y1 * sy)),
                       min(w, math.ceil(x2 * sx)), min(h, math.ceil(y2 * sy)))
            moving = mask[iy1:iy2, ix1:ix2].astype(bool)
            if moving.any():
                motion[i] = float(mag[iy1:iy2, ix1:ix2][moving].mean()) * self._scale
                flow_xy[i] = (float(fx[iy1:iy2, ix1:ix2][moving].mean()) * sx,
                              float(fy[iy1:iy2, ix1:ix2][moving].mean()) * sy)
        return Rois(xyxy, motion, flow_xy)
