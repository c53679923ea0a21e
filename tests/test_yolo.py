"""YOLO pre/post-processing on hand-made inputs whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.detect.yolo import (
    COCO80,
    PAD_VALUE,
    Letterbox,
    decode,
    letterbox_batch,
    parse_names,
)

LABELS = ("person", "car", "dog")


def output(rows: list[tuple[float, float, float, float, int, float]], classes: int = 3,
           anchors: int = 8) -> np.ndarray:
    """A raw [1, 4+C, A] output: one anchor per (cx, cy, w, h, class, score) row, the other
    anchors empty (all scores 0)."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[0, :4, a] = cx, cy, w, h
        out[0, 4 + cls, a] = score
    return out


IDENTITY = Letterbox(1.0, (0, 0), (640, 640))


def image(w: int, h: int, bgr: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    return img


@pytest.mark.parametrize(("wh", "size", "scale", "pad"), [
    ((200, 100), 64, 0.32, (0, 16)),
    ((100, 200), 64, 0.32, (16, 0)),
    ((640, 640), 640, 1.0, (0, 0)),
    ((30, 20), 320, 320 / 30, (0, 53)),  # small crops are upscaled
])
def test_letterbox_geometry(wh: tuple[int, int], size: int, scale: float,
                            pad: tuple[int, int]) -> None:
    tensor, (lb,) = letterbox_batch([image(*wh)], size)
    assert tensor.shape == (1, 3, size, size) and tensor.dtype == np.float32
    assert lb.scale == pytest.approx(scale)
    assert lb.pad_xy == pad


def test_letterbox_is_rgb_scaled_and_padded_grey() -> None:
    batch, (lb,) = letterbox_batch([image(64, 32, bgr=(255, 0, 0))], 64)  # blue
    tensor, pad_y = batch[0], lb.pad_xy[1]
    inside = tensor[:, pad_y + 1, 10]
    np.testing.assert_allclose(inside, [0.0, 0.0, 1.0])  # RGB order: blue is last
    np.testing.assert_allclose(tensor[:, 0, 0], [PAD_VALUE / 255] * 3)


def test_letterbox_round_trip_maps_points_back() -> None:
    img = image(300, 120)
    img[40:60, 200:250] = 255  # a white block
    batch, (lb,) = letterbox_batch([img], 160)
    scale, (px, py) = lb.scale, lb.pad_xy
    ys, xs = np.nonzero(batch[0, 0] > 0.9)
    x1, y1 = (xs.min() - px) / scale, (ys.min() - py) / scale
    x2, y2 = (xs.max() + 1 - px) / scale, (ys.max() + 1 - py) / scale
    np.testing.assert_allclose([x1, y1, x2, y2], [200, 40, 250, 60], atol=1 / scale)


def test_letterbox_batch_matches_single_images() -> None:
    imgs = [image(200, 100, (10, 20, 30)), image(50, 90, (200, 100, 0))]
    batch, boxes = letterbox_batch(imgs, 96)
    assert batch.shape == (2, 3, 96, 96)
    for i, img in enumerate(imgs):
        alone, (lb,) = letterbox_batch([img], 96)
        np.testing.assert_array_equal(batch[i], alone[0])
        assert boxes[i] == lb and lb.image_wh == (img.shape[1], img.shape[0])


def test_decode_maps_boxes_to_original_pixels() -> None:
    # A 200x100 image letterboxed into 64: scale 0.32, pad (0, 16).
    lb = Letterbox(0.32, (0, 16), (200, 100))
    out = output([(32.0, 32.0, 16.0, 8.0, 1, 0.9)])
    (dets,) = decode(out, 0.25, 0.5, None, [lb], labels=LABELS)
    np.testing.assert_allclose(dets.xyxy, [[75.0, 37.5, 125.0, 62.5]], rtol=1e-5)
    assert dets.class_id.tolist() == [1]
    assert dets.confidence.tolist() == pytest.approx([0.9])
    assert dets.label(0) == "car"
    assert dets.tracker_id.tolist() == [-1]


def test_decode_clips_to_the_image() -> None:
    lb = Letterbox(1.0, (0, 0), (100, 50))
    (dets,) = decode(output([(5.0, 45.0, 20.0, 20.0, 0, 0.8)]), 0.25, 0.5, None, [lb])
    np.testing.assert_allclose(dets.xyxy, [[0.0, 35.0, 15.0, 50.0]])


def test_decode_suppresses_overlaps_of_one_class_only() -> None:
    out = output([
        (100, 100, 50, 50, 0, 0.9),
        (102, 101, 50, 50, 0, 0.8),  # same object, same class: suppressed
        (101, 100, 50, 50, 1, 0.7),  # same place, other class: kept
        (300, 300, 50, 50, 0, 0.6),  # elsewhere: kept
    ])
    (dets,) = decode(out, 0.25, 0.5, None, [IDENTITY])
    assert dets.class_id.tolist() == [0, 1, 0]  # best first
    assert dets.confidence.tolist() == pytest.approx([0.9, 0.7, 0.6])


def test_decode_keeps_overlaps_below_the_iou_threshold() -> None:
    # Two 40x40 boxes 20 px apart: IoU 1/3.
    out = output([(100, 100, 40, 40, 0, 0.9), (120, 100, 40, 40, 0, 0.8)])
    assert len(decode(out, 0.25, 0.5, None, [IDENTITY])[0]) == 2
    assert len(decode(out, 0.25, 0.3, None, [IDENTITY])[0]) == 1


def test_decode_confidence_is_strictly_above_threshold() -> None:
    out = output([(100, 100, 10, 10, 0, 0.5), (300, 300, 10, 10, 0, 0.51),
                  (500, 500, 10, 10, 0, 0.2)])
    (dets,) = decode(out, 0.5, 0.5, None, [IDENTITY])
    assert dets.confidence.tolist() == pytest.approx([0.51])


def test_decode_uses_each_anchors_best_class() -> None:
    out = output([(100, 100, 10, 10, 0, 0.6)])
    out[0, 4 + 2, 0] = 0.7  # the same anchor scores higher as class 2
    (dets,) = decode(out, 0.25, 0.5, None, [IDENTITY])
    assert dets.class_id.tolist() == [2]


def test_decode_class_filter() -> None:
    out = output([(100, 100, 10, 10, 0, 0.9), (300, 300, 10, 10, 1, 0.9),
                  (500, 500, 10, 10, 2, 0.9)])
    (dets,) = decode(out, 0.25, 0.5, np.array([0, 2]), [IDENTITY])
    assert sorted(dets.class_id.tolist()) == [0, 2]


@pytest.mark.parametrize("out", [
    np.zeros((1, 7, 0), np.float32),  # no anchors at all
    output([]),  # anchors, none above the threshold
])
def test_decode_empty(out: np.ndarray) -> None:
    (dets,) = decode(out, 0.25, 0.5, None, [IDENTITY], labels=LABELS)
    assert len(dets) == 0
    assert dets.xyxy.shape == (0, 4)
    assert dets.labels == LABELS


def test_decode_no_images() -> None:
    assert decode(np.zeros((0, 7, 8), np.float32), 0.25, 0.5, None, []) == []


def test_decode_batch_keeps_images_apart() -> None:
    out = np.concatenate([output([(100, 100, 10, 10, 0, 0.9)]),
                          output([(50, 50, 10, 10, 1, 0.8), (300, 300, 10, 10, 1, 0.8)])])
    lbs = [IDENTITY, Letterbox(0.5, (0, 0), (1280, 1280))]
    first, second = decode(out, 0.25, 0.5, None, lbs)
    assert len(first) == 1 and len(second) == 2
    np.testing.assert_allclose(second.xyxy[second.xyxy[:, 0].argsort()],
                               [[90, 90, 110, 110], [590, 590, 610, 610]])


def test_decode_rejects_an_output_without_classes() -> None:
    with pytest.raises(ValueError, match=r"\[N, 4\+C, A\]"):
        decode(np.zeros((1, 4, 8), np.float32), 0.25, 0.5, None, [IDENTITY])


def test_parse_names_reads_ultralytics_metadata() -> None:
    meta = str(dict(enumerate(COCO80)))
    assert meta.startswith("{0: 'person', 1: 'bicycle'")
    assert parse_names(meta) == list(COCO80)
    assert parse_names("['a', 'b']") == ["a", "b"]


@pytest.mark.parametrize("meta", [
    "{0: 'a', 2: 'b'}",  # a gap
    "{'a': 0}",
    "__import__('os').system('true')",  # never evaluated
    "not python",
    "42",
])
def test_parse_names_rejects(meta: str) -> None:
    with pytest.raises(ValueError, match="names metadata"):
        parse_names(meta)
