"""The detection schedule on its own: when the detector runs, on what, and what happens in
between — a table per rule, the empty and boundary cases included."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.detect.hog import HOGDetectorSettings
from streamd.detect.schedule import Decision, IntervalSchedule, camera_phase

WH = (640, 480)
NO_ROIS = np.empty((0, 4), np.int32)
SMALL = np.array([[100, 100, 140, 180]], np.int32)
"""One small mover: its crop (80 px square at input 160) covers far less than half."""
HALF = np.array([[0, 0, 640, 240]], np.int32)


def kinds(schedule: IntervalSchedule, rois_per_frame: list[np.ndarray]) -> list[str]:
    """'F' whole frame, 'C' crops, 'c<steps>' carried, '-' nothing (tracks age)."""
    out = []
    for i, rois in enumerate(rois_per_frame):
        d = schedule.decide(i, rois, WH)
        if d.run:
            out.append("F" if d.regions is None else "C")
        elif d.carry_steps is not None:
            out.append(f"c{d.carry_steps:.2f}")
        else:
            out.append("-")
    return out


@pytest.mark.parametrize(("params", "rois", "expected"), [
    # interval 1: the detector runs on every frame with motion, never without
    ({}, [SMALL, NO_ROIS, SMALL], ["C", "-", "C"]),
    ({}, [], []),
    # interval 3: two carried frames, then a run; the counter restarts after each run
    ({"interval": 3}, [SMALL] * 6, ["c0.33", "c0.67", "C", "c0.33", "c0.67", "C"]),
    # due but nothing moved: no run, tracks age, and the interval starts over
    ({"interval": 2}, [SMALL, NO_ROIS, NO_ROIS, SMALL], ["c0.50", "-", "c0.50", "C"]),
    # full frame every 2: motion or not, every other frame goes whole
    ({"full_frame_every": 2}, [NO_ROIS] * 4, ["F", "-", "F", "-"]),
    ({"full_frame_every": 2, "interval": 2}, [SMALL] * 4, ["F", "c0.50", "F", "c0.50"]),
    # crops that would cover half the frame: one whole-frame pass instead
    ({}, [HALF], ["F"]),
    ({"phase": 1, "full_frame_every": 3}, [NO_ROIS] * 3, ["-", "-", "F"]),
    # a frame at most 3 inputs wide goes whole however small the motion (640 px at 320)
    ({"input_size": 320}, [SMALL, NO_ROIS, SMALL], ["F", "-", "F"]),
    ({"input_size": 214}, [SMALL], ["F"]),
    ({"input_size": 213}, [SMALL], ["C"]),
])
def test_decisions(params: dict[str, int], rois: list[np.ndarray], expected: list[str]
                   ) -> None:
    assert kinds(IntervalSchedule(**{"input_size": 160, **params}), rois) == expected


def test_regions_cover_the_rois_inside_the_frame() -> None:
    rois = np.array([[10, 10, 40, 60], [600, 400, 630, 470]], np.int32)
    d = IntervalSchedule(input_size=160, max_crops=2).decide(0, rois, WH)
    assert d.run and d.regions is not None and d.regions.shape == (2, 4)
    assert d.regions.dtype == np.int64
    assert (d.regions[:, :2] >= 0).all() and (d.regions[:, 2] <= WH[0]).all() \
        and (d.regions[:, 3] <= WH[1]).all()
    for roi in rois:  # every ROI lies inside some region
        assert any((r[:2] <= roi[:2]).all() and (r[2:] >= roi[2:]).all() for r in d.regions)


def test_max_crops_merges_instead_of_dropping() -> None:
    rois = np.array([[10, 10, 40, 60], [200, 150, 230, 200]], np.int32)
    d = IntervalSchedule(input_size=160, max_crops=1).decide(0, rois, WH)
    assert d.run and d.regions is not None and len(d.regions) == 1


def test_the_phase_spreads_cameras_over_the_interval() -> None:
    """Cameras started together must not all hit the detector on the same tick."""
    names = [f"cam-{i}" for i in range(8)]
    runs = {n: [i for i, k in enumerate(kinds(IntervalSchedule(
        input_size=160, interval=4, phase=camera_phase(n)), [SMALL] * 8)) if k == "C"]
        for n in names}
    assert all(len(r) == 2 and r[1] - r[0] == 4 for r in runs.values()), runs
    assert len({r[0] for r in runs.values()}) > 1, f"every camera on the same tick: {runs}"
    assert camera_phase("cam-1") == camera_phase("cam-1"), "stable across processes"


def test_for_camera_reads_the_detector_section() -> None:
    det = HOGDetectorSettings(backend="hog", interval=2, full_frame_every=5, max_crops=3)
    s = IntervalSchedule.for_camera(det, "gate", input_size=256)
    assert (s.interval, s.full_frame_every, s.max_crops, s.input_size) == (2, 5, 3, 256)
    assert s.phase == camera_phase("gate")


@pytest.mark.parametrize("params", [{"interval": 0}, {"full_frame_every": -1},
                                    {"max_crops": 0}, {"input_size": 0}])
def test_invalid_parameters_are_refused(params: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        IntervalSchedule(**{"input_size": 320, **params})


def test_decision_defaults_mean_skip() -> None:
    assert Decision(run=False) == Decision(run=False, regions=None, carry_steps=None)
