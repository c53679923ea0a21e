"""The publisher's ordering, acknowledgement, drain and listener logic without a broker.

The MQTT client is the publisher's seam (`client_factory`); `FakeClient` below plays the
network side in-process and lets a test decide when the broker is there and when it
acknowledges. The same logic against a real mosquitto is in test_publish.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from streamd.config import Settings, validate
from streamd.contract import Kind
from streamd.mqttclient import ClientHandlers, ClientOptions
from streamd.publish import Publisher
from streamd.state import StateStore


class FakeClient:
    """Takes what the publisher hands over and acknowledges on request (or at once)."""

    def __init__(self, options: ClientOptions, handlers: ClientHandlers) -> None:
        self.options = options
        self.h = handlers
        self.lock = threading.Lock()
        self.sent: list[tuple[int, str, bytes, int, bool]] = []
        self.subscribed: list[str] = []
        self.connected = False
        self.auto_ack = False
        self.closed = False
        self._mid = 0

    def connect(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> int | None:
        with self.lock:
            if not self.connected and qos == 0:
                return None
            self._mid += 1
            mid = self._mid
            raw = payload.encode() if isinstance(payload, str) else payload
            self.sent.append((mid, topic, raw, qos, retain))
        if self.auto_ack and self.connected:
            self.h.on_publish(mid)  # before the publisher recorded the mid, as paho can
        return mid

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self.subscribed.append(topic_filter)

    def close(self) -> None:
        self.closed = True

    # -- the test's side of the network ------------------------------------------------------

    def up(self) -> None:
        self.connected = True
        self.h.on_connect(None)

    def down(self) -> None:
        self.connected = False
        self.h.on_disconnect("connection lost")

    def ack_all(self) -> None:
        with self.lock:
            mids = [m[0] for m in self.sent]
        for mid in mids:
            self.h.on_publish(mid)

    def topics(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [m[2] for m in self.sent if m[1].endswith(suffix)]


def settings(tmp_path: Path, **mqtt: object) -> Settings:
    return validate({"site": "unit", "state_dir": str(tmp_path), "mqtt": dict(mqtt),
                     "cameras": [{"name": "cam", "url": "x.avi"}]})


def wait(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Callable[..., tuple[Publisher, FakeClient]]]:
    pubs: list[Publisher] = []

    def make(**kw: Any) -> tuple[Publisher, FakeClient]:
        clients: list[FakeClient] = []

        def factory(o: ClientOptions, h: ClientHandlers) -> FakeClient:
            clients.append(FakeClient(o, h))
            return clients[0]

        pub = Publisher(settings(tmp_path), None, StateStore(tmp_path), client_factory=factory,
                        **kw).start()
        pubs.append(pub)
        return pub, clients[0]

    yield make
    for p in pubs:
        p.stop(flush_timeout_s=0.1)


def test_options_carry_the_will_and_identity(made: Callable[..., tuple[Publisher, FakeClient]]
                                             ) -> None:
    _, client = made()
    o = client.options
    assert (o.will_topic, o.will_payload, o.client_id) == \
        ("streamd/unit/status", "offline", "streamd-unit")


def test_nothing_leaves_while_disconnected_then_all_in_order(
        made: Callable[..., tuple[Publisher, FakeClient]]) -> None:
    pub, client = made()
    for fid in range(1, 6):
        pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": fid})
    time.sleep(0.05)
    assert client.sent == [] and pub.pending == 5
    client.up()
    wait(lambda: len(client.topics("cam/detections")) == 5)
    assert client.topics("streamd/unit/status") == [b"online"]
    assert client.subscribed == ["streamd/unit/+/snapshot/request"]
    seqs = [int(p.split(b'"seq":')[1].rstrip(b"}")) for p in client.topics("cam/detections")]
    assert seqs == [1, 2, 3, 4, 5]
    assert pub.pending == 5, "QoS 1 rows stay until the broker acknowledges them"
    client.ack_all()
    wait(lambda: pub.pending == 0)


def test_at_most_max_inflight_await_an_acknowledgement(
        made: Callable[..., tuple[Publisher, FakeClient]]) -> None:
    pub, client = made(max_inflight=3)
    client.up()
    for fid in range(10):
        pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": fid})
    wait(lambda: len(client.topics("cam/detections")) == 3)
    time.sleep(0.05)
    assert len(client.topics("cam/detections")) == 3
    first = next(m[0] for m in client.sent if m[1].endswith("cam/detections"))
    client.h.on_publish(first)
    wait(lambda: len(client.topics("cam/detections")) == 4)
    assert pub.pending == 9


def test_acknowledgements_that_come_before_the_mid_is_recorded_count(
        made: Callable[..., tuple[Publisher, FakeClient]]) -> None:
    pub, client = made(max_inflight=2)
    client.auto_ack = True
    client.up()
    for fid in range(50):
        pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": fid})
    wait(lambda: pub.pending == 0)
    assert len(client.topics("cam/detections")) == 50


def test_qos0_refused_while_disconnected_is_sent_after_the_reconnect(
        made: Callable[..., tuple[Publisher, FakeClient]]) -> None:
    pub, client = made()
    client.up()
    client.connected = False  # the socket is gone but no callback came yet
    pub.publish_camera("cam", Kind.STATS, {"n": 1}, qos=0)
    time.sleep(0.05)
    assert client.topics("cam/stats") == [] and pub.pending == 1
    client.up()
    wait(lambda: pub.pending == 0)
    assert len(client.topics("cam/stats")) == 1


def test_listeners_see_stamped_messages_and_cannot_break_publishing(
        made: Callable[..., tuple[Publisher, FakeClient]],
        caplog: pytest.LogCaptureFixture) -> None:
    pub, _ = made()
    seen: list[tuple[str, Kind, Mapping[str, Any]]] = []

    def broken(camera: str, kind: Kind, payload: Mapping[str, Any]) -> None:
        raise RuntimeError("listener bug")

    pub.add_listener(broken)
    pub.add_listener(lambda c, k, p: seen.append((c, k, p)))
    with caplog.at_level(logging.ERROR):
        seq = pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": 7, "ts": 1.5})
        pub.publish_status("cam", "streaming", "rtsp://u:pw@h/x")
        pub.publish_snapshot("cam", b"\xff\xd8")
    assert [(c, k) for c, k, _ in seen] == [("cam", Kind.DETECTIONS), ("cam", Kind.STATUS)]
    det = seen[0][2]
    assert det == {"v": 1, "camera": "cam", "frame_id": 7, "ts": 1.5, "seq": seq}
    status = seen[1][2]
    assert status["state"] == "streaming" and "pw" not in status["reason"]
    assert {"v", "camera", "since"} <= status.keys()
    assert "listener bug" in caplog.text
    assert pub.pending == 3, "a failing listener must not lose the message"


def test_drain_waits_for_the_broker_and_says_what_is_left(
        made: Callable[..., tuple[Publisher, FakeClient]]) -> None:
    pub, client = made()
    for fid in range(3):
        pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": fid})
    t0 = time.monotonic()
    assert pub.drain(0.3) == 3
    assert time.monotonic() - t0 >= 0.3
    client.auto_ack = True
    threading.Timer(0.2, client.up).start()
    assert pub.drain(5.0) == 0


def test_stop_says_offline_and_reports_what_stays_in_the_outbox(
        made: Callable[..., tuple[Publisher, FakeClient]]) -> None:
    pub, client = made()
    client.up()
    client.auto_ack = True
    pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": 1})
    wait(lambda: pub.pending == 0)
    assert pub.stop(flush_timeout_s=1.0) == 0
    assert client.topics("streamd/unit/status")[-1] == b"offline" and client.closed
    assert pub.stop() == 0, "idempotent"


def test_stop_while_the_broker_is_away_keeps_the_messages(
        made: Callable[..., tuple[Publisher, FakeClient]], tmp_path: Path) -> None:
    pub, client = made()
    client.up()
    client.down()
    for fid in range(4):
        pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": fid})
    assert pub.stop(flush_timeout_s=0.2) == 4
    pub.publish_camera("cam", Kind.DETECTIONS, {"frame_id": 5})  # after stop: counted
    assert pub.dropped["detections"] == 1


def test_snapshot_requests_are_routed_retained_ones_ignored(tmp_path: Path) -> None:
    asked: list[str] = []
    clients: list[FakeClient] = []

    def factory(o: ClientOptions, h: ClientHandlers) -> FakeClient:
        clients.append(FakeClient(o, h))
        return clients[0]

    pub = Publisher(settings(tmp_path), None, StateStore(tmp_path), client_factory=factory,
                    on_snapshot_request=asked.append)
    h = clients[0].h
    h.on_message("streamd/unit/gate-1/snapshot/request", b"", False)
    h.on_message("streamd/unit/gate-2/snapshot/request", b"", True)
    assert asked == ["gate-1"]
    pub.outbox.close()
