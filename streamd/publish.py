"""The MQTT side: contract v1 topics and payloads, per-(camera, topic) `seq`, LWT, ordering.

Callers never block on the network: `publish_camera()` stamps the message with its `seq`
and stores it in the durable `Outbox` (SQLite, in the state directory); a pump thread hands
stored messages to paho in order, only while connected, with a bounded number awaiting
PUBACK, and deletes each one when the broker acknowledged it. Broker outages and daemon
restarts therefore lose nothing up to the outbox bound (see `streamd.outbox`).
"""

from __future__ import annotations

import collections
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from streamd.config import Settings
from streamd.outbox import Outbox, Row
from streamd.redact import redact
from streamd.state import Counter, StateStore

log = logging.getLogger(__name__)

CONTRACT_VERSION = 1
EARLY_ACK_TTL_S = 5.0
"""The pump records a mid milliseconds after paho hands it out; paho would need 65 535
messages to reuse one. An early acknowledgement older than this belongs to an old mid."""

def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON; numpy scalars and arrays become plain numbers and lists."""

    def default(o: object) -> object:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(payload, separators=(",", ":"), default=default,
                      ensure_ascii=False).encode()


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
    """Publishes the contract's topics; `start()` returns self, `stop()` flushes then closes."""

    def __init__(self, settings: Settings, password: SecretStr | None, state: StateStore,
                 max_inflight: int = 64) -> None:
        self.settings = settings
        self.prefix = settings.topic_prefix
        self._m = settings.mqtt
        self._state = state
        self._seq: dict[tuple[str, str], Counter] = {}
        self.outbox = Outbox(settings.resolved_state_dir() / "outbox.sqlite",
                             settings.mqtt.max_pending, settings.mqtt.max_pending_bytes)
        self._cursor = 0
        """Highest outbox id handed to paho in this process."""
        self._last_put = self.outbox.last_id()
        """Highest outbox id stored; a backlog from a previous run is sent first."""
        self._inflight: dict[int, int] = {}
        """paho mid → outbox id, for QoS >= 1 messages awaiting PUBACK."""
        self._early_acks: dict[int, float] = {}
        """mid → monotonic time of an on_publish that came before the pump recorded the mid
        (or that belongs to a message nobody records: QoS 0, online/offline). Only a fresh
        entry counts: paho reuses mids, and a stale one must never acknowledge a new
        message before its PUBACK."""
        self._origins: dict[int, tuple[str, float]] = {}
        """outbox id → (camera, capture monotonic time), for capture→publish latency."""
        self._max_inflight = max_inflight
        self._cond = threading.Condition()
        self._stopping = False
        self._connected = False
        self._closed = False
        self.latency: dict[str, LatencyWindow] = collections.defaultdict(LatencyWindow)
        self.on_snapshot_request: Callable[[str], None] | None = None
        """Called (network thread) with the camera named by `<prefix>/<camera>/snapshot/request`."""
        self._client = self._make_client(password)
        self._pump = threading.Thread(target=self._run, name="mqtt-pump", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def _make_client(self, password: SecretStr | None) -> mqtt.Client:
        m = self._m
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.settings.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        if m.username is not None:
            client.username_pw_set(m.username,
                                   password.get_secret_value() if password else None)
        if m.tls is not None:
            client.tls_set(ca_certs=str(m.tls.ca_file) if m.tls.ca_file else None,
                           certfile=str(m.tls.cert_file) if m.tls.cert_file else None,
                           keyfile=str(m.tls.key_file) if m.tls.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(f"{self.prefix}/status", "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> Publisher:
        log.info("mqtt connecting host=%s port=%d client_id=%s prefix=%s", self._m.host,
                 self._m.port, self.settings.client_id, self.prefix)
        self._client.connect_async(self._m.host, self._m.port, keepalive=self._m.keepalive_s)
        self._client.loop_start()
        self._pump.start()
        return self

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Flush what is pending (bounded wait), say `offline`, disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + flush_timeout_s
        with self._cond:
            while len(self.outbox) and self._connected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._stopping = True
            pending = len(self.outbox)
            self._cond.notify_all()
        self._pump.join(2.0)
        if pending:
            log.warning("mqtt stopping with %d messages not acknowledged; they stay in %s "
                        "and are sent after the next start", pending, self.outbox.path)
        if self._connected:
            info = self._client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt could not publish offline: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self.outbox.close()
        for counter in self._seq.values():
            counter.commit()

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
        """Messages dropped by the outbox bound, by kind."""
        return self.outbox.dropped

    # -- publishing --------------------------------------------------------------------------

    def publish_camera(self, camera: str, topic: str, payload: dict[str, Any], *,
                       qos: int | None = None, retain: bool = False,
                       origin_mono: float | None = None) -> int:
        """Queue a per-camera message with the next `seq` of (camera, topic); return it."""
        key = (camera, topic)
        with self._cond:
            counter = self._seq.get(key)
            if counter is None:
                counter = self._seq[key] = self._state.counter(f"seq/{camera}/{topic}")
            seq = counter.next()
            body = {"v": CONTRACT_VERSION, "camera": camera, **payload, "seq": seq}
            self._enqueue(f"{self.prefix}/{camera}/{topic}", encode(body),
                          self._m.qos if qos is None else qos, retain, topic, camera,
                          origin_mono)
        return seq

    def publish_snapshot(self, camera: str, jpeg: bytes) -> None:
        """Retained annotated JPEG on `<prefix>/<camera>/snapshot` (binary, no seq)."""
        with self._cond:
            self._enqueue(f"{self.prefix}/{camera}/snapshot", jpeg, self._m.qos, True,
                          "snapshot", camera, None)

    def publish_status(self, camera: str, state: str, reason: str | None) -> None:
        """Retained camera state; `reason` is redacted (it may quote a source URL)."""
        body = {"v": CONTRACT_VERSION, "camera": camera, "state": state,
                "since": round(time.time(), 6), "reason": redact(reason) if reason else None}
        with self._cond:
            self._enqueue(f"{self.prefix}/{camera}/status", encode(body), self._m.qos, True,
                          "status", camera, None)

    def _enqueue(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str,
                 camera: str | None, origin_mono: float | None) -> None:
        if self._stopping:
            self.outbox.dropped[kind] += 1
            return
        row_id = self.outbox.put(topic, payload, qos, retain, kind, camera, self._cursor)
        self._last_put = max(self._last_put, row_id)
        if origin_mono is not None and camera is not None:
            self._origins[row_id] = (camera, origin_mono)
        self._cond.notify_all()

    def _run(self) -> None:
        """Hand stored messages to paho in order. paho's own lock is taken inside
        `publish()` and held around `on_publish`, so ours is never held across the call."""
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
            info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            if info.rc == mqtt.MQTT_ERR_NO_CONN and row.qos == 0:
                # paho keeps QoS>=1 messages for after the reconnect; QoS 0 it discards.
                batch.appendleft(row)
                with self._cond:
                    self._connected = False
                continue
            with self._cond:
                self._cursor = row.id
                early = self._early_acks.pop(info.mid, None)
                acked = row.qos == 0 or (
                    early is not None and time.monotonic() - early < EARLY_ACK_TTL_S)
                if not acked:
                    self._inflight[info.mid] = row.id
                origin = self._origins.pop(row.id, None)
            if acked:
                self._acked(row.id)
            if origin is not None:
                self.latency[origin[0]].add((time.monotonic() - origin[1]) * 1000.0)

    def _acked(self, row_id: int) -> None:
        self.outbox.remove(row_id)
        with self._cond:
            self._cond.notify_all()  # stop() may be waiting for the outbox to empty

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.error("mqtt connect refused host=%s port=%d reason=%s", self._m.host,
                      self._m.port, reason_code)
            return
        log.info("mqtt connected host=%s port=%d", self._m.host, self._m.port)
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        client.subscribe(f"{self.prefix}/+/snapshot/request", qos=1)
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: ReasonCode, properties: object) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._closed:
            log.warning("mqtt disconnected reason=%s; reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        """The only command topic: a snapshot request, routed to the app as is."""
        camera = msg.topic[len(self.prefix) + 1:].split("/", 1)[0]
        if self.on_snapshot_request is not None and not msg.retain:
            self.on_snapshot_request(camera)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int,
                    reason_code: ReasonCode, properties: object) -> None:
        with self._cond:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:  # before the pump recorded it, or a message nobody records
                now = time.monotonic()
                if len(self._early_acks) > 256:
                    self._early_acks = {m: t for m, t in self._early_acks.items()
                                        if now - t < EARLY_ACK_TTL_S}
                self._early_acks[mid] = now
                return
        self._acked(row_id)
