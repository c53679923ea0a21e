"""Box geometry: every function against a table of hand-computed cases, the empty input
(no motion, no detections) first."""

from __future__ import annotations

import numpy as np
import pytest

from streamd import geometry

Rows = list[list[float]]
E: Rows = []
"""No boxes."""
SQ = [0.0, 0.0, 10.0, 10.0]


def rows(a: object) -> Rows:
    return np.asarray(a, np.float64).reshape(-1, 4).tolist()


@pytest.mark.parametrize(("boxes", "expected"), [
    (E, []),
    ([SQ], [100.0]),
    ([[0, 0, 4, 2], [5, 5, 5, 9], [3, 3, 1, 1]], [8.0, 0.0, 0.0]),  # degenerate, inverted
])
def test_area(boxes: Rows, expected: list[float]) -> None:
    assert geometry.area(boxes).tolist() == expected


@pytest.mark.parametrize(("a", "b", "inter", "iou", "overlap"), [
    (E, E, np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0))),
    (E, [SQ], np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 1))),
    ([SQ], E, np.zeros((1, 0)), np.zeros((1, 0)), np.zeros((1, 0))),
    ([SQ], [SQ], [[100]], [[1.0]], [[1.0]]),
    ([SQ], [[5, 0, 15, 10]], [[50]], [[50 / 150]], [[0.5]]),
    ([SQ], [[10, 0, 20, 10]], [[0]], [[0.0]], [[0.0]]),  # touching is not overlapping
    ([SQ], [[2, 2, 4, 4]], [[4]], [[0.04]], [[1.0]]),  # contained: overlap 1, IoU small
    ([[0, 0, 0, 0]], [[0, 0, 0, 0]], [[0]], [[0.0]], [[0.0]]),  # no area, no overlap
    ([SQ, [20, 20, 30, 30]], [[5, 5, 25, 25]], [[25], [25]], [[25 / 475], [25 / 475]],
     [[0.25], [0.25]]),
])
def test_pairwise(a: Rows, b: Rows, inter: object, iou: object, overlap: object) -> None:
    np.testing.assert_allclose(geometry.intersection(a, b), np.asarray(inter, np.float64))
    np.testing.assert_allclose(geometry.iou(a, b), np.asarray(iou, np.float64))
    np.testing.assert_allclose(geometry.overlap(a, b), np.asarray(overlap, np.float64))


@pytest.mark.parametrize(("box", "boxes", "expected"), [
    (SQ, E, None),
    (SQ, [[10, 0, 20, 10]], None),  # touching only
    (SQ, [[8, 8, 20, 20], [0, 0, 5, 5], [4, 0, 9, 10]], 2),  # 4, 25, 50: the largest share
    (SQ, [[0, 0, 5, 5], [5, 5, 10, 10]], 0),  # a tie: the first
])
def test_most_overlapping(box: list[float], boxes: Rows, expected: int | None) -> None:
    assert geometry.most_overlapping(box, boxes) == expected


@pytest.mark.parametrize(("boxes", "scores", "classes", "kept"), [
    (E, [], None, []),
    ([SQ, SQ, [0, 0, 0, 0]], [0.0, -1.0, 0.5], None, [2, 0]),  # any score sign
    ([SQ, [1, 0, 11, 10]], [0.5, 0.9], None, [1]),  # IoU 0.82: the better one stays
    ([SQ, [1, 0, 11, 10]], [0.5, 0.9], [0, 1], [1, 0]),  # other class: both stay
    ([SQ, [5, 0, 15, 10]], [0.9, 0.5], None, [0, 1]),  # IoU 0.33 < 0.5: both stay
])
def test_nms(boxes: Rows, scores: list[float], classes: list[int] | None,
             kept: list[int]) -> None:
    assert geometry.nms(boxes, scores, 0.5, classes).tolist() == kept


@pytest.mark.parametrize(("boxes", "fraction", "square", "expected"), [
    (E, 0.5, False, E),
    ([[100, 100, 120, 140]], 0.5, False, [[90, 80, 130, 160]]),
    ([[100, 100, 120, 140]], 0.0, True, [[90, 100, 130, 140]]),
    ([[100, 100, 120, 140]], 0.5, True, [[70, 80, 150, 160]]),
    ([[0, 0, 10, 10]], 1.0, False, [[-10, -10, 20, 20]]),  # not clipped
    ([[5, 5, 5, 5]], 1.0, False, [[5, 5, 5, 5]]),  # no size, nothing to grow by
])
def test_pad(boxes: Rows, fraction: float, square: bool, expected: Rows) -> None:
    assert rows(geometry.pad(boxes, fraction, square)) == rows(expected)


@pytest.mark.parametrize(("boxes", "expected"), [
    (E, E),
    ([[-10, -10, 20, 20]], [[0, 0, 20, 20]]),
    ([[50, 10, 200, 120]], [[50, 10, 100, 80]]),
    ([[150, 90, 200, 120]], [[100, 80, 100, 80]]),  # outside: empty
])
def test_clip(boxes: Rows, expected: Rows) -> None:
    assert rows(geometry.clip(boxes, (100, 80))) == rows(expected)


@pytest.mark.parametrize(("a", "b", "expected"), [
    (E, E, E),
    ([SQ], [[20, 5, 30, 8]], [[0, 0, 30, 10]]),
    ([SQ, [5, 5, 6, 6]], [[2, 2, 3, 3], [0, 9, 1, 12]], [SQ, [0, 5, 6, 12]]),
])
def test_union(a: Rows, b: Rows, expected: Rows) -> None:
    assert rows(geometry.union(a, b)) == rows(expected)


@pytest.mark.parametrize(("boxes", "expected"), [
    (E, E),
    ([SQ], [SQ]),
    ([SQ, [20, 20, 30, 30]], [SQ, [20, 20, 30, 30]]),
    ([SQ, [10, 0, 20, 10]], [[0, 0, 20, 10]]),  # touching edges
    ([SQ, [5, 5, 15, 15]], [[0, 0, 15, 15]]),  # overlapping
    ([SQ, [10, 10, 20, 20], [20, 20, 30, 30]], [[0, 0, 30, 30]]),  # a chain
    # the union of the first two reaches the third, which touched neither
    ([[0, 0, 10, 2], [8, 0, 10, 10], [0, 9, 3, 12]], [[0, 0, 10, 12]]),
])
def test_merge_touching(boxes: Rows, expected: Rows) -> None:
    assert sorted(rows(geometry.merge_touching(boxes))) == sorted(rows(expected))


@pytest.mark.parametrize("n", [0, 1, 2, 5, 12, 40])  # 40: past ROWS_MAX, numpy's turn
def test_merge_touching_in_plain_python_matches_numpy(n: int) -> None:
    """Boxes on a coarse grid, so that edges and corners often touch exactly."""
    rng = np.random.default_rng(n)
    for _ in range(50):
        xy = rng.integers(0, 30, (n, 2)) * 4
        wh = rng.integers(1, 6, (n, 2)) * 4
        boxes = [(float(x), float(y), float(x + w), float(y + h))
                 for (x, y), (w, h) in zip(xy, wh, strict=True)]
        expected = geometry._merge_touching_arrays(geometry.as_boxes(boxes)).tolist()
        assert [list(b) for b in geometry.merge_touching_rows(boxes)] == expected
        assert geometry.merge_touching(boxes).tolist() == expected


def test_inputs_are_not_modified() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float64)
    before = boxes.copy()
    geometry.pad(boxes, 1.0, square=True)
    geometry.clip(boxes, (8, 8))
    geometry.merge_touching(boxes)
    geometry.union(boxes, boxes[::-1])
    np.testing.assert_array_equal(boxes, before)


@pytest.mark.parametrize(("scores", "minimum", "expected"), [
    (np.empty((0, 0)), 0.5, []),
    (np.array([[0.4]]), 0.5, []),
    (np.array([[0.5]]), 0.5, [(0, 0)]),  # at the threshold counts
    # the best pair first, then the best of what is left: not (0,0)+(1,1) = 1.5
    (np.array([[0.9, 0.95], [0.6, 0.0]]), 0.5, [(0, 1), (1, 0)]),
    (np.array([[0.9, 0.95], [0.0, 0.9]]), 0.5, [(0, 1)]),  # row 1's column is taken
    (np.array([[0.7, 0.7], [0.7, 0.7]]), 0.5, [(0, 0), (1, 1)]),  # ties: row-major
])
def test_greedy_pairs(scores: np.ndarray, minimum: float, expected: list[tuple[int, int]]
                      ) -> None:
    assert geometry.greedy_pairs(scores.astype(np.float64), minimum) == expected
