"""The live view against a running daemon on vtest.avi: a real broker, a real headless
Chromium (Debian's `chromium`), real HTTP clients.

One daemon serves the whole module (it takes seconds to start and the tests only look):
HOG people detector, template descriptions, an ignore zone, Basic auth. Screenshots are kept
under test-artifacts/web/ (printed), so a person can look at what the browser showed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.conftest import SETUP_HINT
from tests.helpers.contract import PREFIX
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import REPO_ROOT, Daemon, daemon_config, free_port, run_cli
from tests.helpers.video import VTEST

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
USER, PASSWORD = "ops", "s3cret pass"
CAMERA = "vtest"
ZONE = [[0, 0], [230, 0], [230, 110], [0, 110]]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
JPEG_SOI = b"\xff\xd8\xff"


class Live:
    """The module's daemon: where it listens and how to ask it things."""

    def __init__(self, port: int, daemon: Daemon, stats: Collector) -> None:
        self.port = port
        self.daemon = daemon
        self.stats = stats

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD),
            timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        headers = {}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)


def chromium(*args: str, tmp: Path, timeout_s: float = 60.0) -> str:
    """Run headless Chromium to completion; its stdout (the DOM with --dump-dom)."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(f"chromium not found: {SETUP_HINT} (Debian package chromium)",
                    pytrace=False)
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    res = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                         capture_output=True, text=True, timeout=timeout_s, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("web")
    if not VTEST.is_file():
        pytest.fail(f"sample video {VTEST} missing: {SETUP_HINT}", pytrace=False)
    broker = Mosquitto(free_port(), tmp / "mosquitto").start()
    sub = Collector("127.0.0.1", broker.port, topics=f"{PREFIX}/{CAMERA}/stats").start()
    (tmp / "web.pass").write_text(PASSWORD + "\n")
    port = free_port()
    cfg = daemon_config(broker.port, [{"name": CAMERA, "url": str(VTEST), "realtime": True,
                                       "loop": True, "fps": 10, "ignore": [ZONE]}],
                        tmp / "state", detector={"backend": "hog", "interval": 3},
                        describer={"backend": "template"})
    cfg["web"] = {"enabled": True, "port": port, "fps": 5, "username": USER,
                  "password_file": str(tmp / "web.pass")}
    d = Daemon(cfg, tmp / "daemon").start()
    try:
        d.wait_output("web: live view on", 30)
        live = Live(port, d, sub)
        deadline = time.monotonic() + 30
        while live.get("/healthz", auth=None)[0] != 200:  # streaming, broker connected
            assert time.monotonic() < deadline, d.logs()
            assert d.running, d.logs()
            time.sleep(0.3)
        yield live
        # SIGTERM with a viewer still connected: the server must not hold up the shutdown
        with socket.create_connection(("127.0.0.1", port)) as viewer:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            viewer.sendall(f"GET /cameras/{CAMERA}/stream.mjpeg HTTP/1.1\r\nHost: x\r\n"
                           f"Authorization: Basic {token}\r\n\r\n".encode())
            time.sleep(0.5)
            t0 = time.monotonic()
            code = d.terminate(20)
        assert code == 0 and time.monotonic() - t0 < 10, (code, d.logs())
    finally:
        d.kill()
        sub.stop()
        broker.stop()
        print(d.logs())


def test_check_refuses_an_exposed_view_without_auth(tmp_path: Path) -> None:
    base = {"site": "t", "detector": {"backend": "none"}, "describer": {"backend": "none"},
            "cameras": [{"name": "a", "url": str(VTEST)}]}
    exposed = tmp_path / "exposed.yaml"
    exposed.write_text(json.dumps({**base, "web": {"enabled": True, "host": "0.0.0.0"}}))
    res = run_cli(["check", "-c", str(exposed)], cwd=tmp_path)
    assert res.returncode == 2, res
    assert "web.host" in res.stderr and "allow_anonymous" in res.stderr, res.stderr
    anonymous = tmp_path / "anonymous.yaml"
    anonymous.write_text(json.dumps({**base, "web": {"enabled": True, "host": "0.0.0.0",
                                                     "allow_anonymous": True}}))
    res = run_cli(["check", "-c", str(anonymous)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    no_password = tmp_path / "no_password.yaml"
    no_password.write_text(json.dumps({**base, "web": {"enabled": True, "username": "ops"}}))
    res = run_cli(["check", "-c", str(no_password)], cwd=tmp_path,
                  env={"STREAMD_WEB_PASSWORD": ""})
    assert res.returncode == 2 and "web.password_file" in res.stderr, res.stderr


def _textured_px(png: Path) -> int:
    """Pixels in 8x8 blocks with real picture detail (std > 10): a camera picture is full of
    them, the page around it (flat background, a few lines of text) has few."""
    img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    assert img is not None, png
    h, w = (s - s % 8 for s in img.shape)
    blocks = img[:h, :w].reshape(h // 8, 8, w // 8, 8).astype(np.float32)
    return int((blocks.std(axis=(1, 3)) > 10).sum()) * 64


@pytest.mark.timeout(180)
def test_pages_show_the_annotated_cameras_in_chromium(live: Live, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{live.port}"
    for name, path, min_px in (("grid", "/", 60_000),
                               ("camera", f"/cameras/{CAMERA}", 120_000)):
        shot = ARTIFACTS / f"{name}.png"
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", "--window-size=1280,900", base + path, tmp=tmp_path)
        print(f"screenshot of {path}: {shot}")
        assert _textured_px(shot) >= min_px, f"{shot}: the camera area looks blank"
        dom = chromium("--dump-dom", base + path, tmp=tmp_path)
        assert f'data-camera="{CAMERA}"' in dom, dom[:2000]
        assert 'data-field="state">streaming<' in dom, dom[:2000]


def _mjpeg_frames(live: Live, count: int, timeout_s: float) -> list[bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=timeout_s)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    conn.request("GET", f"/cameras/{CAMERA}/stream.mjpeg?overlays=rois,mask,objects",
                 headers={"Authorization": f"Basic {token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("multipart/x-mixed-replace")
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(frames) < count and time.monotonic() < deadline:
            headers: dict[str, str] = {}
            line = resp.readline()
            while line in (b"\r\n", b""):
                line = resp.readline()
            assert line.startswith(b"--"), line
            while (line := resp.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            frames.append(resp.read(int(headers["content-length"])))
    finally:
        conn.close()
    return frames


@pytest.mark.timeout(60)
def test_mjpeg_stream_delivers_distinct_frames(live: Live) -> None:
    frames = _mjpeg_frames(live, 12, timeout_s=15)
    assert len(frames) >= 10, f"{len(frames)} frames in 15 s"
    assert all(f.startswith(JPEG_SOI) for f in frames)
    assert len({hashlib.sha256(f).digest() for f in frames}) >= 10
    img = cv2.imdecode(np.frombuffer(frames[-1], np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (576, 768, 3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(ARTIFACTS / "mjpeg-mask.png"), img)
    print(f"last MJPEG picture (rois, mask, objects): {ARTIFACTS / 'mjpeg-mask.png'}")


@pytest.mark.timeout(60)
def test_api_stats_are_the_published_stats(live: Live) -> None:
    cam = live.json("/api/stats")["cameras"][CAMERA]
    served = cam["stats"]
    assert served is not None and cam["status"]["state"] == "streaming", cam
    published = live.stats.wait_message(f"{PREFIX}/{CAMERA}/stats",
                                        lambda m: m.json["seq"] == served["seq"], 10).json
    assert served == published
    assert served["fps_analysed"] > 0 and "latency_ms" in served


@pytest.mark.timeout(60)
def test_auth_and_paths(live: Live) -> None:
    for auth in (None, (USER, "wrong"), ("nobody", PASSWORD)):
        for path in ("/", f"/cameras/{CAMERA}/latest.jpg", f"/cameras/{CAMERA}/stream.mjpeg",
                     "/api/stats"):
            status, headers, body = live.get(path, auth=auth)
            assert status == 401, (path, auth, status)
            assert "Basic" in headers.get("WWW-Authenticate", ""), headers
            assert JPEG_SOI not in body and b"fps" not in body, (path, body[:100])
    status, headers, body = live.get(f"/cameras/{CAMERA}/latest.jpg")
    assert status == 200 and body.startswith(JPEG_SOI), (status, body[:100])
    status, _, body = live.get("/healthz", auth=None)
    assert status == 200 and json.loads(body) == {"ok": True, "reasons": []}
    for path in ("/cameras/nope", "/cameras/nope/latest.jpg", "/cameras/../../etc/passwd",
                 f"/cameras/{CAMERA}/../../etc/passwd", "/cameras/..%2F..%2Fetc%2Fpasswd",
                 "/static/../__init__.py", "/static/..%2F__init__.py"):
        status, _, body = live.get(path)
        assert status == 404, (path, status, body[:100])
        assert JPEG_SOI not in body


def _fps_analysed(live: Live, seconds: float) -> float:
    """Mean analysed fps over the stats published in the next `seconds`."""
    start = live.stats.cursor()
    time.sleep(seconds)
    got = [m.json["fps_analysed"] for m in live.stats.messages(
        f"{PREFIX}/{CAMERA}/stats", start)]
    assert got, "no stats published"
    return float(np.mean(got))


@pytest.mark.timeout(90)
def test_a_client_that_reads_nothing_does_not_slow_analysis(live: Live) -> None:
    before = _fps_analysed(live, 6)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    stuck = []
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", live.port))
        s.sendall(f"GET /cameras/{CAMERA}/stream.mjpeg HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Basic {token}\r\n\r\n".encode())
        stuck.append(s)
    try:
        during = _fps_analysed(live, 6)
        status, _, body = live.get(f"/cameras/{CAMERA}/latest.jpg", timeout_s=5)
        assert status == 200 and body.startswith(JPEG_SOI), "other viewers must still be served"
    finally:
        for s in stuck:
            s.close()
    # A stalled viewer that blocked the pipeline would stop analysis (or hold it to web.fps);
    # the margin is for a shared, loaded box where the analysed rate itself wanders.
    assert during >= 0.75 * before, f"analysed fps {before:.1f} without, {during:.1f} " \
        "with stalled viewers"


# -- without a daemon: what the daemon-level tests cannot see ----------------------------------

def test_mask_and_zones_are_drawn_translucent() -> None:
    from streamd.detections import Detections
    from streamd.frames import Frame
    from streamd.motion import Rois
    from streamd.snapshot import draw

    frame = Frame("c", 1, time.time(), np.full((240, 320, 3), 100, np.uint8))
    mask = np.zeros((60, 80), np.uint8)
    mask[30:, 40:] = 255  # bottom-right quarter moves
    img = draw(frame, Rois.empty(), Detections.empty(), motion_mask=mask,
               zones=[[(0, 0), (100, 0), (100, 80), (0, 80)]])
    moving, still, zone = img[180, 260], img[60, 200], img[40, 50]
    assert moving[2] > 150 and moving[0] < 100, moving  # red over the picture
    assert tuple(still) == (100, 100, 100), still
    assert tuple(zone) != (100, 100, 100) and zone[0] == zone[1] == zone[2], zone
    assert frame.image[180, 260].tolist() == [100, 100, 100], "the frame must not change"


def test_the_view_takes_frames_only_while_watched_and_within_fps() -> None:
    from streamd.detections import Detections
    from streamd.frames import Frame
    from streamd.motion import Rois
    from streamd.web.view import DEFAULT_OVERLAYS, LiveView

    with LiveView(fps=5, zones=lambda c: ()) as view:
        assert not view.wants("c"), "nobody watches: the pipeline must not hand over frames"
        frame = Frame("c", 1, time.time(), np.zeros((48, 64, 3), np.uint8))
        with view.watch("c", DEFAULT_OVERLAYS):
            assert view.wants("c") and not view.wants("other")
            view.offer("c", frame, Rois.empty(), Detections.empty(), {}, None)
            assert not view.wants("c"), "5 fps: the next picture is due in 0.2 s"
            time.sleep(0.25)
            assert view.wants("c")
            deadline = time.monotonic() + 5
            while view.picture("c", DEFAULT_OVERLAYS) is None:
                assert time.monotonic() < deadline, "the render thread drew nothing"
                time.sleep(0.02)
        assert not view.wants("c"), "the stream closed: no more frames"
        assert view.rendered == 1


@pytest.mark.timeout(30)
def test_healthz_says_why_and_the_server_stops_promptly() -> None:
    from streamd.web import WebSettings
    from streamd.web.server import WebServer

    port = free_port()
    server = WebServer(WebSettings(enabled=True, port=port), None,
                       lambda: {"a": (), "b": ()}, lambda: False).start()
    try:
        server.on_message("a", "status", {"state": "reconnecting", "reason": "read timeout"})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        stream = socket.create_connection(("127.0.0.1", port))  # a viewer that stays
        stream.sendall(b"GET /cameras/a/stream.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    finally:
        t0 = time.monotonic()
        server.stop()
        stopped_s = time.monotonic() - t0
    stream.close()
    assert resp.status == 503
    assert body["reasons"] == ["camera a: reconnecting (read timeout)",
                               "camera b: no status yet", "broker: not connected"]
    assert stopped_s < 3.0, f"stop took {stopped_s:.1f} s with a viewer connected"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_taken_port_is_a_startup_error() -> None:
    from streamd.web import WebError, WebSettings
    from streamd.web.server import WebServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WebServer(WebSettings(enabled=True, port=port), None, dict, lambda: True)
        with pytest.raises(WebError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.start()
