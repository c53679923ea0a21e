"""streamd as a Sparkplug B 3.0 edge node: the daemon is the node, each camera a device.

Contract-v1 messages come in through `listener` (the publisher's message-listener seam),
which only enqueues. One worker thread owns all Sparkplug state — `seq`, births, aliases,
the metric values — so the order on the wire is the order of the work queue. The
`Recorder` turns each message into a durable row of the node's own outbox (the contract
outbox's SQLite store, `sparkplug-outbox.sqlite` in the state directory); rows are sent
only while the node is *live*: connected, born, and — with `primary_host_id` — while the
primary host's STATE says online. After a reconnect the births go first, then the stored
rows in order, their metrics flagged `is_historical` so a host files them into history
without overwriting the live value.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from streamd.outbox import Outbox, Row
from streamd.sparkplug import model
from streamd.sparkplug.codec import DataType, DecodeError, Metric, decode_payload, now_ms
from streamd.sparkplug.recorder import DDEATH, Recorder, decode_row
from streamd.sparkplug.sender import Sender
from streamd.sparkplug.session import (
    BdSeqStore,
    Command,
    Connected,
    Disconnected,
    HostState,
    Session,
    Topics,
)
from streamd.sparkplug.settings import SparkplugSettings

if TYPE_CHECKING:
    from streamd.config import Settings
    from streamd.mqtt import MQTTSettings

log = logging.getLogger(__name__)

TICK_S = 0.2
"""Longest the worker sleeps: the idle fallback is checked this often."""
BATCH = 64
"""Stored messages sent per round before the worker looks at its queue again."""


@dataclass(frozen=True)
class NodeInfo:
    """What the NBIRTH says about the daemon."""

    version: str
    detector_backend: str
    detector_model: str


@dataclass(frozen=True)
class _Message:
    camera: str
    kind: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class _Camera:
    name: str
    added: bool


@dataclass(frozen=True)
class _Stop:
    pass


class EdgeNode:
    """`start()` returns self; `stop()` sends what it can, publishes the NDEATH and
    disconnects; idempotent. `listener`, `add_camera` and `remove_camera` never block."""

    def __init__(self, settings: SparkplugSettings, mqtt: MQTTSettings,
                 password: SecretStr | None, *, edge_node_id: str, client_id: str,
                 state_dir: Path, info: NodeInfo, labels: Iterable[str],
                 cameras: Iterable[str],
                 request_snapshot: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        topics = Topics(settings.group_id, edge_node_id, settings.primary_host_id)
        self._session = Session(mqtt, password, client_id, topics,
                                BdSeqStore(state_dir / "sparkplug-bdseq"), self._events)
        self.outbox = Outbox(state_dir / "sparkplug-outbox.sqlite", mqtt.max_pending,
                             mqtt.max_pending_bytes)
        self._info = info
        self._rec = Recorder(self.outbox, labels, cameras, settings.idle_after_s)
        self._request_snapshot = request_snapshot
        self._sender = Sender(self._session, topics)
        self._connected = False
        self._host_online = settings.primary_host_id is None
        self._host_ts = -1
        self._bdseq = 0
        self._rebirth = False
        self._historical_up_to = self.outbox.last_id()
        """Stored rows up to this id were stored while the node was not live."""
        self._thread = threading.Thread(target=self._run, name="sparkplug", daemon=True)
        self._started = self._stopped = False

    @classmethod
    def create(cls, settings: Settings, password: SecretStr | None, info: NodeInfo,
               labels: Iterable[str],
               request_snapshot: Callable[[str], None] | None = None) -> EdgeNode:
        """From the root settings: the `mqtt:` broker and the password read with it, the
        enabled cameras, the site as default node id. `labels` are those the detector can
        report after `detector.classes`."""
        sp = settings.sparkplug
        if sp is None:
            raise ValueError("the config has no sparkplug: section")
        return cls(sp, settings.mqtt, password,
                   edge_node_id=sp.edge_node_id or settings.site,
                   client_id=sp.client_id or f"{settings.client_id}-spb",
                   state_dir=settings.resolved_state_dir(), info=info, labels=labels,
                   cameras=[c.name for c in settings.cameras if c.enabled],
                   request_snapshot=request_snapshot)

    # -- the seam ----------------------------------------------------------------------------

    def listener(self, camera: str, kind: str, payload: Mapping[str, Any]) -> None:
        """A contract-v1 message (status, detections, descriptions, stats) was published."""
        self._events.put(_Message(camera, str(getattr(kind, "value", kind)), payload))

    def add_camera(self, name: str) -> None:
        self._events.put(_Camera(name, True))

    def remove_camera(self, name: str) -> None:
        self._events.put(_Camera(name, False))

    @property
    def sent(self) -> Counter[str]:
        """Messages sent, by Sparkplug message type."""
        return self._sender.sent

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EdgeNode:
        if self._started:
            raise RuntimeError("edge node already started")
        self._started = True
        self._session.start()
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._stopped or not self._started:
            return
        self._stopped = True
        self._events.put(_Stop())
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("sparkplug worker did not stop within %.1f s", timeout_s)
        self.outbox.close()

    def __enter__(self) -> EdgeNode:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- worker ------------------------------------------------------------------------------

    @property
    def _live(self) -> bool:
        return self._sender.born

    def _run(self) -> None:
        while True:
            backlog = self._live and len(self.outbox) > 0
            try:  # with stored messages to send, only look at the queue, do not wait on it
                event = self._events.get(block=not backlog, timeout=TICK_S)
            except queue.Empty:
                event = None
            try:
                while event is not None:  # everything already queued, then send
                    if isinstance(event, _Stop):
                        self._finish()
                        return
                    self._handle(event)
                    event = self._events.get_nowait() if not self._events.empty() else None
                self._rec.idle_check()
                if self._live:
                    self._flush()
            except Exception:  # the node must outlive one bad message
                log.exception("sparkplug worker error")
                time.sleep(TICK_S)  # and a persistent fault must not spin

    def _finish(self) -> None:
        while not self._events.empty():
            event = self._events.get_nowait()
            if not isinstance(event, _Stop):
                self._handle(event)
        deadline = time.monotonic() + 2.0
        while self._live and len(self.outbox) and time.monotonic() < deadline:
            self._flush()
        if len(self.outbox):
            log.warning("sparkplug stopping with %d messages unsent; they stay in %s",
                        len(self.outbox), self.outbox.path)
        self._session.close()

    def _handle(self, event: object) -> None:
        if isinstance(event, _Message):
            self._rec.message(event.camera, event.kind, event.payload)
        elif isinstance(event, Connected):
            self._connected, self._bdseq = True, event.bdseq
            self._host_online = self.settings.primary_host_id is None
            if self._host_online:
                self._go_live()
        elif isinstance(event, Disconnected):
            self._connected = False
            self._sender.unborn()
        elif isinstance(event, HostState):
            self._on_host_state(event)
        elif isinstance(event, Command):
            self._on_command(event)
        elif isinstance(event, _Camera):
            self._rec.camera(event.name, event.added)

    def _on_host_state(self, event: HostState) -> None:
        if event.timestamp_ms < self._host_ts:
            return  # an older STATE delivered late
        self._host_ts = event.timestamp_ms
        self._host_online = event.online
        if event.online and self._connected and not self._live:
            log.info("sparkplug primary host %s online", self.settings.primary_host_id)
            self._go_live()
        elif not event.online and self._live:
            # Sparkplug 3.0: end the session with an NDEATH, connect again and wait for
            # the host; meanwhile data is stored.
            log.warning("sparkplug primary host %s offline; storing data until it is back",
                        self.settings.primary_host_id)
            self._sender.unborn()
            self._connected = False
            self._session.cycle()

    def _go_live(self) -> None:
        self._historical_up_to = self.outbox.last_id()
        self._births()

    def _births(self) -> None:
        """NBIRTH (seq 0), then a DBIRTH for every living camera."""
        self._rebirth = False
        now = now_ms()
        node = [
            Metric(model.BDSEQ, DataType.UINT64, self._bdseq),
            Metric(model.REBIRTH, DataType.BOOLEAN, False),
            Metric(model.VERSION, DataType.STRING, self._info.version),
            Metric(model.DETECTOR_BACKEND, DataType.STRING, self._info.detector_backend),
            Metric(model.DETECTOR_MODEL, DataType.STRING, self._info.detector_model),
            Metric(model.CAMERA_COUNT, DataType.INT32, len(self._rec.cameras)),
        ]
        devices = {name: dev.metrics.birth_metrics(self._rec.labels, now)
                   for name, dev in self._rec.devices.items() if dev.alive}
        self._sender.births(node, devices, self._rec.labels, now)

    # -- commands ------------------------------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        try:
            payload = decode_payload(cmd.payload)
        except DecodeError as exc:
            log.warning("sparkplug ignoring undecodable %s: %s",
                        "NCMD" if cmd.device is None else f"DCMD for {cmd.device}", exc)
            return
        for metric in payload.metrics:
            name = metric.name or self._sender.name_of(cmd.device, metric.alias)
            if metric.value is not True:
                continue
            if cmd.device is None and name == model.REBIRTH:
                log.info("sparkplug rebirth requested")
                self._rebirth = True
            elif (cmd.device is not None and name == model.SNAPSHOT
                  and cmd.device in self._rec.devices and self._request_snapshot is not None):
                self._request_snapshot(cmd.device)
        if self._rebirth and self._live:
            self._births()

    # -- sending -----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send the next stored rows in order; a birth first for a device with no birth in
        this session, a rebirth first when a row names a label the births did not. Once
        nothing is left, devices born only for stored data of a departed camera die."""
        rows = self.outbox.after(0, BATCH)
        sent: list[Row] = []
        for row in rows:
            if not self._send_row(row):
                break
            sent.append(row)
        if sent and self._sender.settle():
            for row in sent:
                self.outbox.remove(row.id)
        if self._live and not len(self.outbox):
            self._sender.bury_departed(self._rec.alive())

    def _send_row(self, row: Row) -> bool:
        try:
            stored = decode_row(row.payload)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.error("sparkplug dropping unreadable stored row %d: %s", row.id, exc)
            return True  # consumed: it must not block everything stored after it
        if stored.message_type == DDEATH:
            assert row.camera is not None
            return self._sender.ddeath(row.camera)
        undeclared = [c.name[len(model.OBJECTS):] for c in stored.changes
                      if c.name.startswith(model.OBJECTS)
                      and c.name[len(model.OBJECTS):] not in self._sender.born_labels]
        if undeclared:
            self._rec.add_labels(undeclared)
            self._births()
            if not self._live:
                return False
        historical = row.id <= self._historical_up_to
        if row.camera is None:
            return self._sender.data(None, stored.changes, historical)
        if not self._sender.is_born(row.camera):
            metrics = self._rec.device_for_row(row.camera).metrics.birth_metrics(
                self._rec.labels, now_ms())
            if not self._sender.dbirth(row.camera, metrics):
                return False
        return self._sender.data(row.camera, stored.changes, historical)
