"""The capture thread on real files: lossless order, the fps cap, loop, max-frames, states."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from streamd.capture import CameraSettings, CameraState, CaptureWorker
from streamd.frames import Frame, FrameSlot
from streamd.state import StateStore
from tests.helpers.video import write_moving_shapes_video


def run_capture(tmp_path: Path, clip: Path, max_frames: int | None = None, **cam: object
                ) -> tuple[list[Frame], list[tuple[str, str | None]], CaptureWorker]:
    states: list[tuple[str, str | None]] = []
    slot = FrameSlot()
    worker = CaptureWorker(CameraSettings(name="cam", url=str(clip), **cam),  # type: ignore[arg-type]
                           slot, StateStore(tmp_path / "s").counter("f"),
                           lambda c, s, r: states.append((s.value, r)), max_frames).start()
    frames = []
    while (f := slot.take(timeout_s=10)) is not None:
        frames.append(f)
    worker.stop()
    return frames, states, worker


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    write_moving_shapes_video(path, frames=40, wh=(160, 120), fps=20)
    return path


@pytest.mark.parametrize(("fps", "expected"), [(None, 40), (20, 40), (10, 20), (5, 10)])
def test_fps_cap_on_a_file_keeps_the_average_rate(tmp_path: Path, clip: Path,
                                                  fps: float | None, expected: int) -> None:
    frames, states, worker = run_capture(tmp_path, clip, fps=fps)
    assert len(frames) == expected
    assert [f.frame_id for f in frames] == list(range(1, expected + 1))
    assert worker.stats.skipped == 40 - expected
    if fps:
        steps = {round(b.pts - a.pts, 3) for a, b in itertools.pairwise(frames)
                 if a.pts is not None and b.pts is not None}
        assert steps == {round(1 / fps, 3)}
    assert [s for s, _ in states] == ["starting", "streaming", "ended"]
    assert states[-1][1] == "end of file"


def test_loop_and_max_frames(tmp_path: Path, clip: Path) -> None:
    frames, states, _ = run_capture(tmp_path, clip, max_frames=100, loop=True)
    assert len(frames) == 100
    assert states[-1] == ("ended", "max-frames 100 reached")
    assert CameraState.ENDED.value == "ended"


def test_frames_are_bgr_with_capture_time(tmp_path: Path, clip: Path) -> None:
    frames, _, _ = run_capture(tmp_path, clip, max_frames=3)
    assert all(f.image.shape == (120, 160, 3) and f.image.dtype.name == "uint8"
               for f in frames)
    assert frames[0].ts <= frames[1].ts <= frames[2].ts
    assert frames[0].pts == 0.0 and frames[1].pts == pytest.approx(0.05, abs=1e-3)
