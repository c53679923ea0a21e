"""The flow half of the motion stage: the small grey frame, the change test that gates the
flow, and Farneback over the regions it opens.

Kept apart from `streamd.motion` (which turns the flow into boxes) because these are the
per-frame costs that decide what motion costs a camera: the downscale and the change test
run on every frame (~0.6 ms at 960x540), Farneback only over the boxes of the groups of
changed pixels (`flow_regions`; ~1.5 ms on vtest.avi, where they cover 21 % of the frame).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Region = tuple[int, int, int, int]
"""xyxy at the flow scale, exclusive ends."""

# Farneback, tuned for finding regions rather than for accurate vectors: 3 pyramid levels
# reach ~4x the window at the small scale; an 11 px window keeps the halo that flow
# smoothing puts around a mover small while averaging out sensor noise; one iteration is
# enough for a mask (measured: the synthetic-shapes recall is the same as with 2 or 3, at
# 30 % less time); poly_n 5 / sigma 1.1 are OpenCV's recommended pair for small
# neighbourhoods.
_PYR_SCALE = 0.5
_LEVELS = 3
_WINSIZE = 11
_ITERATIONS = 1
_POLY_N = 5
_POLY_SIGMA = 1.1

# Change test, on float32 frames this wide (at most half the flow width, so each pixel
# averages >= 2x2 uint8 pixels and the noise estimate is not broken by quantisation steps).
# INTER_AREA averaging cuts sensor noise by the downscale factor while a moving edge keeps
# contrast x displacement, so the test loses little sensitivity and costs ~0.2 ms. 160
# rather than 80 px: at 80 the averaging also wipes out the fine texture of slow,
# low-contrast movers that the flow still finds (synthetic, sigma-10 noise, textured 1-2
# px/frame movers: recall 0.82 at 80 px, 0.90 at 160 px).
CHANGE_WIDTH = 160
_CHANGE_TESTS = ((1, 24.0), (3, 5.1), (7, 2.3))
"""(window side in change-frame pixels, ratio): a pixel changed if the mean squared
difference over the window centred on it exceeds ratio * sigma^2. Each ratio is the
chi-square quantile (df = window area, divided by it) that gaussian noise exceeds with
probability ~1e-6 per pixel, so a still, noisy scene rarely opens the gate (~10 % of frames
at sigma 8 measured). The single pixel catches small, strong changes (about 5 sigma); the
wider windows catch large, faint ones (about 1.5 sigma over 7x7) that no single pixel
shows."""
_CHANGE_MIN = 1.0
"""Grey levels (rms over the window): below this nothing physical moved, whatever the
noise estimate says (quantisation, identical encoder frames, a perfectly clean source)."""
_CHANGE_ALPHA = 0.1
"""EMA weight of a new frame in the noise sigma."""
_HALF_NORMAL_MEDIAN = 0.6745

_REGION_MIN_CHANGED = 10
"""Changed coarse pixels (8-connected) a group needs for the flow to run over its box: an
object at `min_area` (0.1 % of the frame, ~14 coarse pixels) that moves changes more. On
vtest.avi 5 runs the flow over 22 % more pixels than 10 (more specks, the same people);
20 saves 5 %."""
_REGION_MIN_SIDE = 16
"""Flow-scale pixels: a region is widened to at least this (Farneback's 11 px window and
its pyramid need neighbours; a 2x2 group alone gives no flow worth the name)."""


class ChangeTest:
    """Which coarse pixels changed beyond this camera's noise (see `_CHANGE_TESTS`).

    The noise sigma comes from the median absolute difference, which a mover covering less
    than half the frame does not disturb, smoothed over frames; `reset()` forgets it (a new
    stream has its own noise).
    """

    def __init__(self) -> None:
        self.noise_sigma: float | None = None

    def reset(self) -> None:
        self.noise_sigma = None

    def changed(self, coarse: F32, prev_coarse: F32, live: Mask | None) -> Mask:
        """`live`: coarse pixels outside the ignore zones (None: all), the only ones whose
        difference says something about the noise."""
        diff = np.asarray(cv2.absdiff(coarse, prev_coarse), np.float32)
        sub = diff[::2, ::2]  # a quarter of the pixels: same estimate, half the time
        sample = sub if live is None else sub[live[::2, ::2]]
        if sample.size == 0:  # everything is ignored
            return np.zeros(diff.shape, bool)
        sigma = median(sample) / _HALF_NORMAL_MEDIAN
        if self.noise_sigma is None:
            self.noise_sigma = sigma
        else:
            self.noise_sigma += _CHANGE_ALPHA * (sigma - self.noise_sigma)
        # The frame's own noise when it is higher than the camera's: a stream's key frame
        # is coded afresh, so it differs from the frame before it everywhere by more than
        # the smoothed sigma says; against that sigma the whole frame "changed" and the
        # flow ran over all of it, every GOP, on every camera at once (8 H.264 cameras:
        # capture→MQTT p99 165 ms with no detector at all, 95 ms with this).
        var = max(self.noise_sigma, sigma) ** 2
        sq = diff * diff
        changed = np.zeros(diff.shape, bool)
        for side, ratio in _CHANGE_TESTS:
            energy = sq if side == 1 else np.asarray(
                cv2.boxFilter(sq, -1, (side, side), borderType=cv2.BORDER_REFLECT), np.float32)
            changed |= energy >= max(_CHANGE_MIN ** 2, ratio * var)
        return changed


def small_grey(image: U8, small_wh: tuple[int, int]) -> U8:
    """`image` (h, w[, 1|3|4]; BGR or BGRA) as grey, downscaled to `small_wh` by means over
    blocks (what INTER_AREA does), which cut sensor noise where decimation would alias it.
    The two full-resolution passes (grey, then the block means) are the whole cost."""
    if image.ndim == 2:
        grey = image
    elif image.shape[2] == 1:
        grey = image[:, :, 0]
    else:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        grey = np.asarray(cv2.cvtColor(image, code), np.uint8)
    sw, sh = small_wh
    k = min(grey.shape[1] // sw, grey.shape[0] // sh)
    if k < 2:
        return np.asarray(cv2.resize(grey, small_wh, interpolation=cv2.INTER_AREA), np.uint8)
    if grey.shape[:2] != (k * sh, k * sw):
        # INTER_AREA at a fractional ratio costs ~3x the integer one (768 -> 320: 1.5 ms
        # against 0.6 ms for bilinear to 640, < 1.5x so little aliases, then 2x2 means)
        grey = np.asarray(cv2.resize(grey, (k * sw, k * sh), interpolation=cv2.INTER_LINEAR),
                          np.uint8)
    return _block_means(grey, k)


def _block_means(grey: U8, k: int) -> U8:
    """Means of the k x k blocks of `grey` ((k * h, k * w) -> (h, w)), what INTER_AREA
    gives at an integer ratio, by the cheapest route OpenCV has: its 2x INTER_AREA is
    vectorised and ~20x faster than other ratios (960 -> 480: 0.03 ms, 960 -> 320: 0.48 ms),
    and a 3x3 box filter sampled at every third pixel gives the same 3x3 means bit for bit
    in half the time. Halving first rounds once per step (differences of 1 grey level)."""
    while k % 2 == 0:
        k //= 2
        h, w = grey.shape[:2]
        grey = np.asarray(cv2.resize(grey, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
                          np.uint8)
    if k == 3:
        return np.ascontiguousarray(cv2.blur(grey, (3, 3))[1::3, 1::3])
    if k > 1:
        h, w = grey.shape[:2]
        grey = np.asarray(cv2.resize(grey, (w // k, h // k), interpolation=cv2.INTER_AREA),
                          np.uint8)
    return grey


def flow_regions(changed: Mask, small_wh: tuple[int, int]) -> list[Region]:
    """Boxes (flow scale) the flow runs over: one per 8-connected group of at least
    `_REGION_MIN_CHANGED` changed coarse pixels, smallest first (so where boxes overlap, the
    flow of the larger one, computed with more context, is kept). The 3x3 and 7x7 change
    tests already reach 1-3 coarse pixels past a moving edge, which gives the flow its
    context."""
    _n, _labels, stats, _ = cv2.connectedComponentsWithStats(
        changed.view(np.uint8), connectivity=8, ltype=cv2.CV_16U)
    stats = stats[1:]
    stats = stats[stats[:, cv2.CC_STAT_AREA] >= _REGION_MIN_CHANGED]
    th, tw = changed.shape
    sw, sh = small_wh
    kx, ky = sw / tw, sh / th
    regions = []
    for x, y, w, h, _area in stats.tolist():
        x1, x2 = _span(x * kx, (x + w) * kx, sw)
        y1, y2 = _span(y * ky, (y + h) * ky, sh)
        regions.append((x1, y1, x2, y2))
    regions.sort(key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
    return regions


def farneback(prev: U8, small: U8, regions: list[Region]) -> tuple[F32, F32]:
    """Farneback flow over `regions` (0 elsewhere) -> (flow (h, w, 2) as (dx, dy),
    magnitude (h, w)), flow scale. The magnitude is taken region by region: splitting the
    whole (h, w, 2) field costs more than the regions' own (~0.08 ms at 320x180)."""
    sh, sw = small.shape[:2]
    if regions == [(0, 0, sw, sh)]:
        flow = np.asarray(cv2.calcOpticalFlowFarneback(
            prev, small, None, _PYR_SCALE, _LEVELS,  # type: ignore[call-overload]
            _WINSIZE, _ITERATIONS, _POLY_N, _POLY_SIGMA, 0), np.float32)
        return flow, np.asarray(cv2.magnitude(*cv2.split(flow)), np.float32)
    flow = np.zeros((sh, sw, 2), np.float32)
    mag = np.zeros((sh, sw), np.float32)
    for x1, y1, x2, y2 in regions:
        part = cv2.calcOpticalFlowFarneback(
            prev[y1:y2, x1:x2], small[y1:y2, x1:x2], None,  # type: ignore[call-overload]
            _PYR_SCALE, _LEVELS, _WINSIZE, _ITERATIONS, _POLY_N, _POLY_SIGMA, 0)
        flow[y1:y2, x1:x2] = part
        mag[y1:y2, x1:x2] = cv2.magnitude(*cv2.split(part))
    return flow, mag


def median(values: npt.NDArray[np.float32]) -> float:
    """`np.median` of `values` (any shape and strides), by a partial sort of a flat copy:
    ~6x faster than `np.median` on the strided samples the noise estimates take (3 600
    values: 0.016 against 0.097 ms). `values` must not be empty."""
    flat = np.array(values, np.float32).reshape(-1)
    mid = flat.size // 2
    if flat.size % 2:
        flat.partition(mid)
        return float(flat[mid])
    flat.partition((mid - 1, mid))
    return (float(flat[mid - 1]) + float(flat[mid])) / 2


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """[lo, hi) rounded outwards, widened about its centre to `_REGION_MIN_SIDE`, clipped
    to [0, size)."""
    a, b = math.floor(lo), math.ceil(hi)
    if b - a < _REGION_MIN_SIDE:
        a = (a + b - _REGION_MIN_SIDE) // 2
        b = a + _REGION_MIN_SIDE
    return max(0, a), min(size, b)

