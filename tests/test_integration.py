"""streamd end to end: the real daemon, a real broker, real cameras, a real subscriber.

Each test starts ``python -m streamd run -c FILE`` exactly as an operator would and asserts
only on what the MQTT contract (v1, ARCHITECTURE.md) promises a subscriber: topics, retain
flags, payload fields, ``seq`` contiguity, ``frame_id`` order, the join of descriptions to
detections on (camera, frame_id, ts), camera states through a camera loss, and exit codes.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.contract import (
    PREFIX,
    assert_box,
    assert_contiguous,
    assert_strictly_increasing,
    check_detection,
    check_status,
    is_number,
    overlaps,
    payloads,
    unique_by_seq,
    wait_offline,
    wait_state,
)
from tests.helpers.mqtt import Collector, Mosquitto, read_retained
from tests.helpers.procs import Daemon, daemon_config, free_port, run_cli
from tests.helpers.rtsp_server import RtspServer
from tests.helpers.video import ShapeTruth, write_moving_shapes_video

pytestmark = pytest.mark.integration



# -- (a) a file source: lossless, ordered, ends by itself -----------------------------------

@pytest.mark.timeout(90)
def test_file_source_lossless_ordered_and_exits(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        daemon: Callable[..., Daemon]) -> None:
    frames, wh = 60, (320, 240)
    clip = tmp_path / "shapes.avi"
    truth: list[ShapeTruth] = write_moving_shapes_video(clip, frames=frames, wh=wh, fps=10)
    sub = collector(f"{PREFIX}/#")
    d = daemon(daemon_config(mosquitto.port, [{"name": "file1", "url": str(clip)}],
                             tmp_path / "state", publish_empty=True, stats_interval_s=0.5))

    assert d.wait(60) == 0, f"a play-once file must end the daemon with 0\n{d.logs()}"
    wait_offline(sub)

    online = sub.wait_message(f"{PREFIX}/status", lambda m: m.text == "online", 1)
    dets = [check_detection(m, "file1") for m in sub.messages(f"{PREFIX}/file1/detections")]
    assert dets, sub.summary()
    assert sub.messages(f"{PREFIX}/file1/detections")[0].index > online.index, \
        "online must be announced before any data"
    assert len(dets) == frames, (
        f"file sources are lossless and publish_empty is on: {frames} frames in the file, "
        f"{len(dets)} detections published")
    ids = [p["frame_id"] for p in dets]
    assert_strictly_increasing(ids, "frame_id")
    assert_contiguous(ids, "frame_id of a lossless file (nothing may be skipped)")
    assert_contiguous([p["seq"] for p in dets], "detections seq")
    assert all((p["width"], p["height"]) == wh for p in dets)
    ts = [p["ts"] for p in dets]
    assert all(b >= a for a, b in itertools.pairwise(ts)), "ts went backwards"
    assert d.started_at is not None
    assert d.started_at - 1 <= ts[0] and ts[-1] <= time.time() + 1, "ts is not capture time"
    # The file has a presentation time: 10 fps, so pts advances by 0.1 s a frame.
    pts = [p["pts"] for p in dets]
    assert all(v is not None for v in pts), "a file source has a pts"
    assert pts[-1] - pts[0] == pytest.approx((frames - 1) / 10, abs=0.02), pts[:5]
    assert not sub.messages(f"{PREFIX}/file1/descriptions"), "describer is none"

    # Motion ROIs are where the rectangles moved: between frame i-1 and i, with padding.
    first = ids[0]
    rois_total = hits = frames_with_rois = 0
    for p in dets:
        i = p["frame_id"] - first
        if i == 0:
            continue
        frames_with_rois += bool(p["rois"])
        both = np.concatenate([truth[i].boxes_xyxy, truth[i - 1].boxes_xyxy])
        for roi in p["rois"]:
            rois_total += 1
            hits += overlaps(roi["box"], both, margin=16)
    assert frames_with_rois >= 0.8 * (frames - 1), \
        f"both rectangles move every frame, ROIs in only {frames_with_rois}/{frames - 1}"
    assert hits >= 0.9 * rois_total, f"{rois_total - hits}/{rois_total} ROIs on static pixels"

    for s in (m.json for m in sub.messages(f"{PREFIX}/file1/stats")):
        assert s["v"] == 1 and s["camera"] == "file1", s
        assert s["dropped"] == 0, f"a file source waits for analysis, never drops: {s}"

    statuses = [check_status(m, "file1") for m in sub.messages(f"{PREFIX}/file1/status")]
    assert statuses and statuses[-1]["state"] == "ended", statuses
    assert all(m.retain is False for m in sub.messages(f"{PREFIX}/file1/detections"))
    retained = read_retained(mosquitto.host, mosquitto.port, f"{PREFIX}/file1/status")
    assert retained is not None, "camera status must be retained"
    assert retained.json["state"] == "ended"
    site = read_retained(mosquitto.host, mosquitto.port, f"{PREFIX}/status")
    assert site is not None and site.text == "offline", \
        "a clean exit leaves a retained offline"


@pytest.mark.timeout(90)
def test_frame_id_and_seq_never_go_back_across_restarts(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        daemon: Callable[..., Daemon]) -> None:
    """A subscriber joins messages on (camera, frame_id) and detects gaps with seq: both must
    keep rising when the daemon restarts with the same state directory."""
    clip = tmp_path / "short.avi"
    write_moving_shapes_video(clip, frames=15, wh=(160, 120), fps=10)
    cfg = daemon_config(mosquitto.port, [{"name": "file1", "url": str(clip)}],
                        tmp_path / "state", publish_empty=True)
    sub = collector(f"{PREFIX}/#")
    runs: list[list[dict[str, Any]]] = []
    for _ in range(2):
        start = sub.cursor()
        d = daemon(cfg)
        assert d.wait(60) == 0, d.logs()
        wait_offline(sub, start=start)
        runs.append(payloads(sub, "file1", "detections", start))
    assert [len(r) for r in runs] == [15, 15]
    first, second = runs
    assert second[0]["frame_id"] > first[-1]["frame_id"], "frame_id went back after restart"
    assert second[0]["seq"] > first[-1]["seq"], "seq went back after restart"
    assert_contiguous([p["seq"] for p in second], "seq within the second run")


# -- (b) real footage: HOG finds people, descriptions join detections -----------------------

@pytest.mark.timeout(180)
def test_vtest_people_detected_and_described(
        tmp_path: Path, sample_video: Path, mosquitto: Mosquitto,
        collector: Callable[..., Collector], daemon: Callable[..., Daemon]) -> None:
    sub = collector(f"{PREFIX}/#")
    cfg = daemon_config(mosquitto.port, [{"name": "vtest", "url": str(sample_video)}],
                        tmp_path / "state", detector={"backend": "hog"},
                        describer={"backend": "template"}, publish_empty=True)
    d = daemon(cfg, "--max-frames", "60")
    assert d.wait(150) == 0, d.logs()
    wait_offline(sub)

    det_msgs = sub.messages(f"{PREFIX}/vtest/detections")
    dets = [check_detection(m, "vtest") for m in det_msgs]
    assert len(dets) == 60, f"--max-frames 60 on a lossless file: got {len(dets)} frames"
    assert all((p["width"], p["height"]) == (768, 576) for p in dets)
    assert_strictly_increasing([p["frame_id"] for p in dets], "frame_id")
    assert_contiguous([p["seq"] for p in dets], "detections seq")
    people = [o for p in dets for o in p["objects"] if o["label"] == "person"]
    assert people, "HOG finds no person in 60 frames of pedestrians"
    labels = {o["label"] for p in dets for o in p["objects"]}
    assert labels == {"person"}, f"the HOG people detector only knows person: {labels}"

    by_frame = {p["frame_id"]: (p, m.index) for p, m in zip(dets, det_msgs, strict=True)}
    desc_msgs = sub.messages(f"{PREFIX}/vtest/descriptions")
    assert desc_msgs, f"template describer described nothing\n{sub.summary()}"
    descs = []
    for m in desc_msgs:
        q = m.json
        assert m.retain is False
        assert q["v"] == 1 and q["camera"] == "vtest", q
        assert isinstance(q["object_id"], int) and isinstance(q["seq"], int), q
        assert isinstance(q["text"], str) and q["text"].strip(), q
        assert isinstance(q["model"], str) and q["model"], q
        assert is_number(q["latency_ms"]) and q["latency_ms"] >= 0, q
        assert_box(q["box"], (768, 576), f"description seq={q['seq']}")
        assert q["frame_id"] in by_frame, \
            f"description of frame {q['frame_id']}, which no detections message carried"
        det, det_index = by_frame[q["frame_id"]]
        assert q["ts"] == det["ts"], f"same frame, different ts: {q['ts']} != {det['ts']}"
        boxes = {o["id"]: o["box"] for o in det["objects"]}
        assert q["object_id"] in boxes, \
            f"object {q['object_id']} is not among frame {q['frame_id']}'s objects"
        assert q["box"] == boxes[q["object_id"]], "the described box is not the detected one"
        assert m.index > det_index, "a description must not overtake its frame's detections"
        descs.append(q)
    assert_contiguous([q["seq"] for q in descs], "descriptions seq")
    assert all(b["frame_id"] >= a["frame_id"] for a, b in itertools.pairwise(descs)), \
        "descriptions must be published in frame_id order"


# -- (c) a live RTSP camera: fresh timestamps, camera loss and return, SIGTERM ---------------

@pytest.mark.timeout(150)
def test_rtsp_live_reconnect_and_sigterm(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        rtsp_server: Callable[..., RtspServer], daemon: Callable[..., Daemon]) -> None:
    cam = rtsp_server(width=320, height=240, fps=10, pattern="ball")
    sub = collector(f"{PREFIX}/#")
    cfg = daemon_config(mosquitto.port, [{"name": "cam1", "url": cam.url, "fps": 10}],
                        tmp_path / "state", publish_empty=True, stats_interval_s=1)
    d = daemon(cfg)

    wait_state(sub, "cam1", "streaming", 30)
    live = sub.wait_count(f"{PREFIX}/cam1/detections", 25, 30)
    for m in live:
        p = check_detection(m, "cam1")
        assert (p["width"], p["height"]) == (320, 240)
        assert abs(m.received - p["ts"]) < 2.0, \
            f"frame_id {p['frame_id']}: ts {p['ts']:.3f} is {m.received - p['ts']:.2f} s " \
            "from the wall clock at receipt (stale frame or wrong clock)"
    before = [m.json for m in live]
    assert_strictly_increasing([p["ts"] for p in before], "ts")
    assert_strictly_increasing([p["frame_id"] for p in before], "frame_id")
    assert_contiguous([p["seq"] for p in before], "detections seq")
    span = before[-1]["ts"] - before[0]["ts"]
    assert (len(before) - 1) / span < 13, f"fps: 10 is the cap, analysed {len(before)} in {span}"

    site = read_retained(mosquitto.host, mosquitto.port, f"{PREFIX}/status")
    assert site is not None and site.text == "online", "online must be retained"
    retained = read_retained(mosquitto.host, mosquitto.port, f"{PREFIX}/cam1/status")
    assert retained is not None and retained.json["state"] == "streaming"
    stats = sub.wait_message(f"{PREFIX}/cam1/stats",
                             lambda m: (m.json.get("fps_analysed") or 0) > 0, 10)
    s = stats.json
    assert s["v"] == 1 and s["camera"] == "cam1" and stats.retain is False, s
    for key in ("fps_in", "fps_analysed", "dropped"):
        assert key in s and is_number(s[key]), f"stats lacks {key}: {s}"
    assert s["fps_analysed"] <= 13, s

    # The camera dies (power cut): the daemon says so, with a reason, and stops publishing.
    mark = sub.cursor()
    cam.kill()
    down = wait_state(sub, "cam1", "reconnecting", 10, start=mark)
    reason = check_status(down, "cam1")["reason"]
    assert isinstance(reason, str) and reason.strip(), "reconnecting must say why"
    time.sleep(2.0)
    quiet = sub.cursor()
    time.sleep(1.5)
    assert len(sub.messages(f"{PREFIX}/cam1/detections", quiet)) <= 1, \
        "detections keep coming while the camera is down"
    assert d.running, f"the daemon must survive a camera loss\n{d.logs()}"

    # It comes back on the same URL: streaming again, detections resume, no going back.
    mark = sub.cursor()
    cam.start()
    wait_state(sub, "cam1", "streaming", 40, start=mark)
    resumed = sub.wait_count(f"{PREFIX}/cam1/detections", 10, 20, start=mark)
    after = [check_detection(m, "cam1") for m in resumed]
    assert after[0]["frame_id"] > before[-1]["frame_id"], "frame_id went back on reconnect"
    assert all(abs(m.received - m.json["ts"]) < 2.0 for m in resumed[2:]), \
        "frames after the reconnect are stale"
    all_dets = payloads(sub, "cam1", "detections")
    assert_contiguous([p["seq"] for p in all_dets], "detections seq across the camera outage")
    assert_strictly_increasing([p["frame_id"] for p in all_dets], "frame_id")

    # SIGTERM drains and exits 0, and the site goes offline (retained).
    mark = sub.cursor()
    assert d.terminate(20) == 0, d.logs()
    wait_offline(sub, 10, start=mark)
    site = read_retained(mosquitto.host, mosquitto.port, f"{PREFIX}/status")
    assert site is not None and site.text == "offline"


# -- (d) config errors: check names every bad key; run refuses before connecting -------------

BROKEN = """\
site: test
state_dir: {state}
mqtt:
  host: 127.0.0.1
  port: 70000
detector: {{backend: none}}
describer: {{backend: none}}
cameras:
  - name: cam1
    url: rtsp://127.0.0.1:9/cam
    fpss: 10
colour: blue
"""
"""Three problems, on lines 5 (port out of range), 11 (typo in a camera) and 12 (unknown
top-level key)."""

NO_CAMERAS = """\
site: test
mqtt: {host: 127.0.0.1, port: 1883}
"""


def problem_lines(output: str, path: Path) -> dict[str, tuple[int, str]]:
    """``FILE:LINE: key.path: reason`` lines, keyed by key path (``cameras[0].x`` and
    ``cameras.0.x`` both normalised to the latter)."""
    pat = re.compile(rf"^{re.escape(str(path))}:(\d+): ([^:\s]+): (.+)$")
    found: dict[str, tuple[int, str]] = {}
    for line in output.splitlines():
        m = pat.match(line.strip())
        if m:
            key = re.sub(r"\[(\d+)\]", r".\1", m.group(2))
            found[key] = (int(m.group(1)), m.group(3))
    return found


@pytest.mark.timeout(60)
def test_check_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN.format(state=tmp_path / "state"))
    res = run_cli(["check", "-c", str(bad)], cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    found = problem_lines(out, bad)
    assert set(found) == {"mqtt.port", "cameras.0.fpss", "colour"}, out
    assert found["mqtt.port"][0] == 5 and found["cameras.0.fpss"][0] == 11 \
        and found["colour"][0] == 12, out
    assert all(reason.strip() for _, reason in found.values()), out

    missing = tmp_path / "missing.yaml"
    missing.write_text(NO_CAMERAS)
    res = run_cli(["check", "-c", str(missing)], cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "cameras" in problem_lines(out, missing), out

    good = tmp_path / "good.yaml"
    good.write_text(BROKEN.format(state=tmp_path / "state")
                    .replace("70000", "1883").replace("fpss", "fps")
                    .replace("colour: blue\n", ""))
    res = run_cli(["check", "-c", str(good)], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not problem_lines(res.stdout + res.stderr, good)


@pytest.mark.timeout(60)
def test_run_with_broken_config_exits_2_without_connecting(
        tmp_path: Path, mosquitto: Mosquitto, collector: Callable[..., Collector],
        daemon: Callable[..., Daemon]) -> None:
    sub = collector("#")
    text = BROKEN.format(state=tmp_path / "state").replace("70000", str(mosquitto.port))
    d = daemon(text)
    assert d.wait(30) == 2, d.logs()
    assert "fpss" in d.output and "colour" in d.output, d.logs()
    # Give a stray connection time to show; the broker log lists every client that connects.
    time.sleep(0.5)
    assert not sub.messages(), sub.summary()
    connects = mosquitto.log_text().count("New client connected")
    assert connects == 1, f"only the test's subscriber may connect:\n{mosquitto.log_text()}"


# -- (e) broker restart: the outbox loses nothing -------------------------------------------

@pytest.mark.timeout(150)
def test_broker_restart_loses_no_detections(
        tmp_path: Path, mosquitto_bin: str, rtsp_server: Callable[..., RtspServer],
        daemon: Callable[..., Daemon]) -> None:
    """The contract's outbox: messages published while the broker is away are delivered
    after it returns, in order, without a seq gap. The subscriber keeps a persistent session
    on a persistent broker, so what it did not get is what the daemon lost."""
    cam = rtsp_server(width=160, height=120, fps=10, pattern="ball")
    broker = Mosquitto(free_port(), tmp_path / "mq", persistence=True).start()
    sub = Collector(broker.host, broker.port, f"{PREFIX}/#", client_id="test-persistent",
                    clean_session=False)
    try:
        sub.start()
        cfg = daemon_config(broker.port, [{"name": "cam1", "url": cam.url, "fps": 10}],
                            tmp_path / "state", publish_empty=True, stats_interval_s=1)
        d = daemon(cfg)
        sub.wait_count(f"{PREFIX}/cam1/detections", 10, 40)
        broker.restart(down_s=3)
        back = time.time()
        sub.wait_for(lambda c: c.connects >= 2, 20, "subscriber reconnect")
        sub.wait_for(lambda c: [m for m in c.messages(f"{PREFIX}/cam1/detections")
                                if m.received > back + 2], 30, "detections after the restart")
        mark = sub.cursor()
        assert d.terminate(20) == 0, d.logs()
        wait_offline(sub, 10, start=mark)
        dets = unique_by_seq(payloads(sub, "cam1", "detections"))
        seqs = sorted(p["seq"] for p in dets)
        assert_contiguous(seqs, "detections seq across a broker restart")
        assert [p["seq"] for p in dets] == seqs, "detections arrived out of order"
        assert_strictly_increasing([p["frame_id"] for p in dets], "frame_id")
        onlines = sub.messages(f"{PREFIX}/status")
        assert sum(m.text == "online" for m in onlines) >= 2, "online again after reconnect"
    finally:
        sub.stop()
        broker.stop()
        print(f"--- persistent mosquitto log\n{broker.log_text()[-4000:]}")
