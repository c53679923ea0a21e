"""MotionStage on synthetic scenes with known ground truth.

The factories draw a static random texture and 1..N textured rectangles or ellipses moving a
few px per frame (bouncing off the frame edges); the ground truth of each frame is the box of
every object. `measure_recall()` is the headline number (a benchmark can import it): the
fraction of ground-truth objects, over all frames after the first, whose box is covered at
least `min_cover` by a single ROI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from streamd import flow
from streamd.frames import Frame
from streamd.motion import MotionSettings, MotionStage, Rois

Box = tuple[int, int, int, int]
Grey = npt.NDArray[np.uint8]

# --- factories ----------------------------------------------------------------------------


def texture(rng: np.random.Generator, wh: tuple[int, int], cell: int = 4, lo: int = 30,
            hi: int = 225) -> Grey:
    """A smooth random texture: uniform noise on a `cell` px grid, bilinearly upscaled."""
    w, h = wh
    gw, gh = w // cell + 2, h // cell + 2
    low = rng.integers(lo, hi, (gh, gw), dtype=np.uint8)
    up = cv2.resize(low, (gw * cell, gh * cell), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(up[:h, :w])


@dataclass
class Mover:
    """A rigid textured patch; `mask` makes it an ellipse or a rectangle."""

    x: float
    y: float
    vx: float
    vy: float
    patch: Grey
    mask: npt.NDArray[np.bool_]

    @property
    def box(self) -> Box:
        x, y = round(self.x), round(self.y)
        h, w = self.mask.shape
        return x, y, x + w, y + h


def mover(rng: np.random.Generator, xy: tuple[float, float], v: tuple[float, float],
          wh: tuple[int, int], shape: str = "rect") -> Mover:
    w, h = wh
    mask = np.ones((h, w), bool)
    if shape == "ellipse":
        yy, xx = np.mgrid[:h, :w]
        mask = ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1
    return Mover(xy[0], xy[1], v[0], v[1], texture(rng, wh, cell=3, lo=0, hi=255), mask)


def render(background: Grey, movers: Sequence[Mover], *, bounce: bool = True,
           noise: float = 0.0, rng: np.random.Generator | None = None) -> Grey:
    """Draw the movers at their positions, then advance them one frame."""
    img = background.copy()
    fh, fw = img.shape
    for m in movers:
        x1, y1, x2, y2 = m.box
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, fw), min(y2, fh)
        if cx1 < cx2 and cy1 < cy2:
            sub = (slice(cy1 - y1, cy2 - y1), slice(cx1 - x1, cx2 - x1))
            img[cy1:cy2, cx1:cx2][m.mask[sub]] = m.patch[sub][m.mask[sub]]
        m.x += m.vx
        m.y += m.vy
        if bounce:
            h, w = m.mask.shape
            if not 0 <= m.x <= fw - w:
                m.vx = -m.vx
                m.x = min(max(m.x, 0), fw - w)
            if not 0 <= m.y <= fh - h:
                m.vy = -m.vy
                m.y = min(max(m.y, 0), fh - h)
    if noise:
        rng = rng or np.random.default_rng(0)
        noisy = img + rng.standard_normal(img.shape, np.float32) * noise
        img = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.asarray(img, np.uint8)


def frame(image: Grey, frame_id: int = 0) -> Frame:
    bgr = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
    return Frame("cam", frame_id, 1_700_000_000.0 + frame_id / 10, bgr)


def random_scene(seed: int, n_objects: int, *, wh: tuple[int, int] = (640, 480),
                 n_frames: int = 12, noise: float = 0.0, speed: tuple[float, float] = (2, 6),
                 size: tuple[int, int] = (40, 90)) -> tuple[list[Frame], list[list[Box]]]:
    """Frames and, per frame, the ground-truth box of every object."""
    rng = np.random.default_rng(seed)
    w, h = wh
    background = texture(rng, wh)
    movers = []
    for i in range(n_objects):
        ow, oh = (int(v) for v in rng.integers(size[0], size[1], 2))
        angle, sp = rng.uniform(0, 2 * np.pi), rng.uniform(*speed)
        movers.append(mover(rng, (rng.uniform(0, w - ow), rng.uniform(0, h - oh)),
                            (sp * np.cos(angle), sp * np.sin(angle)), (ow, oh),
                            ("rect", "ellipse")[i % 2]))
    frames, truth = [], []
    for i in range(n_frames):
        truth.append([m.box for m in movers])
        frames.append(frame(render(background, movers, noise=noise, rng=rng), i))
    return frames, truth


def run(stage: MotionStage, frames: Iterable[Frame]) -> list[Rois]:
    return [stage.propose(f) for f in frames]


def coverage(gt: Box, rois: Rois) -> float:
    """The largest fraction of `gt` that one ROI covers."""
    if not len(rois):
        return 0.0
    x1, y1, x2, y2 = gt
    r = rois.xyxy.astype(np.int64)
    iw = np.clip(np.minimum(r[:, 2], x2) - np.maximum(r[:, 0], x1), 0, None)
    ih = np.clip(np.minimum(r[:, 3], y2) - np.maximum(r[:, 1], y1), 0, None)
    return float((iw * ih).max() / ((x2 - x1) * (y2 - y1)))


def assert_inside(rois: Rois, wh: tuple[int, int]) -> None:
    w, h = wh
    b = rois.xyxy
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)).all(), b
    assert ((b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])).all(), b


def measure_recall(*, seeds: Iterable[int] = range(3), n_objects: Iterable[int] = (1, 2, 3),
                   noise: float = 0.0, threshold: str | float = "auto", n_frames: int = 12,
                   wh: tuple[int, int] = (640, 480), scale_width: int = 320,
                   speed: tuple[float, float] = (2, 6), min_cover: float = 0.7,
                   stage_type: Callable[[MotionSettings], MotionStage] = MotionStage) -> float:
    """Fraction of ground-truth objects covered >= `min_cover` by one ROI, over every frame
    after the first of every scene (seed x object count); also checks boxes stay inside.
    `stage_type` lets a benchmark measure another version of the stage."""
    hits = total = 0
    settings = MotionSettings(scale_width=scale_width, threshold=threshold)
    for seed in seeds:
        for n in n_objects:
            frames, truth = random_scene(seed * 100 + n, n, wh=wh, n_frames=n_frames,
                                         noise=noise, speed=speed)
            stage = stage_type(settings)
            for rois, gts in list(zip(run(stage, frames), truth, strict=True))[1:]:
                assert_inside(rois, wh)
                hits += sum(coverage(gt, rois) >= min_cover for gt in gts)
                total += len(gts)
    return hits / total


def still(seed: int = 0, wh: tuple[int, int] = (320, 240), kind: str = "texture") -> Grey:
    rng = np.random.default_rng(seed)
    if kind == "texture":
        return texture(rng, wh)
    img = np.full(wh[::-1], 128, np.uint8)  # flat walls and sky with a few hard edges
    w, h = wh
    img[h // 5:h // 2, w // 4:w // 2] = 80
    img[h // 2:, 2 * w // 3:] = 200
    return img


# --- Rois ---------------------------------------------------------------------------------


def test_rois_empty() -> None:
    rois = Rois.empty()
    assert len(rois) == 0
    assert rois.xyxy.shape == (0, 4) and rois.xyxy.dtype == np.int32
    assert rois.motion.shape == (0,) and rois.motion.dtype == np.float32
    assert rois.flow_xy.shape == (0, 2) and rois.flow_xy.dtype == np.float32


@pytest.mark.parametrize(("n_xyxy", "n_motion", "n_flow", "ok"), [
    (0, 0, 0, True),
    (2, 2, 2, True),
    (2, 1, 2, False),
    (2, 2, 3, False),
    (0, 1, 0, False),
])
def test_rois_rows_must_agree(n_xyxy: int, n_motion: int, n_flow: int, ok: bool) -> None:
    xyxy = np.zeros((n_xyxy, 4), np.int32)
    motion = np.zeros(n_motion, np.float32)
    flow_xy = np.zeros((n_flow, 2), np.float32)
    if ok:
        assert len(Rois(xyxy, motion, flow_xy)) == n_xyxy
    else:
        with pytest.raises(ValueError, match="rows"):
            Rois(xyxy, motion, flow_xy)


def test_rois_are_read_only() -> None:
    rois = Rois(np.array([[1, 2, 3, 4]], np.int32), np.array([1.0], np.float32),
                np.array([[1.0, 0.0]], np.float32))
    with pytest.raises(ValueError):
        rois.xyxy[0, 0] = 9


# --- from a magnitude field to boxes (the flow itself left out) ----------------------------

Rect = tuple[int, int, int, int]
GAMMA_A: list[Rect] = [(100, 100, 124, 104), (100, 100, 104, 124)]  # a 24 px corner: ⌜
GAMMA_B: list[Rect] = [(110, 120, 134, 124), (130, 110, 134, 124)]  # ⌟, boxes overlap ⌜'s


@pytest.mark.parametrize(("blobs", "min_area", "pad", "expected"), [
    ([], 0.0, 0.0, []),
    ([(40, 30, 80, 70)], 0.0, 0.0, [(80, 60, 160, 140)]),
    ([(40, 30, 80, 70)], 0.0, 0.25, [(60, 40, 180, 160)]),
    ([(10, 10, 12, 12)], 0.0, 0.0, []),                         # a 2x2 speck is opened away
    ([(40, 30, 80, 70), (200, 200, 202, 202)], 0.0, 0.0, [(80, 60, 160, 140)]),
    ([(300, 220, 320, 240)], 0.0, 0.5, [(580, 420, 640, 480)]),  # padded, then clipped
    ([(0, 0, 20, 20)], 0.0, 0.5, [(0, 0, 60, 60)]),
    ([(40, 30, 80, 50), (40, 53, 80, 70)], 0.0, 0.0, [(80, 60, 160, 140)]),  # closed gap
    ([(40, 30, 80, 70), (100, 30, 120, 50)], 0.0, 0.0, [(80, 60, 160, 140), (200, 60, 240, 100)]),
    ([(40, 30, 80, 70), (100, 30, 120, 50)], 0.05, 0.0, []),     # 1600 px < 5 % of 76800
    ([(40, 30, 80, 70), (100, 30, 120, 50)], 0.01, 0.0, [(80, 60, 160, 140)]),
    (GAMMA_A + GAMMA_B, 0.0, 0.0, [(200, 200, 268, 248)]),      # touching boxes merge
    # each corner's box (576, 336 px) is below 1 % of the frame (768 px), their union (816) not
    (GAMMA_A + GAMMA_B, 0.01, 0.0, [(200, 200, 268, 248)]),
])
def test_magnitude_field_to_boxes(blobs: list[Rect], min_area: float, pad: float,
                                  expected: list[Rect]) -> None:
    """Morphology, merging, min_area, padding, clipping and the mapping to full-frame pixels,
    on a hand-made magnitude field at the flow scale (640x480 frame, flow at 320x240)."""
    stage = MotionStage(MotionSettings(scale_width=320, min_area=min_area, pad=pad,
                                       threshold=1.0))
    stage.propose(frame(still(wh=(640, 480))))  # sizes the stage for 640x480
    mag = np.zeros((240, 320), np.float32)
    for x1, y1, x2, y2 in blobs:
        mag[y1:y2, x1:x2] = 2.0
    flow_xy = np.dstack([mag, np.zeros_like(mag)])  # moving right at 2 px/frame
    changed = np.ones((120, 160), bool)
    rois = stage._rois(mag, flow_xy, 0.5, changed)
    assert sorted(map(tuple, rois.xyxy.tolist())) == sorted(expected)
    assert np.allclose(rois.motion, 4.0) and np.allclose(rois.flow_xy, [4.0, 0.0])
    if blobs:  # where nothing changed beyond the noise, flow is noise
        assert len(stage._rois(mag, flow_xy, 0.5, np.zeros_like(changed))) == 0


# --- finding movers -----------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "noise"), [("auto", 0.0), ("auto", 8.0), (1.0, 0.0)])
def test_recall(threshold: str | float, noise: float) -> None:
    recall = measure_recall(threshold=threshold, noise=noise)
    print(f"motion recall (threshold={threshold}, noise sigma={noise}): {recall:.3f}")
    assert recall >= 0.9


def test_last_mask_marks_the_moving_pixels_at_the_flow_scale() -> None:
    rng = np.random.default_rng(59)
    bg = texture(rng, (640, 480))
    m = mover(rng, (300, 200), (4, 0), (60, 60))
    stage = MotionStage(MotionSettings(scale_width=320))
    stage.propose(frame(bg, 0))
    stage.propose(frame(bg, 1))  # nothing changed: no flow yet
    assert stage.last_mask is None
    stage.propose(frame(render(bg, [m]), 2))  # the mover appears: a scene change
    x1, y1, x2, y2 = m.box
    stage.propose(frame(render(bg, [m]), 3))
    mask = stage.last_mask
    assert mask is not None and mask.shape == (240, 320) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}
    assert not mask.flags.writeable
    inside = mask[y1 // 2:y2 // 2, x1 // 2:x2 // 2]
    assert (inside == 255).mean() > 0.5
    assert (mask == 255).sum() < 2 * inside.size  # the object and its halo, not the scene
    stage.propose(frame(bg, 4))
    stage.propose(frame(bg, 5))  # still again: the flow is skipped, nothing moved
    assert stage.last_mask is not None and not stage.last_mask.any()
    stage.reset()
    assert stage.last_mask is None


def test_first_frame_and_frame_after_reset_are_empty() -> None:
    frames, _ = random_scene(1, 2, wh=(320, 240), n_frames=4)
    stage = MotionStage(MotionSettings(scale_width=160))
    assert len(stage.propose(frames[0])) == 0
    assert len(stage.propose(frames[1])) > 0
    stage.reset()
    assert len(stage.propose(frames[2])) == 0
    assert len(stage.propose(frames[3])) > 0


@pytest.mark.parametrize(("v", "start"), [
    ((6, 0), (250, 100)),   # leaves through the right edge
    ((-6, 0), (10, 100)),   # left edge
    ((0, 6), (140, 170)),   # bottom edge
    ((0, -6), (140, 10)),   # top edge
])
def test_boxes_are_clipped_to_the_frame(v: tuple[float, float],
                                        start: tuple[float, float]) -> None:
    rng = np.random.default_rng(3)
    wh = (320, 240)
    bg = texture(rng, wh)
    m = mover(rng, start, v, (60, 60))
    stage = MotionStage(MotionSettings(scale_width=160, pad=0.5))
    found = 0
    for i in range(12):
        rois = stage.propose(frame(render(bg, [m], bounce=False), i))
        assert_inside(rois, wh)
        found += len(rois) > 0
    assert found >= 8  # the object was seen while it left, and the boxes were clipped


@pytest.mark.parametrize(("v", "speed"), [
    ((4, 0), 4.0), ((-4, 0), 4.0), ((0, 4), 4.0), ((0, -4), 4.0), ((3, -3), 4.2),
])
def test_flow_says_where_the_object_goes(v: tuple[float, float], speed: float) -> None:
    rng = np.random.default_rng(5)
    bg = texture(rng, (640, 480))
    m = mover(rng, (290, 210), v, (60, 60))
    stage = MotionStage(MotionSettings())
    rois = run(stage, [frame(render(bg, [m]), i) for i in range(4)])[-1]
    assert len(rois) == 1
    flow = rois.flow_xy[0]
    cos = float(flow @ np.asarray(v)) / (np.linalg.norm(flow) * np.linalg.norm(v))
    assert cos > 0.95
    # Farneback smooths the flow into a halo around the object: the mean underestimates
    assert 0.4 * speed <= rois.motion[0] <= 1.3 * speed


# --- what must not be found ---------------------------------------------------------------


@pytest.mark.parametrize(("kind", "noise"), [
    ("texture", 0.0), ("flat", 0.0),
    ("texture", 3.0), ("texture", 8.0), ("texture", 15.0),
    ("flat", 3.0), ("flat", 8.0), ("flat", 15.0),
])
def test_still_scene_has_no_rois(kind: str, noise: float) -> None:
    """Sensor noise on a still image is not motion, in textured or in flat regions, and a
    still scene mostly skips the flow (the change gate)."""
    image = still(kind=kind)
    rng = np.random.default_rng(7)
    stage = MotionStage(MotionSettings(scale_width=160))
    n = 20
    rois = run(stage, [frame(render(image, [], noise=noise, rng=rng), i) for i in range(n)])
    assert sum(map(len, rois)) == 0
    assert stage.skipped + stage.analysed == n - 1
    if noise == 0:
        assert stage.analysed == 0
    else:
        assert stage.skipped >= (n - 1) // 2


@pytest.mark.parametrize("threshold", [1.0, "auto"])
def test_region_flow_finds_what_whole_frame_flow_finds(threshold: str | float) -> None:
    """Flow over the changed regions only (the default) finds every object that the flow
    over the whole frame on every frame (`gate=False`) finds, slow and noisy ones included,
    and skips the still frames."""
    frames, truth = random_scene(11, 3, n_frames=10, noise=10.0, speed=(0.5, 2))
    still_frames = [frame(render(still(wh=(640, 480)), [], noise=10.0), i)
                    for i in range(10, 16)]
    settings = MotionSettings(threshold=threshold)
    regions, whole = MotionStage(settings), MotionStage(settings, gate=False)
    found = 0
    for i, f in enumerate(frames + still_frames):
        a, b = regions.propose(f), whole.propose(f)
        for gt in truth[i] if i < len(truth) else []:
            if coverage(gt, b) >= 0.7:
                found += 1
                assert coverage(gt, a) >= 0.7, (i, gt)
        if i > len(frames):  # the first still frame is a scene cut
            assert len(a) == len(b) == 0
    assert found >= 15  # of 3 objects x 9 frames: slow and noisy, some are missed by both
    assert regions.skipped >= 4 and whole.skipped == 0


@pytest.mark.parametrize("margin", [40, 4])
def test_ignore_polygon_suppresses_motion_inside_it(margin: int) -> None:
    """An object moving inside the zone is not reported, even when it runs along the
    zone's border (`margin` px inside it), while an object outside still is."""
    rng = np.random.default_rng(13)
    bg = texture(rng, (640, 480))
    zone = [(20.0, 20.0), (300.0, 20.0), (300.0, 240.0), (20.0, 240.0)]
    inside = mover(rng, (80, 240 - margin - 60), (4, 0), (60, 60))  # stays in x < 300
    outside = mover(rng, (450, 300), (-3, 2), (60, 60))
    plain = MotionStage(MotionSettings())
    masked = MotionStage(MotionSettings(pad=0.0, min_area=0.0), ignore=[zone])
    for i in range(10):
        f = frame(render(bg, [inside, outside], bounce=False), i)
        a, b = plain.propose(f), masked.propose(f)
        if i == 0:
            continue
        assert coverage(inside.box, a) > 0.7  # without the zone it is found
        assert coverage(inside.box, b) == 0.0
        assert len(b) == 1 and coverage(outside.box, b) > 0.7


def test_large_ignore_zone_does_not_blind_the_noise_estimate() -> None:
    """A zone covering most of the frame is frozen (no change at all); the noise estimate
    must come from the rest, or noise there would open the gate and pass as motion."""
    rng = np.random.default_rng(53)
    image = still(kind="flat")
    zone = [(0.0, 0.0), (230.0, 0.0), (230.0, 240.0), (0.0, 240.0)]  # 72 % of 320x240
    stage = MotionStage(MotionSettings(scale_width=160), ignore=[zone])
    n = 20
    rois = run(stage, [frame(render(image, [], noise=8.0, rng=rng), i) for i in range(n)])
    assert sum(map(len, rois)) == 0
    assert stage.skipped >= (n - 1) // 2


def test_ignore_polygon_needs_three_points() -> None:
    with pytest.raises(ValueError, match="3 points"):
        MotionStage(MotionSettings(), ignore=[[(0.0, 0.0), (10.0, 10.0)]])


def _grid_scene(n_frames: int = 3) -> list[Frame]:
    """Six movers of different sizes, far apart, wobbling in place."""
    rng = np.random.default_rng(17)
    bg = texture(rng, (640, 480))
    sizes = [24, 32, 40, 48, 56, 64]
    movers = [mover(rng, (40 + (i % 3) * 210, 60 + (i // 3) * 220), (4, 3), (s, s))
              for i, s in enumerate(sizes)]
    return [frame(render(bg, movers, bounce=False), i) for i in range(n_frames)]


@pytest.mark.parametrize("max_rois", [1, 3, 6, 8])
def test_max_rois_keeps_the_largest(max_rois: int) -> None:
    stage = MotionStage(MotionSettings(max_rois=max_rois, min_area=0.0, pad=0.0))
    rois = run(stage, _grid_scene())[-1]
    assert len(rois) == min(max_rois, 6)
    area = (rois.xyxy[:, 2] - rois.xyxy[:, 0]) * (rois.xyxy[:, 3] - rois.xyxy[:, 1])
    assert (np.diff(area) <= 0).all()
    if max_rois == 1:  # the biggest mover is the 64 px one, bottom right
        assert rois.xyxy[0, 0] > 400 and rois.xyxy[0, 1] > 240


@pytest.mark.parametrize(("min_area", "expected"), [(0.0, 2), (0.01, 1), (0.2, 0)])
def test_min_area_drops_small_movers(min_area: float, expected: int) -> None:
    rng = np.random.default_rng(19)
    bg = texture(rng, (640, 480))
    movers = [mover(rng, (100, 100), (3, 2), (12, 12)), mover(rng, (350, 250), (-3, 2), (100, 100))]
    stage = MotionStage(MotionSettings(min_area=min_area))
    rois = run(stage, [frame(render(bg, movers), i) for i in range(3)])[-1]
    assert len(rois) == expected
    if expected == 1:
        assert coverage(movers[1].box, rois) > 0.7


@pytest.mark.parametrize(("speed", "threshold", "found"), [
    (1.0, 0.3, True), (1.0, 5.0, False), (6.0, 4.0, True), (6.0, 20.0, False),
    (3.0, 5.0, False),
])
def test_fixed_threshold_is_px_per_frame_at_full_resolution(speed: float, threshold: float,
                                                            found: bool) -> None:
    rng = np.random.default_rng(23)
    bg = texture(rng, (640, 480))
    m = mover(rng, (250, 200), (speed, 0), (80, 80))
    stage = MotionStage(MotionSettings(threshold=threshold))
    rois = run(stage, [frame(render(bg, [m]), i) for i in range(4)])
    assert all((len(r) > 0) == found for r in rois[1:])


def test_padding_grows_the_box() -> None:
    sizes = []
    for pad in (0.0, 0.5):
        rng = np.random.default_rng(29)
        bg = texture(rng, (640, 480))
        m = mover(rng, (280, 200), (3, 0), (60, 60))
        rois = run(MotionStage(MotionSettings(pad=pad)),
                   [frame(render(bg, [m]), i) for i in range(3)])[-1]
        assert len(rois) == 1
        sizes.append(rois.xyxy[0, 2:] - rois.xyxy[0, :2])
    assert (sizes[1] >= 1.8 * sizes[0]).all()  # 0.5 of the size on each side: 2x


@pytest.mark.parametrize(("gap", "pad", "expected"), [
    (120, 0.0, 2), (120, 0.5, 2),  # far apart: two boxes, padded or not
    (40, 0.0, 2),                  # near, unpadded boxes do not touch
    (40, 0.5, 1),                  # padded boxes overlap: merged into one crop
])
def test_padded_boxes_that_overlap_are_merged(gap: int, pad: float, expected: int) -> None:
    rng = np.random.default_rng(41)
    bg = texture(rng, (640, 480))
    movers = [mover(rng, (150, 200), (0, 3), (60, 80)),
              mover(rng, (210 + gap, 200), (0, -3), (60, 80))]
    rois = run(MotionStage(MotionSettings(pad=pad, min_area=0.0)),
               [frame(render(bg, movers), i) for i in range(3)])[-1]
    assert len(rois) == expected
    assert all(coverage(m.box, rois) > 0.9 for m in movers)


@pytest.mark.parametrize("hole", [0, 6, 10])
def test_one_object_is_one_roi(hole: int) -> None:
    """Morphology and the merge of touching boxes keep an object in one piece, even one
    that the background shows through (a person's legs), and drop noise specks."""
    rng = np.random.default_rng(43)
    bg = texture(rng, (640, 480))
    m = mover(rng, (250, 150), (3, 2), (70, 140))
    m.mask[:, 35 - hole // 2:35 + (hole + 1) // 2] = False
    m.mask[70:70 + hole // 2, :] = False
    stage = MotionStage(MotionSettings(pad=0.0, min_area=0.0, threshold=0.8))
    for rois in run(stage, [frame(render(bg, [m], noise=6.0, rng=rng), i)
                            for i in range(6)])[1:]:
        assert len(rois) == 1
        assert coverage(m.box, rois) > 0.7


# --- the cheaper routes give what the plain ones give -----------------------------------


@pytest.mark.parametrize(("wh", "max_diff"), [
    ((960, 540), 0),    # 3x3 means: a box filter sampled every third pixel, bit for bit
    ((640, 360), 0),    # 2x2 means
    ((1280, 720), 1),   # 2x2 twice: rounds twice
    ((1920, 1080), 1),  # 2x2, then 3x3
    ((400, 300), 0),    # under 2x: INTER_AREA itself
])
def test_small_grey_is_the_block_means(wh: tuple[int, int], max_diff: int) -> None:
    rng = np.random.default_rng(61)
    bgr = rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)
    small_wh = (320, round(wh[1] * 320 / wh[0]))
    expected = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), small_wh,
                          interpolation=cv2.INTER_AREA)
    got = flow.small_grey(bgr, small_wh)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert int(np.abs(got.astype(np.int16) - expected).max()) <= max_diff


@pytest.mark.parametrize("shape", [(1,), (2,), (7, 9), (45, 80)])
def test_median_matches_numpy(shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(67).random((2 * shape[0], *shape[1:]), np.float32)
    strided = values[::2]
    assert flow.median(strided) == pytest.approx(float(np.median(strided)), rel=1e-6)


# --- lifecycle ----------------------------------------------------------------------------


def test_frame_size_change_resets() -> None:
    stage = MotionStage(MotionSettings(scale_width=160), ignore=[[(0, 0), (50, 0), (0, 50)]])
    for wh in [(640, 480), (320, 240), (333, 201), (640, 480)]:
        frames, truth = random_scene(31, 1, wh=wh, n_frames=3, size=(40, 60))
        rois = run(stage, frames)
        assert len(rois[0]) == 0  # a new size has no predecessor
        for r in rois[1:]:
            assert_inside(r, wh)
        assert coverage(truth[2][0], rois[2]) > 0.7


@pytest.mark.parametrize("wh", [(1, 1), (5, 3), (4, 100), (100, 4), (33, 20)])
def test_tiny_frames_do_not_crash(wh: tuple[int, int]) -> None:
    rng = np.random.default_rng(47)
    stage = MotionStage(MotionSettings(), ignore=[[(0, 0), (3, 0), (0, 3)]])
    for i in range(3):
        rois = stage.propose(frame(rng.integers(0, 255, wh[::-1], dtype=np.uint8), i))
        assert_inside(rois, wh)


def test_grey_image_gives_the_same_rois_as_bgr() -> None:
    frames, _ = random_scene(37, 2, wh=(320, 240), n_frames=3)
    grey = [Frame(f.camera, f.frame_id, f.ts, f.image[:, :, 0].copy()) for f in frames]
    settings = MotionSettings(scale_width=160)
    a = run(MotionStage(settings), frames)[-1]
    b = run(MotionStage(settings), grey)[-1]
    assert len(a) > 0
    np.testing.assert_array_equal(a.xyxy, b.xyxy)


def test_close_is_idempotent_and_final() -> None:
    stage = MotionStage(MotionSettings())
    stage.close()
    stage.close()
    with pytest.raises(RuntimeError, match="close"):
        stage.propose(frame(still()))
