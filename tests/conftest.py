"""Fixtures that start real infrastructure: mosquitto, a GStreamer RTSP camera, the daemon.

Missing infrastructure is an error, never a skip: a suite that silently skipped its
integration tests would report green on a machine that tested nothing. Each fixture that needs
a system component checks for it once per session and fails with the command that installs it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mqtt import MOSQUITTO, Collector, Mosquitto
from tests.helpers.procs import Daemon, free_port
from tests.helpers.rtsp_server import SYSTEM_PYTHON, RtspServer
from tests.helpers.video import VTEST

SETUP_HINT = ("run ./scripts/setup.sh (installs mosquitto, python3-gi, "
              "gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,ugly}, opencv-doc)")

_GST_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "x264enc", "rtph264pay", "timeoverlay", "decodebin",
                       "jpegdec", "avidemux", "appsrc", "appsink", "videoconvert", "videoscale")
           if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    """The mosquitto binary, or a failure that says how to install it."""
    if not (os.path.isfile(MOSQUITTO) and os.access(MOSQUITTO, os.X_OK)):
        pytest.fail(f"mosquitto not found at {MOSQUITTO} (or STREAMD_TEST_MOSQUITTO): "
                    f"{SETUP_HINT}", pytrace=False)
    return MOSQUITTO


@pytest.fixture(scope="session")
def gst_rtsp() -> str:
    """Debian's python3 with GStreamer's RTSP server and the H.264 encoder, or a failure."""
    try:
        res = subprocess.run([SYSTEM_PYTHON, "-c", _GST_CHECK], capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot run {SYSTEM_PYTHON}: {exc}: {SETUP_HINT}", pytrace=False)
    if res.returncode != 0:
        err = (res.stderr.strip().splitlines() or ["?"])[-1]
        pytest.fail(f"{SYSTEM_PYTHON} cannot serve RTSP ({err}): {SETUP_HINT}", pytrace=False)
    return SYSTEM_PYTHON


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """vtest.avi (pedestrians), or a failure that says where it comes from."""
    if not VTEST.is_file():
        pytest.fail(f"sample video {VTEST} missing (set STREAMD_SAMPLE_VIDEO or "
                    f"{SETUP_HINT})", pytrace=False)
    return VTEST


@pytest.fixture
def mosquitto(mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh broker on a free loopback port, stopped after the test. Its log is printed on
    teardown (pytest shows it only when the test failed)."""
    broker = Mosquitto(free_port(), tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()
        print(f"--- mosquitto log (port {broker.port})\n{broker.log_text()[-4000:]}")


@pytest.fixture
def collector(mosquitto: Mosquitto) -> Iterator[Callable[..., Collector]]:
    """Factory: ``collector(topics="streamd/#", **kw)`` returns a started, subscribed
    Collector on the test's broker (``host=``/``port=`` to point elsewhere)."""
    started: list[Collector] = []

    def make(topics: str | Sequence[str] = "streamd/#", **kw: Any) -> Collector:
        kw.setdefault("host", mosquitto.host)
        kw.setdefault("port", mosquitto.port)
        c = Collector(topics=topics, **kw).start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def rtsp_server(gst_rtsp: str, tmp_path: Path) -> Iterator[Callable[..., RtspServer]]:
    """Factory: ``rtsp_server(width=320, height=240, fps=10, pattern="ball" | file=PATH,
    mounts=("/cam",), start=True)`` returns a camera on its own free port, serving from
    the moment it returns; all are stopped after the test."""
    made: list[RtspServer] = []

    def make(*, start: bool = True, **kw: Any) -> RtspServer:
        kw.setdefault("log_dir", tmp_path / "rtsp")
        server = RtspServer(free_port(), **kw)
        made.append(server)
        return server.start() if start else server

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``daemon(config, *args, start=True, env=None)`` writes ``config`` (a dict in
    the YAML shape, or YAML text) and runs ``python -m streamd run -c FILE *args``. Anything
    still running at teardown is killed, and every daemon's logs are printed (shown by pytest
    when the test failed)."""
    made: list[Daemon] = []

    def make(config: Mapping[str, Any] | str, *args: str, start: bool = True,
             env: Mapping[str, str] | None = None) -> Daemon:
        d = Daemon(config, tmp_path / f"daemon{len(made)}", args=args, env=env,
                   name=f"streamd{len(made)}")
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.kill()
        print(d.logs())
