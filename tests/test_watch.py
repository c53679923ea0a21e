"""`streamd watch` against a real broker and a real daemon: it subscribes with the config's
MQTT settings, prints the contract's messages a line each, and `--until-offline` returns
when the daemon says `offline` after `online`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.mqtt import Mosquitto
from tests.helpers.procs import Daemon, daemon_config, streamd_env
from tests.helpers.video import write_moving_shapes_video


@pytest.mark.timeout(90)
def test_watch_prints_the_daemons_messages_until_offline(
        tmp_path: Path, mosquitto: Mosquitto, daemon: Callable[..., Daemon]) -> None:
    clip = tmp_path / "clip.avi"
    write_moving_shapes_video(clip, frames=20, wh=(160, 120), fps=20)
    cfg = daemon_config(mosquitto.port, [{"name": "cam", "url": str(clip)}],
                        tmp_path / "state", site="w")
    cfg_path = tmp_path / "watch.yaml"
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    watcher = subprocess.Popen([sys.executable, "-m", "streamd", "watch", "-c", str(cfg_path),
                                "--until-offline"], env=streamd_env(), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30  # connected before the daemon says anything
        while "-watch" not in mosquitto.log_text() and time.monotonic() < deadline:
            assert watcher.poll() is None, watcher.communicate()
            time.sleep(0.1)
        time.sleep(0.5)  # it subscribes from its connect callback
        assert daemon(cfg).wait(60) == 0
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "status online" and lines[-1] == "status offline", lines
    assert any(line.startswith("cam/detections seq=") and "rois=" in line for line in lines)
    assert any(line.startswith("cam/status streaming") for line in lines), lines
