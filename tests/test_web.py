"""The live view: config checks, drawing, the view's frame budget, /healthz."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.procs import free_port, run_cli
from tests.helpers.video import VTEST

pytestmark = pytest.mark.integration


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
