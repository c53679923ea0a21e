"""Births, data and deaths on the wire: `seq`, aliases and which devices are born.

Used by the edge node's worker thread only. `seq` is 0 on the NBIRTH and goes up by one
(wrapping after 255) on every later message of the session — DBIRTH, NDATA, DDATA, DDEATH —
whatever the device. Aliases are unique across the node and its devices and stay the same
for a metric for the life of the process, so a stored message can be sent after any rebirth.
Births declare name and alias; data messages carry the alias only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

import paho.mqtt.client as mqtt

from streamd.sparkplug.codec import Metric, encode_payload, now_ms
from streamd.sparkplug.model import Change
from streamd.sparkplug.session import Session, Topics

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 5.0
"""Longest wait for paho to write a sent batch to the socket before the session counts as
lost (the batch stays stored and goes again after the next birth)."""


class Sender:
    """Builds and publishes the node's messages on one `Session`; knows what is born."""

    def __init__(self, session: Session, topics: Topics) -> None:
        self._session = session
        self._topics = topics
        self._seq = 0
        self._aliases: dict[tuple[str | None, str], int] = {}
        self._names: dict[tuple[str | None, int], str] = {}
        self._born_devices: set[str] = set()
        self._last: mqtt.MQTTMessageInfo | None = None
        self.born = False
        """An NBIRTH was sent in this session and nothing failed since."""
        self.born_labels: frozenset[str] = frozenset()
        """The labels the current births declared (`Objects/<label>`)."""
        self.sent: Counter[str] = Counter()

    def topic(self, message_type: str, device: str | None = None) -> str:
        if device is None:
            return self._topics.node(message_type)
        return self._topics.device(message_type, device)

    def alias(self, device: str | None, name: str) -> int:
        key = (device, name)
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = len(self._aliases) + 1
            self._names[(device, alias)] = name
        return alias

    def name_of(self, device: str | None, alias: int | None) -> str | None:
        return None if alias is None else self._names.get((device, alias))

    def is_born(self, device: str) -> bool:
        return device in self._born_devices

    def unborn(self) -> None:
        """The session ended: everything must be born again in the next one."""
        self.born = False
        self._born_devices.clear()
        self._last = None

    def _publish(self, message_type: str, device: str | None, metrics: list[Metric],
                 seq: int) -> bool:
        payload = encode_payload(metrics, now_ms(), seq)
        info = self._session.publish(self.topic(message_type, device), payload, qos=0)
        if info is None:
            log.warning("sparkplug %s not sent: not connected", message_type)
            self.unborn()
            return False
        self._last = info
        self.sent[message_type] += 1
        return True

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _declare(self, device: str | None, metrics: Iterable[Metric]) -> list[Metric]:
        return [Metric(m.name, m.datatype, m.value, alias=self.alias(device, m.name or ""),
                       timestamp_ms=m.timestamp_ms) for m in metrics]

    def births(self, node: list[Metric], devices: dict[str, list[Metric]],
               labels: Iterable[str], now_ms: int) -> bool:
        """NBIRTH with `seq` 0, then one DBIRTH per device."""
        self._born_devices.clear()
        self._seq = 0
        node = [Metric(m.name, m.datatype, m.value, timestamp_ms=now_ms) for m in node]
        if not self._publish("NBIRTH", None, self._declare(None, node), 0):
            return False
        self.born = True
        self.born_labels = frozenset(labels)
        return all(self.dbirth(name, metrics) for name, metrics in devices.items())

    def dbirth(self, device: str, metrics: list[Metric]) -> bool:
        if not self._publish("DBIRTH", device, self._declare(device, metrics),
                             self._next_seq()):
            return False
        self._born_devices.add(device)
        return True

    def ddeath(self, device: str) -> bool:
        """DDEATH for a born device (one that is not born has nothing to end)."""
        if device not in self._born_devices:
            return True
        if not self._publish("DDEATH", device, [], self._next_seq()):
            return False
        self._born_devices.discard(device)
        return True

    def bury_departed(self, alive: set[str]) -> None:
        """DDEATH for devices born only to deliver stored data of a camera now gone."""
        for device in sorted(self._born_devices - alive):
            self.ddeath(device)

    def data(self, device: str | None, changes: list[Change], historical: bool) -> bool:
        """NDATA (device None) or DDATA: aliases only, each metric at its own timestamp."""
        metrics = [Metric(None, c.datatype, c.value, alias=self.alias(device, c.name),
                          timestamp_ms=c.timestamp_ms, is_historical=historical)
                   for c in changes]
        return self._publish("NDATA" if device is None else "DDATA", device, metrics,
                             self._next_seq())

    def settle(self) -> bool:
        """True once everything sent so far left through the socket."""
        last, self._last = self._last, None
        if last is None:
            return self.born
        if self._session.written(last, SETTLE_TIMEOUT_S):
            return True
        log.warning("sparkplug messages not written within %.1f s; session lost",
                    SETTLE_TIMEOUT_S)
        self.unborn()
        return False
