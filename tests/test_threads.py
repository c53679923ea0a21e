"""Per-camera threads run below the shared stages' priority (`streamd.threads`)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from streamd.capture import CameraSettings, CaptureWorker
from streamd.frames import FrameSlot
from streamd.state import StateStore
from streamd.threads import CAMERA_THREAD_NICE, lower_priority
from tests.helpers.mqtt import Mosquitto
from tests.helpers.video import write_moving_shapes_video

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice per thread")


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def thread_nice(comm: str, timeout_s: float = 10.0) -> int:
    """The nice value of this process's thread named `comm` (as the kernel shows it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            try:
                if (task / "comm").read_text().strip() == comm:
                    return nice_of(int(task.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
        time.sleep(0.02)
    raise AssertionError(f"no thread named {comm!r}")


def test_lower_priority_lowers_only_the_calling_thread() -> None:
    base = nice_of(threading.get_native_id())
    seen: list[int] = []

    def worker() -> None:
        lower_priority()
        seen.append(nice_of(threading.get_native_id()))

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert seen == [min(19, base + CAMERA_THREAD_NICE)]
    assert nice_of(threading.get_native_id()) == base, "the caller's own thread is untouched"


def test_a_capture_thread_runs_below_the_process(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=10, wh=(160, 120), fps=20)
    slot = FrameSlot()
    worker = CaptureWorker(CameraSettings(name="nicecam", url=str(clip)), slot,
                           StateStore(tmp_path / "s").counter("f"), lambda c, s, r: None,
                           None).start()
    try:  # a lossless file waits for its frames to be taken: the thread stays alive
        assert thread_nice("capture-nicecam") == min(
            19, nice_of(threading.get_native_id()) + CAMERA_THREAD_NICE)
    finally:
        slot.close()
        worker.stop()


def test_the_daemon_hands_the_gil_over_every_millisecond(tmp_path: Path, mosquitto: Mosquitto,
                                                         sample_video: Path) -> None:
    """`App.run` sets the interpreter's switch interval (the daemon owns its process); run
    in-process on a few frames of a file, against a real broker."""
    from streamd.app import App
    from streamd.config import load
    from streamd.threads import GIL_SWITCH_INTERVAL_S

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""site: t
state_dir: {tmp_path / 'state'}
mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}
detector: {{backend: none}}
describer: {{backend: none}}
cameras: [{{name: v, url: {sample_video}}}]
""")
    before = sys.getswitchinterval()
    try:
        assert App(load(str(cfg)), max_frames=3).run() == 0
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(before)
