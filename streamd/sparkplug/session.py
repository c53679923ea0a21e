"""The edge node's own MQTT session: its will is the NDEATH, and `bdSeq` follows its CONNECTs.

Sparkplug ties a node's death certificate to one MQTT session: the NDEATH registered as the
will carries a `bdSeq` that the following NBIRTH repeats, and every new CONNECT uses the
next `bdSeq` (0-255, wrapping). The contract-v1 publisher has a will of its own
(`<prefix>/status offline`), so the edge node cannot share its session. paho reconnects by
itself; `on_disconnect` registers the next will before that happens, and the value is kept
in the state directory so a restarted daemon does not reuse the `bdSeq` of the session it
replaces (a host would otherwise match the old session's late NDEATH to the new one).

paho callbacks only translate into events on the node's queue; the node's worker thread
owns everything else.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from streamd.mqttclient import client_options, paho_client
from streamd.sparkplug.codec import DataType, Metric, encode_payload, now_ms
from streamd.sparkplug.model import BDSEQ

if TYPE_CHECKING:
    from streamd.mqtt import MQTTSettings

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"


@dataclass(frozen=True)
class Topics:
    """Sparkplug topic names of one edge node."""

    group_id: str
    edge_node_id: str
    primary_host_id: str | None

    def node(self, message_type: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{message_type}/{self.edge_node_id}"

    def device(self, message_type: str, device: str) -> str:
        return f"{self.node(message_type)}/{device}"

    @property
    def state(self) -> str | None:
        """The primary host's STATE topic (Sparkplug 3.0: spBv1.0/STATE/<host id>)."""
        return f"{NAMESPACE}/STATE/{self.primary_host_id}" if self.primary_host_id else None


# Events for the node's worker (posted from paho's network thread).
@dataclass(frozen=True)
class Connected:
    bdseq: int


@dataclass(frozen=True)
class Disconnected:
    pass


@dataclass(frozen=True)
class HostState:
    online: bool
    timestamp_ms: int


@dataclass(frozen=True)
class Command:
    """NCMD (`device` None) or DCMD payload bytes."""

    device: str | None
    payload: bytes


class BdSeqStore:
    """The last `bdSeq` used, in a one-line file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        try:
            return int(self.path.read_text().strip()) % 256
        except (OSError, ValueError):
            return None

    def save(self, value: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bdseq.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{value}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            log.error("cannot save sparkplug bdSeq to %s: %s", self.path, exc)


def death_payload(bdseq: int) -> bytes:
    """NDEATH: a timestamp and the `bdSeq` metric, no `seq`."""
    now = now_ms()
    return encode_payload([Metric(BDSEQ, DataType.UINT64, bdseq, timestamp_ms=now)], now,
                          seq=None)


class Session:
    """One paho client. `start()` connects in the background; `cycle()` ends the session
    with an NDEATH and opens a new one (the primary host went offline); `close()` ends it
    with an NDEATH."""

    def __init__(self, mqtt_settings: MQTTSettings, password: SecretStr | None,
                 client_id: str, topics: Topics, bdseq_store: BdSeqStore,
                 events: queue.SimpleQueue[Any]) -> None:
        self._m = mqtt_settings
        self.topics = topics
        self._events = events
        self._bdseq_store = bdseq_store
        last = bdseq_store.load()
        self.bdseq = 0 if last is None else (last + 1) % 256
        """The bdSeq of the will registered for the next (or current) CONNECT."""
        self._client_id = client_id
        self._password = password
        self._client = self._make_client()
        bdseq_store.save(self.bdseq)

    def _make_client(self) -> mqtt.Client:
        """A fresh paho client per session: paho leaks its wake-up socket pair when one
        client's network thread is started a second time."""
        client = paho_client(client_options(
            self._m, self._password, client_id=self._client_id,
            will_topic=self.topics.node("NDEATH"), will_payload=death_payload(self.bdseq),
            will_retain=False))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _register_will(self) -> None:
        """Keep the bdSeq of the next CONNECT, and make it the will's."""
        self._bdseq_store.save(self.bdseq)
        self._client.will_set(self.topics.node("NDEATH"), death_payload(self.bdseq), qos=1,
                              retain=False)

    def start(self) -> None:
        log.info("sparkplug connecting host=%s port=%d node=%s", self._m.host, self._m.port,
                 self.topics.node("NBIRTH"))
        self._client.connect_async(self._m.host, self._m.port, keepalive=self._m.keepalive_s)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> mqtt.MQTTMessageInfo | None:
        """Hand a message to paho; None when there is no connection (nothing was queued)."""
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        return info if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    @staticmethod
    def written(info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
        """Wait until paho wrote the message to the socket (QoS 0) or the broker acked it."""
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def _end(self, timeout_s: float) -> None:
        """Publish the NDEATH explicitly (a clean DISCONNECT suppresses the will), then
        disconnect and stop the network thread."""
        info = self.publish(self.topics.node("NDEATH"), death_payload(self.bdseq), qos=1)
        if info is not None and not self.written(info, timeout_s):
            log.warning("sparkplug NDEATH not acknowledged within %.1f s", timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    def cycle(self, timeout_s: float = 2.0) -> None:
        """End this session (NDEATH) and connect again with the next bdSeq."""
        self._end(timeout_s)
        self._client = self._make_client()
        self.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self._end(timeout_s)

    # paho callbacks (network thread) --------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            log.error("sparkplug connect refused host=%s port=%d reason=%s", self._m.host,
                      self._m.port, reason_code)
            return
        log.info("sparkplug connected bdSeq=%d", self.bdseq)
        subs = [(self.topics.node("NCMD"), 1), (self.topics.device("DCMD", "+"), 1)]
        if self.topics.state is not None:
            subs.append((self.topics.state, 1))
        client.subscribe(subs)
        self._events.put(Connected(self.bdseq))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: ReasonCode, properties: object) -> None:
        # The next CONNECT (paho's reconnect, or cycle()) must carry the next bdSeq.
        self.bdseq = (self.bdseq + 1) % 256
        self._register_will()
        self._events.put(Disconnected())

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self.topics.state:
            try:
                body = json.loads(msg.payload)
                online, ts = body["online"], int(body.get("timestamp", 0))
            except (ValueError, KeyError, TypeError):
                log.warning("sparkplug ignoring malformed STATE on %s: %r", topic,
                            msg.payload[:100])
                return
            self._events.put(HostState(bool(online), ts))
        elif topic == self.topics.node("NCMD"):
            self._events.put(Command(None, bytes(msg.payload)))
        elif topic.startswith(self.topics.node("DCMD") + "/"):
            self._events.put(Command(topic.rsplit("/", 1)[1], bytes(msg.payload)))
