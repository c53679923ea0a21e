"""The MQTT side: per-(camera, kind) `seq`, the durable outbox, ordering, acknowledgements.

Callers never block on the network: `publish_camera()` stamps the message with its `seq`
(payloads come from `streamd.contract`) and stores it in the durable `Outbox` (SQLite, in
the state directory); a pump thread hands stored messages to the MQTT client in order, only
while connected, with a bounded number awaiting PUBACK, and deletes each one when the
broker acknowledged it. Broker outages and daemon restarts therefore lose nothing up to the
outbox bound (see `streamd.outbox`). The client comes from a factory passed in
(`streamd.mqttclient`), paho by default.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import numpy as np
from pydantic import SecretStr

from streamd import contract
from streamd.config import Settings
from streamd.contract import CameraState, Kind, MessageListener
from streamd.mqttclient import ClientFactory, ClientHandlers, PahoClient, client_options
from streamd.outbox import Outbox, Row
from streamd.state import Counter, StateStore
from streamd.threads import Deadline

log = logging.getLogger(__name__)

EARLY_ACK_TTL_S = 5.0
"""The pump records a mid milliseconds after the client hands it out; paho would need
65 535 messages to reuse one. An early acknowledgement older than this belongs to an old
mid."""


class LatencyWindow:
    """The last N latencies of one camera, for p50/p95/p99 in stats."""

    def __init__(self, size: int = 2048) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentiles(self) -> dict[str, float] | None:
        with self._lock:
            if not self._values:
                return None
            arr = np.fromiter(self._values, np.float64)
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return {"p50": round(float(p50), 1), "p95": round(float(p95), 1),
                "p99": round(float(p99), 1)}


class Publisher:
    """Publishes the contract's topics; `start()` returns self, `stop()` flushes then closes.

    `on_snapshot_request(camera)` is called (network thread) for every message on
    `<prefix>/<camera>/snapshot/request`. Listeners (`add_listener`) see every camera
    message as it goes on the wire.
    """

    def __init__(self, settings: Settings, password: SecretStr | None, state: StateStore,
                 *, client_factory: ClientFactory = PahoClient, max_inflight: int = 64,
                 on_snapshot_request: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.prefix = settings.topic_prefix
        self._m = settings.mqtt
        self._state = state
        self._seq: dict[tuple[str, Kind], Counter] = {}
        self.outbox = Outbox(settings.resolved_state_dir() / "outbox.sqlite",
                             settings.mqtt.max_pending, settings.mqtt.max_pending_bytes)
        self._cursor = 0
        """Highest outbox id handed to the client in this process."""
        self._last_put = self.outbox.last_id()
        """Highest outbox id stored; a backlog from a previous run is sent first."""
        self._inflight: dict[int, int] = {}
        """mid → outbox id, for QoS >= 1 messages awaiting PUBACK."""
        self._early_acks: dict[int, float] = {}
        """mid → monotonic time of an acknowledgement that came before the pump recorded the
        mid (or that belongs to a message nobody records: QoS 0, online/offline). Only a
        fresh entry counts: mids are reused, and a stale one must never acknowledge a new
        message before its PUBACK."""
        self._origins: dict[int, tuple[str, float]] = {}
        """outbox id → (camera, capture monotonic time), for capture→publish latency."""
        self._max_inflight = max_inflight
        self._cond = threading.Condition()
        self._stopping = False
        self._connected = False
        self._closed = False
        self._listeners: list[MessageListener] = []
        self.latency: dict[str, LatencyWindow] = collections.defaultdict(LatencyWindow)
        self._on_snapshot_request = on_snapshot_request
        self._client = client_factory(client_options(
            settings.mqtt, password, client_id=settings.client_id,
            will_topic=contract.site_topic(settings.topic_prefix),
            will_payload=contract.SITE_OFFLINE), ClientHandlers(
            self._on_connect, self._on_disconnect, self._on_publish, self._on_message))
        self._pump = threading.Thread(target=self._run, name="mqtt-pump", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Publisher:
        log.info("mqtt connecting host=%s port=%d client_id=%s prefix=%s", self._m.host,
                 self._m.port, self.settings.client_id, self.prefix)
        self._client.connect()
        self._pump.start()
        return self

    def drain(self, timeout_s: float) -> int:
        """Wait (the client reconnecting meanwhile) until the broker acknowledged everything
        stored, at most `timeout_s`; returns how many messages are still waiting."""
        deadline = Deadline(timeout_s)
        with self._cond:
            while len(self.outbox) and not deadline.expired:
                self._cond.wait(deadline.remaining())
            return len(self.outbox)

    def stop(self, flush_timeout_s: float = 5.0) -> int:
        """Flush what is pending while connected (bounded wait), say `offline`, disconnect.
        Returns the messages left in the outbox for the next start. Idempotent."""
        if self._closed:
            return 0
        self._closed = True
        deadline = Deadline(flush_timeout_s)
        with self._cond:
            while len(self.outbox) and self._connected and not deadline.expired:
                self._cond.wait(deadline.remaining())
            self._stopping = True
            pending = len(self.outbox)
            self._cond.notify_all()
        self._pump.join(2.0)
        if pending:
            log.warning("mqtt stopping with %d messages not acknowledged; they stay in %s "
                        "and are sent after the next start", pending, self.outbox.path)
        if self._connected:
            mid = self._client.publish(contract.site_topic(self.prefix), contract.SITE_OFFLINE,
                                       qos=1, retain=True)
            if mid is None or not self._wait_ack(mid, max(0.5, deadline.remaining())):
                log.warning("mqtt could not confirm offline before disconnecting")
        self._client.close()
        self.outbox.close()
        for counter in self._seq.values():
            counter.commit()
        return pending

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker."""
        return len(self.outbox)

    @property
    def dropped(self) -> collections.Counter[str]:
        """Messages dropped by the outbox bound (or published after stop), by kind."""
        return self.outbox.dropped

    def add_listener(self, listener: MessageListener) -> None:
        """Call `listener(camera, kind, payload)` for every camera message (detections,
        descriptions, stats, status) once it is stamped and stored. Listeners run in the
        publishing thread and must not block; their exceptions are logged, never raised."""
        with self._cond:
            self._listeners = [*self._listeners, listener]

    # -- publishing --------------------------------------------------------------------------

    def publish_camera(self, camera: str, kind: Kind | str, payload: Mapping[str, Any], *,
                       qos: int | None = None, retain: bool = False,
                       origin_mono: float | None = None) -> int:
        """Queue a per-camera message with the next `seq` of (camera, kind); return it."""
        kind = Kind(kind)
        with self._cond:
            counter = self._seq.get((camera, kind))
            if counter is None:
                counter = self._seq[camera, kind] = self._state.counter(
                    f"seq/{camera}/{kind.value}")
            body = contract.stamp(camera, payload, counter.next())
            self._enqueue(contract.camera_topic(self.prefix, camera, kind),
                          contract.encode(body), self._m.qos if qos is None else qos, retain,
                          kind, camera, origin_mono)
            listeners = self._listeners
        self._notify(listeners, camera, kind, body)
        return int(body["seq"])

    def publish_snapshot(self, camera: str, jpeg: bytes) -> None:
        """Retained annotated JPEG on `<prefix>/<camera>/snapshot` (binary, no seq)."""
        with self._cond:
            self._enqueue(contract.camera_topic(self.prefix, camera, Kind.SNAPSHOT), jpeg,
                          self._m.qos, True, Kind.SNAPSHOT, camera, None)

    def publish_status(self, camera: str, state: CameraState | str, reason: str | None) -> None:
        """Retained camera state; the reason is redacted (it may quote a source URL)."""
        body = contract.status(camera, CameraState(state), reason)
        with self._cond:
            self._enqueue(contract.camera_topic(self.prefix, camera, Kind.STATUS),
                          contract.encode(body), self._m.qos, True, Kind.STATUS, camera, None)
            listeners = self._listeners
        self._notify(listeners, camera, Kind.STATUS, body)

    def _notify(self, listeners: list[MessageListener], camera: str, kind: Kind,
                body: Mapping[str, Any]) -> None:
        for listener in listeners:
            try:
                listener(camera, kind, body)
            except Exception:
                log.exception("message listener %r failed on %s/%s", listener, camera,
                              kind.value)

    def _enqueue(self, topic: str, payload: bytes, qos: int, retain: bool, kind: Kind,
                 camera: str | None, origin_mono: float | None) -> None:
        if self._stopping:
            self.outbox.dropped[kind.value] += 1
            return
        row_id = self.outbox.put(topic, payload, qos, retain, kind, camera, self._cursor)
        self._last_put = max(self._last_put, row_id)
        if origin_mono is not None and camera is not None:
            self._origins[row_id] = (camera, origin_mono)
        self._cond.notify_all()

    def _run(self) -> None:
        """Hand stored messages to the client in order. paho takes its own lock inside
        `publish()` and holds it around `on_publish`, so ours is never held across the call."""
        batch: collections.deque[Row] = collections.deque()
        while True:
            with self._cond:
                while not self._stopping and not (
                        self._connected and (batch or self._last_put > self._cursor)
                        and len(self._inflight) < self._max_inflight):
                    self._cond.wait()
                if self._stopping:
                    return
            if not batch:
                batch.extend(self.outbox.after(self._cursor, 64))
                if not batch:  # rows above the cursor were dropped by the bound
                    with self._cond:
                        self._cursor = max(self._cursor, min(self._last_put,
                                                             self.outbox.last_id()))
                    continue
            row = batch.popleft()
            mid = self._client.publish(row.topic, row.payload, row.qos, row.retain)
            if mid is None:  # not connected, QoS 0: the client dropped it, send it again
                batch.appendleft(row)
                with self._cond:
                    self._connected = False
                continue
            with self._cond:
                self._cursor = row.id
                early = self._early_acks.pop(mid, None)
                acked = row.qos == 0 or (
                    early is not None and time.monotonic() - early < EARLY_ACK_TTL_S)
                if not acked:
                    self._inflight[mid] = row.id
                origin = self._origins.pop(row.id, None)
            if acked:
                self._acked(row.id)
            if origin is not None:
                self.latency[origin[0]].add((time.monotonic() - origin[1]) * 1000.0)

    def _acked(self, row_id: int) -> None:
        self.outbox.remove(row_id)
        with self._cond:
            self._cond.notify_all()  # stop() and drain() may be waiting for the outbox

    def _wait_ack(self, mid: int, timeout_s: float) -> bool:
        """Wait for the acknowledgement of a message the pump does not track (offline)."""
        deadline = Deadline(timeout_s)
        with self._cond:
            while not deadline.expired:
                if self._early_acks.pop(mid, None) is not None:
                    return True
                self._cond.wait(deadline.remaining())
        return False

    # -- client callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, refused: str | None) -> None:
        if refused is not None:
            log.error("mqtt connect refused host=%s port=%d reason=%s", self._m.host,
                      self._m.port, refused)
            return
        log.info("mqtt connected host=%s port=%d", self._m.host, self._m.port)
        self._client.publish(contract.site_topic(self.prefix), contract.SITE_ONLINE, qos=1,
                             retain=True)
        self._client.subscribe(contract.snapshot_request_filter(self.prefix), qos=1)
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, reason: str) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._closed:
            log.warning("mqtt disconnected reason=%s; reconnecting", reason)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """The only command topic: a snapshot request, routed as is."""
        camera = topic[len(self.prefix) + 1:].split("/", 1)[0]
        if self._on_snapshot_request is not None and not retained:
            self._on_snapshot_request(camera)

    def _on_publish(self, mid: int) -> None:
        with self._cond:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:  # before the pump recorded it, or a message nobody records
                now = time.monotonic()
                if len(self._early_acks) > 256:
                    self._early_acks = {m: t for m, t in self._early_acks.items()
                                        if now - t < EARLY_ACK_TTL_S}
                self._early_acks[mid] = now
                self._cond.notify_all()
                return
        self._acked(row_id)
