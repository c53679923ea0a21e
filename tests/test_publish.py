"""The publisher against a real mosquitto: contract v1 framing, seq, retained status,
ordering across a broker restart, and the outbox's drop policy."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamd.config import Settings, validate
from streamd.publish import Publisher
from streamd.state import StateStore
from tests.helpers.mqtt import Collector, Mosquitto, read_retained
from tests.helpers.procs import free_port

pytestmark = pytest.mark.integration


def settings(port: int, state_dir: Path, **mqtt: object) -> Settings:
    return validate({"site": "pub", "state_dir": str(state_dir),
                     "mqtt": {"host": "127.0.0.1", "port": port, **mqtt},
                     "cameras": [{"name": "cam", "url": "x.avi"}]})


def wait(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_contract_framing_seq_and_status(mosquitto: Mosquitto,
                                         collector: Callable[..., Collector],
                                         tmp_path: Path) -> None:
    sub = collector("streamd/pub/#")
    pub = Publisher(settings(mosquitto.port, tmp_path), None, StateStore(tmp_path)).start()
    wait(lambda: pub.connected)
    for fid in range(1, 21):
        pub.publish_camera("cam", "detections", {"frame_id": fid, "ts": 1.0 + fid})
    pub.publish_status("cam", "reconnecting", "cannot open rtsp://u:pw@10.0.0.5/x")
    pub.publish_camera("other", "detections", {"frame_id": 1})
    sub.wait_count("cam/detections", 20)
    sub.wait_message("cam/status")
    pub.stop()

    dets = [m.json for m in sub.messages("streamd/pub/cam/detections")]
    assert [d["seq"] for d in dets] == list(range(1, 21))
    assert [d["frame_id"] for d in dets] == list(range(1, 21))
    assert all(d["v"] == 1 and d["camera"] == "cam" for d in dets)
    assert sub.messages("streamd/pub/other/detections")[0].json["seq"] == 1
    status = read_retained("127.0.0.1", mosquitto.port, "streamd/pub/cam/status")
    assert status is not None and status.json["state"] == "reconnecting"
    assert "pw" not in status.text and "***@10.0.0.5" in status.json["reason"]
    site = read_retained("127.0.0.1", mosquitto.port, "streamd/pub/status")
    assert site is not None and site.text == "offline"  # clean stop says offline
    assert [m.text for m in sub.messages("streamd/pub/status")][:1] == ["online"]


def test_seq_continues_across_a_publisher_restart(mosquitto: Mosquitto,
                                                  collector: Callable[..., Collector],
                                                  tmp_path: Path) -> None:
    sub = collector("streamd/pub/cam/detections")
    for _ in range(2):
        pub = Publisher(settings(mosquitto.port, tmp_path), None, StateStore(tmp_path)).start()
        for fid in range(3):
            pub.publish_camera("cam", "detections", {"frame_id": fid})
        wait(lambda p=pub: p.connected and p.pending == 0)  # type: ignore[misc]
        pub.stop()
    sub.wait_count("cam/detections", 6)
    assert [m.json["seq"] for m in sub.messages()] == [1, 2, 3, 4, 5, 6]


def test_broker_restart_loses_nothing_published_meanwhile(
        mosquitto_bin: str, tmp_path: Path) -> None:
    # A persistent broker and session: the subscriber's queue survives the restart, so what
    # is missing could only have been lost by the publisher.
    mosquitto = Mosquitto(free_port(), tmp_path / "mq", persistence=True).start()
    sub = Collector("127.0.0.1", mosquitto.port, "streamd/pub/cam/detections",
                    client_id="persistent-sub", clean_session=False).start()
    pub = Publisher(settings(mosquitto.port, tmp_path), None, StateStore(tmp_path)).start()
    try:
        wait(lambda: pub.connected)
        for fid in range(1, 11):
            pub.publish_camera("cam", "detections", {"frame_id": fid})
        sub.wait_count("cam/detections", 10)
        mosquitto.stop()
        wait(lambda: not pub.connected)
        for fid in range(11, 31):  # published while the broker is down: must wait, in order
            pub.publish_camera("cam", "detections", {"frame_id": fid})
        assert pub.pending >= 20
        mosquitto.start()
        sub.wait_count("cam/detections", 30, timeout_s=20)
    finally:
        pub.stop()
        sub.stop()
        mosquitto.stop()
    # QoS 1 is at-least-once: a message in flight at the restart may arrive twice.
    first_seen = list(dict.fromkeys(m.json["seq"] for m in sub.messages()))
    assert first_seen == list(range(1, 31))  # all of them, in order


def test_full_outbox_drops_oldest_detections_never_status(tmp_path: Path) -> None:
    # No broker at all: everything stays in the outbox.
    pub = Publisher(settings(free_port(), tmp_path, max_pending=100), None,
                    StateStore(tmp_path)).start()
    try:
        pub.publish_status("cam", "streaming", None)
        for fid in range(150):
            pub.publish_camera("cam", "detections", {"frame_id": fid})
        pub.publish_camera("cam", "stats", {"x": 1})
        for fid in range(5):
            pub.publish_camera("cam", "detections", {"frame_id": 1000 + fid})
        assert pub.pending == 100
        # 151 queued -> 51 detections out; stats in -> 1 more; then 5 in: the stats first
        # (it goes before detections), then 4 detections.
        assert pub.dropped["detections"] == 51 + 1 + 4
        assert pub.dropped["stats"] == 1
        rows = pub.outbox.after(0, 1000)
        assert rows[0].kind == "status"
        frame_ids = [r.payload for r in rows if r.kind == "detections"]
        assert b'"frame_id":1004' in frame_ids[-1]
    finally:
        pub.stop(flush_timeout_s=0.1)
