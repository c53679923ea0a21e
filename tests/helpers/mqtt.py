"""A real mosquitto broker per test, and a real MQTT subscriber that records what arrives.

Tests assert on what a SCADA subscriber would see on the wire (topics, retain flags, payloads,
ordering), so both sides are real: mosquitto started on a free loopback port, and a paho-mqtt
2.x client (callback API v2). Nothing here mocks the protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.procs import die_with_parent, terminate

MOSQUITTO = os.environ.get("STREAMD_TEST_MOSQUITTO") or shutil.which("mosquitto") \
    or "/usr/sbin/mosquitto"
"""mosquitto binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""

T = TypeVar("T")


def wait_port(host: str, port: int, timeout_s: float, alive: Callable[[], bool] | None = None
              ) -> None:
    """Return once ``host:port`` accepts a TCP connection; raise TimeoutError otherwise, or
    RuntimeError as soon as ``alive()`` says the server process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if alive is not None and not alive():
                raise RuntimeError(f"server for {host}:{port} exited while starting") from exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts on {host}:{port} after {timeout_s} s") \
                    from exc
            time.sleep(0.05)


class Mosquitto:
    """A mosquitto process on a fixed loopback port with a config written to ``workdir``.

    The port is fixed at construction so ``restart()`` brings the broker back at the same
    address: that is how tests check that the daemon reconnects and that its outbox loses
    nothing while the broker is away. ``start()`` returns ``self``; ``stop()`` is idempotent.
    """

    def __init__(self, port: int, workdir: str | os.PathLike[str], *,
                 persistence: bool = False, users: dict[str, str] | None = None,
                 host: str = "127.0.0.1", extra_conf: Iterable[str] = ()) -> None:
        self.host = host
        self.port = port
        self.workdir = Path(workdir)
        self.persistence = persistence
        self.users = dict(users or {})
        self.extra_conf = list(extra_conf)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    def _write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            # A test may publish thousands of QoS 1 detections while the subscriber is slow.
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the `mosquitto` user, which cannot read a
            # pytest tmp dir (mode 0700).
            lines.append("user root")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/",
                      "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if self.users:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password],
                               check=True, capture_output=True, timeout=10)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        lines += self.extra_conf
        self.conf_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        """Start the broker; return once it accepts connections."""
        if self.running:
            raise RuntimeError("mosquitto already running")
        self._write_conf()
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        try:
            wait_port(self.host, self.port, timeout_s, alive=lambda: self.running)
        except BaseException as exc:
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_text()}"
                               ) from exc
        return self

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM (mosquitto saves persistence then), SIGKILL after ``timeout_s``. Returns the
        exit status, None if it was not running. Safe to call twice."""
        proc, self.proc = self.proc, None
        code = terminate(proc, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a clean disconnect (no persistence save)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def restart(self, down_s: float = 0.0, timeout_s: float = 10.0) -> Mosquitto:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start(timeout_s)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Message:
    """One received message. ``data`` is the decoded JSON, or the text when the payload is not
    JSON (``online``/``offline``), or None when it is not UTF-8. ``received`` is wall-clock
    ``time.time()`` at arrival, to compare with the ``ts`` the daemon stamped."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received: float
    index: int
    data: Any = field(default=None)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    @property
    def json(self) -> dict[str, Any]:
        """The payload as a JSON object; an AssertionError naming the topic if it is not."""
        assert isinstance(self.data, dict), f"{self.topic}: not a JSON object: {self.payload!r}"
        return self.data


def _decode(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class Collector:
    """A subscriber that records every message under its topic filters, thread-safely.

    It subscribes in ``on_connect`` so a broker restart (paho reconnects by itself) re-creates
    the subscription, and counts connects/disconnects so a test can wait for the reconnect
    before asserting on what arrives after it. ``start()`` returns only after the broker
    acknowledged the subscription, so nothing published afterwards can be missed.

    With ``clean_session=False`` (and a fixed ``client_id``) the broker queues QoS 1 messages
    for it while it is disconnected; with a persistent broker that survives a broker restart,
    so a test can tell messages the daemon lost from messages the subscriber missed.
    """

    def __init__(self, host: str, port: int, topics: str | Iterable[str] = "streamd/#", *,
                 qos: int = 1, client_id: str | None = None, clean_session: bool = True,
                 username: str | None = None, password: str | None = None) -> None:
        self.host = host
        self.port = port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self._lock = threading.Condition(threading.RLock())
        self._messages: list[Message] = []
        self.connects = 0
        self.disconnects = 0
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-collector-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=clean_session)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any,
                    _props: Any) -> None:
        if reason.is_failure:
            return
        with self._lock:
            self.connects += 1
            self._lock.notify_all()
        self._subscribed.clear()
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, _reason: Any,
                       _props: Any) -> None:
        with self._lock:
            self.disconnects += 1
            self._lock.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, _mid: int, reasons: Any,
                      _props: Any) -> None:
        if not any(r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        with self._lock:
            self._messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain),
                                          msg.qos, now, len(self._messages),
                                          _decode(msg.payload)))
            self._lock.notify_all()

    # lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> Collector:
        """Connect and return once the subscription is acknowledged."""
        self.client.connect_async(self.host, self.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"collector could not subscribe to {self.topics} on "
                               f"{self.host}:{self.port} in {timeout_s} s")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread; safe to call twice."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_subscribed(self, timeout_s: float = 15.0) -> None:
        """After a broker restart: wait until the subscription is back."""
        if not self._subscribed.wait(timeout_s):
            raise AssertionError(f"collector not re-subscribed within {timeout_s} s")

    def publish(self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False,
                timeout_s: float = 5.0) -> None:
        """Publish and wait until the broker acknowledged it (for QoS > 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic} not acknowledged in {timeout_s} s")

    # queries ------------------------------------------------------------------------------

    def cursor(self) -> int:
        """Index of the next message to arrive: pass as ``start`` to look only at later ones."""
        with self._lock:
            return len(self._messages)

    def messages(self, topic_suffix: str | None = None, start: int = 0) -> list[Message]:
        """Messages received so far (from index ``start``), in arrival order, whose topic
        ends with ``topic_suffix`` (e.g. ``"/cam1/detections"``, or a full topic)."""
        with self._lock:
            msgs = self._messages[start:]
        if topic_suffix is None:
            return msgs
        return [m for m in msgs if m.topic == topic_suffix or m.topic.endswith(topic_suffix)]

    def last(self, topic_suffix: str, start: int = 0) -> Message | None:
        msgs = self.messages(topic_suffix, start)
        return msgs[-1] if msgs else None

    def wait_for(self, predicate: Callable[[Collector], T | None], timeout_s: float,
                 what: str = "condition") -> T:
        """Wait until ``predicate(self)`` returns something truthy and return it; on timeout
        raise an AssertionError that says what was awaited and what did arrive."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                result = predicate(self)  # the lock is an RLock: predicate may query
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.2))
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                             f"received {self.summary()}")

    def wait_message(self, topic_suffix: str,
                     match: Callable[[Message], bool] = lambda m: True,
                     timeout_s: float = 10.0, start: int = 0) -> Message:
        """The first message (from index ``start``) on ``topic_suffix`` that ``match``es."""
        def find(c: Collector) -> Message | None:
            return next((m for m in c.messages(topic_suffix, start) if match(m)), None)
        return self.wait_for(find, timeout_s, f"a matching message on {topic_suffix!r}")

    def wait_count(self, topic_suffix: str, count: int, timeout_s: float = 10.0,
                   start: int = 0) -> list[Message]:
        """At least ``count`` messages on ``topic_suffix`` (from index ``start``)."""
        def enough(c: Collector) -> list[Message] | None:
            msgs = c.messages(topic_suffix, start)
            return msgs if len(msgs) >= count else None
        return self.wait_for(enough, timeout_s, f"{count} messages on {topic_suffix!r}")

    def summary(self, limit: int = 8) -> str:
        """Per-topic counts and the last payloads: what a failing test should print."""
        msgs = self.messages()
        counts: dict[str, int] = {}
        for m in msgs:
            counts[m.topic] = counts.get(m.topic, 0) + 1
        tail = "\n".join(f"  {m.topic} retain={m.retain}: {m.text[:200]}"
                         for m in msgs[-limit:])
        return f"{len(msgs)} messages {counts}\n{tail}"


def read_retained(host: str, port: int, topic: str, timeout_s: float = 5.0) -> Message | None:
    """What a subscriber joining now gets for ``topic``: the retained message, or None.

    Uses a fresh client, because only a new subscription is sent retained messages. To tell
    "no retained message" from "not arrived yet" without sleeping, it also subscribes to a
    private marker topic and publishes to it: mosquitto sends the retained messages right
    after the SUBACK, so once the marker is back, anything retained has arrived."""
    marker = f"test-marker/{uuid.uuid4().hex}"
    with Collector(host, port, [topic, marker]) as c:
        c.publish(marker, b"x", qos=1)
        c.wait_message(marker, timeout_s=timeout_s)
        return next((m for m in c.messages() if m.topic == topic and m.retain), None)
