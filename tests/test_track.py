"""The per-camera IoU tracker: ids that stay with their objects."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.detections import Detections
from streamd.track import Tracker, TrackerSettings

WH = (1920, 1080)


def dets(*boxes: tuple[float, float, float, float], classes: list[int] | None = None
         ) -> Detections:
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(n, 0.9),
                      np.array(classes if classes is not None else [0] * n),
                      labels=("person", "car"))


def box(x: float, y: float, w: float = 40, h: float = 80) -> tuple[float, float, float, float]:
    return (x, y, x + w, y + h)


def test_ids_are_stable_for_moving_boxes() -> None:
    tracker = Tracker()
    seen = [tracker.update(dets(box(10 + 8 * t, 50), box(400, 50 + 5 * t)))
            for t in range(20)]
    assert all(s.tracker_id.tolist() == [1, 2] for s in seen)


@pytest.mark.parametrize(("iou", "same_id"), [(0.3, True), (0.7, False)])
def test_iou_setting_decides_what_continues_a_track(iou: float, same_id: bool) -> None:
    """A jump of 20 of 40 px overlaps the old box with IoU 1/3: enough at 0.3, not at 0.7."""
    tracker = Tracker(TrackerSettings(iou=iou))
    tracker.update(dets(box(100, 50)))
    assert (tracker.update(dets(box(120, 50))).tracker_id.tolist() == [1]) is same_id


def test_rows_keep_their_order_and_values() -> None:
    tracker = Tracker()
    tracker.update(dets(box(0, 0), box(300, 0)))
    out = tracker.update(dets(box(302, 0), box(2, 0)))  # listed the other way round
    assert out.tracker_id.tolist() == [2, 1]
    np.testing.assert_array_equal(out.xyxy, dets(box(302, 0), box(2, 0)).xyxy)
    assert out.labels == ("person", "car")


def test_a_new_object_gets_a_new_id() -> None:
    tracker = Tracker()
    tracker.update(dets(box(10, 10)))
    out = tracker.update(dets(box(12, 10), box(300, 300)))
    assert out.tracker_id.tolist() == [1, 2]


def test_ids_are_class_consistent() -> None:
    tracker = Tracker()
    tracker.update(dets(box(10, 10), classes=[0]))
    out = tracker.update(dets(box(10, 10), classes=[1]))  # same place, other class
    assert out.tracker_id.tolist() == [2]


@pytest.mark.parametrize(("gap", "same_id"), [(2, True), (3, False)])
def test_ids_survive_max_missed_frames_then_retire(gap: int, same_id: bool) -> None:
    tracker = Tracker(TrackerSettings(max_missed=2))
    assert tracker.update(dets(box(10, 10))).tracker_id.tolist() == [1]
    for _ in range(gap):
        assert len(tracker.update(Detections.empty())) == 0
    again = tracker.update(dets(box(10, 10))).tracker_id.tolist()
    assert again == ([1] if same_id else [2])  # retired ids are never reused


def test_empty_input() -> None:
    tracker = Tracker()
    out = tracker.update(Detections.empty())
    assert len(out) == 0 and out.tracker_id.shape == (0,)
    assert len(tracker.carry(1.0, WH)) == 0


def test_two_crossing_objects_keep_their_ids() -> None:
    tracker = Tracker()
    # One walks right, one walks left along the same line and they pass each other: right
    # after, each is nearer the other's last box than its own.
    for t in range(30):
        a, b = box(7 * t, 100), box(200 - 7 * t, 100)
        out = tracker.update(dets(a, b))
        assert out.tracker_id.tolist() == [1, 2], t


def test_missed_object_is_found_where_it_moved_to() -> None:
    tracker = Tracker(TrackerSettings(max_missed=5))
    for t in range(5):
        tracker.update(dets(box(20 * t, 0)))
    tracker.update(Detections.empty())
    tracker.update(Detections.empty())
    # Three steps on (t = 7) at 20 px/frame: the box a plain IoU match would have lost.
    assert tracker.update(dets(box(140, 0))).tracker_id.tolist() == [1]


def test_carry_moves_boxes_along_their_velocity_without_ageing() -> None:

    tr = Tracker()
    for x in (0.0, 10.0):  # one object moving +10 px per update
        out = tr.update(Detections(np.array([[x, 0, x + 20, 40]]), np.array([0.9]),
                                   np.array([0]), labels=("person",)))
    carried = tr.carry(0.5, WH)
    assert carried.tracker_id.tolist() == out.tracker_id.tolist()
    np.testing.assert_allclose(carried.xyxy[0], [15, 0, 35, 40])
    assert carried.labels == ("person",) and carried.confidence[0] == pytest.approx(0.9)
    again = tr.update(Detections(np.array([[20.0, 0, 40, 40]]), np.array([0.8]),
                                 np.array([0])))
    assert again.tracker_id.tolist() == out.tracker_id.tolist()  # carry did not age it


@pytest.mark.parametrize(("steps", "expected"), [
    (0.0, [[600, 10, 640, 50]]),
    (1.0, [[620, 10, 640, 50]]),  # cut at the right edge
    (3.0, []),  # left the frame: not published
])
def test_carry_stays_inside_the_frame(steps: float, expected: list[list[float]]) -> None:
    tr = Tracker()
    for x in (580.0, 600.0):  # moving right at 20 px per update, 40 px from the edge
        tr.update(Detections(np.array([[x, 10, x + 40, 50]]), np.array([0.9]),
                             np.array([0])))
    carried = tr.carry(steps, (640, 480))
    np.testing.assert_allclose(carried.xyxy.reshape(-1, 4), np.reshape(expected, (-1, 4)))


def test_carry_with_no_tracks_is_empty() -> None:
    assert len(Tracker().carry(1.0, WH)) == 0


def test_track_count_is_capped() -> None:

    tr = Tracker(max_tracks=10)
    rng = np.random.default_rng(0)
    for _ in range(5):  # 50 unrelated boxes a frame: a noisy model
        xy = rng.uniform(0, 1000, (50, 2))
        tr.update(Detections(np.hstack([xy, xy + 5]), np.full(50, 0.5), np.zeros(50)))
    assert len(tr.carry(0.0, (2000, 2000))) == 10  # the 10 seen last (none of them missed)
