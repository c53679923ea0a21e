"""sd_notify over a real unix datagram socket, and the watchdog's notion of a stuck camera."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from streamd.capture import CameraSettings, CaptureWorker
from streamd.frames import FrameSlot
from streamd.notify import Notifier
from streamd.state import StateStore


def test_datagrams_to_a_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        n = Notifier()
        assert n.enabled
        assert n.ready("1/1 cameras streaming")
        assert n.watchdog()
        assert n.stopping("draining")
        got = [sock.recv(1024).decode() for _ in range(3)]
        n.close()
        n.close()
    assert got == ["READY=1\nSTATUS=1/1 cameras streaming", "WATCHDOG=1",
                   "STOPPING=1\nSTATUS=draining"]


def test_abstract_socket_name() -> None:
    name = f"streamd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        n = Notifier("@" + name)
        assert n.status("ok")
        assert sock.recv(1024) == b"STATUS=ok"
        n.close()


def test_without_systemd_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready("x") and n.watchdog_interval_s is None


@pytest.mark.parametrize(("usec", "pid", "interval"), [
    ("4000000", None, 2.0),
    ("4000000", "self", 2.0),
    ("4000000", "1", None),   # meant for another process
    ("garbage", None, None),
])
def test_watchdog_interval_is_half_of_watchdog_sec(
        monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None,
        interval: float | None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier("").watchdog_interval_s == interval


def test_unreachable_socket_fails_quietly(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert not n.watchdog()
    assert not n.watchdog()
    n.close()


def test_a_capture_thread_without_heartbeat_counts_as_stalled(tmp_path: Path) -> None:
    cam = CameraSettings(name="cam", url=f"rtsp://127.0.0.1:{_closed_port()}/x",
                         open_timeout_s=1, reconnect_max_s=0.5)
    worker = CaptureWorker(cam, FrameSlot(), StateStore(tmp_path).counter("f"),
                           lambda *a: None).start()
    try:
        time.sleep(0.3)
        now = time.monotonic()
        assert worker.stalled_for(now) < worker.stall_limit_s  # retrying is progress
        worker.stats.heartbeat_mono = now - 1000  # as if a read hung forever
        assert worker.stalled_for(time.monotonic()) > worker.stall_limit_s
    finally:
        worker.stop()
    assert worker.stalled_for(time.monotonic()) == 0.0  # a stopped thread is not stuck


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
