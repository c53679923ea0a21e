"""One camera's pipeline in-process: a reconnect restarts motion and tracking, state shared
between threads loses nothing, and the live view sees each published frame.

The stages are real (MotionStage, Tracker, the HOG detector behind DetectorService, the
Publisher with its outbox); only the network side of the publisher is the in-process fake
client of test_publisher.py, and the frames are handed to `analyse`/`finish` directly so a
test controls which stream each frame belongs to.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from streamd.capture import CameraSettings
from streamd.contract import Kind
from streamd.counters import StageTimes
from streamd.detect import DetectorService
from streamd.detect.hog import HOGDetector, HOGDetectorSettings
from streamd.detect.schedule import Decision, IntervalSchedule, TrackSummary
from streamd.detections import Detections
from streamd.frames import Frame, FrameSlot
from streamd.motion import MotionSettings, Rois
from streamd.pipeline import CameraPipeline, Stages
from streamd.publish import Publisher
from streamd.snapshot import SnapshotSettings
from streamd.state import StateStore
from streamd.track import Tracker, TrackerSettings
from tests.helpers.video import render_moving_shapes
from tests.test_publisher import FakeClient, settings

CAMERA = CameraSettings(name="cam", url="rtsp://127.0.0.1/x")


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[tuple[Publisher, list[dict[str, Any]]]]:
    pub = Publisher(settings(tmp_path), None, StateStore(tmp_path), client_factory=FakeClient)
    seen: list[dict[str, Any]] = []
    pub.add_listener(lambda c, k, p: seen.append(dict(p)) if k is Kind.DETECTIONS else None)
    yield pub.start(), seen
    pub.stop(flush_timeout_s=0.1)


def stages(pub: Publisher, **kw: Any) -> Stages:
    base: dict[str, Any] = {
        "publisher": pub, "detector": None, "describer": None, "motion": MotionSettings(),
        "snapshots": SnapshotSettings(), "make_tracker": Tracker, "publish_empty": True,
        "make_schedule": lambda cam: IntervalSchedule(input_size=320)}
    return Stages(**{**base, **kw})


def frames(n: int, stream: int, start: int = 1) -> list[Frame]:
    images, _ = render_moving_shapes(frames=n + start, wh=(320, 240))
    return [Frame("cam", i, 1e9 + i, images[i], stream=stream) for i in range(start, start + n)]


def test_a_new_stream_restarts_motion(
        publisher: tuple[Publisher, list[dict[str, Any]]]) -> None:
    pipe = CameraPipeline(CAMERA, FrameSlot(), stages(publisher[0]))
    before = frames(4, stream=1)
    assert [len(pipe.analyse(f).rois) for f in before][1:] != [0, 0, 0], "shapes move"
    after = frames(3, stream=2, start=5)
    rois = [len(pipe.analyse(f).rois) for f in after]
    assert rois[0] == 0, "the first frame of a new stream has no predecessor to compare with"
    assert rois[1] > 0, "and motion resumes on the next one"
    control = CameraPipeline(CAMERA, FrameSlot(), stages(publisher[0]))
    for f in [*before, dataclasses.replace(after[0], stream=1)]:
        last = control.analyse(f)
    assert len(last.rois) > 0, "the same frame on the same stream does show motion"


class Scripted:
    """A detection schedule that follows a script: the seam an adaptive one replaces."""

    def __init__(self, script: list[Decision]) -> None:
        self.script = list(script)

    def decide(self, index: int, rois_xyxy: npt.ArrayLike, frame_wh: tuple[int, int],
               t_s: float, tracks: TrackSummary) -> Decision:
        return self.script[index]


def test_a_new_stream_restarts_tracking(
        publisher: tuple[Publisher, list[dict[str, Any]]], sample_video: Path) -> None:
    """Objects are not carried across a reconnect, and their ids are never reused."""
    pub, seen = publisher
    cap = cv2.VideoCapture(str(sample_video))
    ok, raw = cap.read()
    cap.release()
    assert ok
    image = np.asarray(raw, np.uint8)
    script = [Decision(run=True), Decision(run=False, carry_steps=1.0),
              Decision(run=False, carry_steps=1.0), Decision(run=True)]
    detector = HOGDetector(HOGDetectorSettings(backend="hog"))
    with DetectorService(detector) as service:
        pipe = CameraPipeline(CAMERA, FrameSlot(), stages(
            pub, detector=service, make_schedule=lambda cam: Scripted(script)))
        for i, stream in enumerate((1, 1, 2, 2)):
            pipe.finish(pipe.analyse(Frame("cam", i + 1, 1e9 + i, image, stream=stream)))
    detector.close()
    ids = [[o["id"] for o in p["objects"]] for p in seen]
    assert ids[0], "HOG finds the pedestrians of vtest's first frame"
    assert ids[1] == ids[0], "within a stream the tracker carries the objects"
    assert ids[2] == [], "nothing seen before the reconnect is carried after it"
    assert ids[3] and min(ids[3]) > max(ids[0]), "new objects get new ids"


def test_stage_times_lose_no_frame_between_adder_and_taker() -> None:
    """The publish thread adds while the stats loop takes: every frame lands in exactly one
    interval with all its stage times (unlocked, a swap between the two halves of an add
    left frames counted in one interval and their times in another)."""
    times = StageTimes()
    n = 100_000
    one = dict.fromkeys(("motion", "detect", "track", "publish"), 1.0)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def add() -> None:
            for _ in range(n):
                times.add(one)

        adder = threading.Thread(target=add)
        adder.start()
        taken, torn = 0, 0
        while adder.is_alive():
            frames, mean_ms = times.take()
            taken += frames
            torn += frames > 0 and mean_ms != one
        adder.join()
    finally:
        sys.setswitchinterval(old)
    taken += times.take()[0]
    assert (taken, torn) == (n, 0)
    assert times.totals() == (n, {k: float(n) for k in one})


class View:
    def __init__(self) -> None:
        self.offers: list[tuple[int, Mapping[int, str], Any]] = []

    def wants(self, camera: str) -> bool:
        return True

    def offer(self, camera: str, frame: Frame, rois: Rois, dets: Detections,
              descriptions: Mapping[int, str],
              motion_mask: npt.NDArray[np.uint8] | None) -> None:
        self.offers.append((frame.frame_id, descriptions, motion_mask))


def test_descriptions_from_another_thread_reach_the_view_and_snapshots(
        publisher: tuple[Publisher, list[dict[str, Any]]]) -> None:
    """The describer thread hands texts over while the publish thread draws snapshots: none
    is lost, the latest per object wins, and objects the tracker dropped are forgotten."""
    pub, seen = publisher
    view = View()
    n, rounds = 200, 100

    def tracker() -> Tracker:
        t = Tracker(TrackerSettings(max_missed=1000))
        xy = np.arange(n, dtype=np.float32)[:, None] * 10
        t.update(Detections(np.hstack([xy, xy, xy + 5, xy + 5]), np.ones(n, np.float32),
                            np.zeros(n, np.int64), labels=("person",)))
        return t  # ids 1..n stay alive without detections

    pipe = CameraPipeline(CAMERA, FrameSlot(), stages(pub, view=view, make_tracker=tracker))

    def describe() -> None:
        for i in range(rounds * n):
            pipe.note_description(i % n + 1, f"text {i}")
            if i >= (rounds - 1) * n:
                time.sleep(0.0005)  # the last round overlaps many snapshots

    writer = threading.Thread(target=describe)
    image = frames(1, stream=1)[0].image
    fid = 0
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        writer.start()
        while writer.is_alive() or fid < 3:
            fid += 1
            pipe.request_snapshot()
            pipe.finish(pipe.analyse(Frame("cam", fid, 1e9 + fid, image, stream=1)))
        writer.join()
    finally:
        sys.setswitchinterval(old)
    pipe.finish(pipe.analyse(Frame("cam", fid + 1, 1e9 + fid + 1, image, stream=1)))
    latest = {i % n + 1: f"text {i}" for i in range((rounds - 1) * n, rounds * n)}
    assert view.offers[-1][1] == latest
    assert sum(r.kind == "snapshot" for r in pub.outbox.after(0, 100_000)) == fid
    assert [o[0] for o in view.offers] == [p["frame_id"] for p in seen], \
        "the view is offered exactly the published frames"
    retire = Tracker(TrackerSettings(max_missed=0))
    pipe = CameraPipeline(CAMERA, FrameSlot(), stages(pub, view=view, make_tracker=lambda: retire))
    pipe.note_description(1, "gone")
    pipe.finish(pipe.analyse(Frame("cam", 1, 1e9, image, stream=1)))
    assert view.offers[-1][1] == {}, "objects the tracker does not follow are forgotten"


def test_the_pipeline_threads_run_below_the_process(
        publisher: tuple[Publisher, list[dict[str, Any]]]) -> None:
    """Analysis and publish are per-camera threads: under a CPU shortage they yield to the
    shared detector and MQTT threads (`streamd.threads.lower_priority`)."""
    from streamd.threads import CAMERA_THREAD_NICE, Deadline
    from tests.test_threads import nice_of, thread_nice

    pipe = CameraPipeline(CAMERA.model_copy(update={"name": "nicecam"}), FrameSlot(),
                          stages(publisher[0])).start()
    try:
        want = min(19, nice_of(threading.get_native_id()) + CAMERA_THREAD_NICE)
        assert thread_nice("analysis-niceca") == want  # the kernel keeps 15 bytes
        assert thread_nice("publish-nicecam") == want
    finally:
        pipe.request_stop(Deadline(2))
        assert pipe.join(Deadline(5))
