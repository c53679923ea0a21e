"""The publisher's seam to the network: a small MQTT client interface, and paho behind it.

Like httpx's transport, the client is passed in (`Publisher(client_factory=...)`): the
publisher's ordering, acknowledgement and drain logic only ever sees `MQTTClient` and
`ClientHandlers`, so it can be tested without a broker, and the network library can change
without touching it. `PahoClient` is the real one (paho-mqtt 2.x, MQTT 3.1.1).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from streamd.mqtt import MQTTSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientOptions:
    """Where and how to connect. The will is set before the first connect, so a daemon that
    dies without a word still leaves `offline` behind (`will_topic` None: a session that
    only listens, such as `streamd watch`, leaves none)."""

    host: str
    port: int
    client_id: str
    keepalive_s: int
    will_topic: str | None
    will_payload: str | bytes
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls: bool = False
    will_retain: bool = True


@dataclass(frozen=True)
class ClientHandlers:
    """Callbacks the client calls from its network thread; none may block."""

    on_connect: Callable[[str | None], None]
    """None once connected; else the broker's refusal reason (the client retries)."""
    on_disconnect: Callable[[str], None]
    """The connection is gone (reason); the client reconnects by itself."""
    on_publish: Callable[[int], None]
    """The message with this mid is acknowledged (PUBACK/PUBCOMP; QoS 0: written)."""
    on_message: Callable[[str, bytes, bool], None]
    """(topic, payload, retained) of a message on a subscribed topic."""


class MQTTClient(Protocol):
    """What the publisher needs from an MQTT client."""

    def connect(self) -> None:
        """Start connecting in the background; keep reconnecting until `close()`."""

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> int | None:
        """Hand a message over; its mid, or None when the client could not take it (not
        connected, QoS 0: nothing would send it later). QoS >= 1 is kept for the reconnect."""

    def subscribe(self, topic_filter: str, qos: int) -> None: ...

    def close(self) -> None:
        """Disconnect and stop the network thread; idempotent."""


ClientFactory = Callable[[ClientOptions, ClientHandlers], MQTTClient]


class PahoClient:
    """paho-mqtt 2.x (callback API v2) behind `MQTTClient`; reconnects every 1-4 s."""

    def __init__(self, options: ClientOptions, handlers: ClientHandlers) -> None:
        self._options = options
        self._handlers = handlers
        self._closed = False
        client = paho_client(options)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

    def connect(self) -> None:
        o = self._options
        self._client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> int | None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN and qos == 0:
            return None
        return int(info.mid)

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self._client.subscribe(topic_filter, qos=qos)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: ReasonCode, properties: object) -> None:
        self._handlers.on_connect(str(reason_code) if reason_code.is_failure else None)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: ReasonCode, properties: object) -> None:
        self._handlers.on_disconnect(str(reason_code))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int,
                    reason_code: ReasonCode, properties: object) -> None:
        self._handlers.on_publish(mid)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        self._handlers.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))


def client_options(m: MQTTSettings, password: SecretStr | None, *, client_id: str,
                   will_topic: str | None = None, will_payload: str | bytes = b"",
                   will_retain: bool = True) -> ClientOptions:
    """The `mqtt:` section's broker, login and TLS for one session with its own id and will
    (the contract's publisher, the Sparkplug node and `streamd watch` connect alike)."""
    tls = m.tls
    return ClientOptions(
        host=m.host, port=m.port, client_id=client_id, keepalive_s=m.keepalive_s,
        will_topic=will_topic, will_payload=will_payload, will_retain=will_retain,
        username=m.username,
        password=password.get_secret_value() if password is not None else None,
        tls=tls is not None, ca_file=tls.ca_file if tls else None,
        cert_file=tls.cert_file if tls else None, key_file=tls.key_file if tls else None)


def paho_client(options: ClientOptions) -> mqtt.Client:
    """A paho 2.x client (MQTT 3.1.1, clean session) with the login, TLS, will and reconnect
    pacing (1-4 s) of `options`, and no offline queue; the callbacks are the caller's."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=options.client_id,
                         protocol=mqtt.MQTTv311, clean_session=True)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls:
        client.tls_set(ca_certs=_str(options.ca_file), certfile=_str(options.cert_file),
                       keyfile=_str(options.key_file), cert_reqs=ssl.CERT_REQUIRED)
    if options.will_topic is not None:
        client.will_set(options.will_topic, options.will_payload, qos=1,
                        retain=options.will_retain)
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    client.max_queued_messages_set(0)
    return client


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
