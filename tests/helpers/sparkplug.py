"""A test Sparkplug primary host: a real MQTT client that decodes what the edge node sends.

It decodes with Google's protobuf runtime and the schema in ``sparkplug_b.proto`` beside this
file, compiled when first needed with grpcio-tools' bundled protoc, so the daemon's own
encoder (``streamd.sparkplug.codec``) is checked by an independent implementation. Commands
(NCMD, DCMD) and STATE go the other way, encoded here with protobuf and JSON.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.helpers.mqtt import Collector, Message

PROTO = Path(__file__).with_name("sparkplug_b.proto")
NS = "spBv1.0"
# Sparkplug B data types used by streamd (numbers from the specification).
INT32, UINT64, FLOAT, BOOLEAN, STRING, DATETIME = 3, 8, 9, 11, 12, 13


@functools.cache
def schema() -> ModuleType:
    """The generated ``sparkplug_b_pb2`` module (compiled once per test process)."""
    from grpc_tools import protoc  # the dev extra; protoc ships inside the wheel

    out = Path(tempfile.mkdtemp(prefix="streamd-spb-proto-"))
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)])
    assert rc == 0, f"protoc failed on {PROTO} (rc={rc})"
    spec = importlib.util.spec_from_file_location("sparkplug_b_pb2", out / "sparkplug_b_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sparkplug_b_pb2"] = module
    spec.loader.exec_module(module)
    return module


def decode(data: bytes) -> Any:
    payload = schema().Payload()
    payload.ParseFromString(data)
    return payload


def value(metric: Any) -> Any:
    """A metric's value, None when it is null or has none."""
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    return None if field is None else getattr(metric, field)


@dataclass(frozen=True)
class SpMessage:
    """One Sparkplug message as the host saw it."""

    topic: str
    type: str
    """NBIRTH, DBIRTH, NDATA, DDATA, NDEATH, DDEATH, ..."""
    device: str | None
    payload: Any
    index: int

    @property
    def seq(self) -> int | None:
        return self.payload.seq if self.payload.HasField("seq") else None

    def metrics(self) -> dict[str, Any]:
        """name (births) or alias (data) → metric message."""
        return {m.name if m.HasField("name") else m.alias: m for m in self.payload.metrics}


class PrimaryHost:
    """Subscribes to everything of one group; ``start()`` returns self."""

    def __init__(self, host: str, port: int, group: str, node: str,
                 host_id: str | None = None, **login: str) -> None:
        self.group, self.node, self.host_id = group, node, host_id
        self.collector = Collector(host, port, [f"{NS}/{group}/#"], qos=1, **login)
        self.aliases: dict[tuple[str | None, int], str] = {}

    def start(self) -> PrimaryHost:
        self.collector.start()
        return self

    def stop(self) -> None:
        self.collector.stop()

    def __enter__(self) -> PrimaryHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived -------------------------------------------------------------------------

    def _parse(self, msg: Message) -> SpMessage:
        parts = msg.topic.split("/")
        assert parts[0] == NS and parts[1] == self.group and parts[3] == self.node, msg.topic
        device = parts[4] if len(parts) > 4 else None
        sp = SpMessage(msg.topic, parts[2], device, decode(msg.payload), msg.index)
        if sp.type in ("NBIRTH", "DBIRTH"):
            for m in sp.payload.metrics:
                self.aliases[(device, m.alias)] = m.name
        return sp

    def messages(self, type_: str | None = None, start: int = 0) -> list[SpMessage]:
        out = [self._parse(m) for m in self.collector.messages(start=start)]
        return [m for m in out if type_ is None or m.type == type_]

    def wait(self, type_: str, count: int = 1, timeout_s: float = 10.0, start: int = 0,
             device: str | None = None) -> list[SpMessage]:
        def enough(_c: Collector) -> list[SpMessage] | None:
            got = [m for m in self.messages(type_, start) if device is None or m.device == device]
            return got if len(got) >= count else None
        return self.collector.wait_for(enough, timeout_s, f"{count} x {type_} {device or ''}")

    def name(self, device: str | None, metric: Any) -> str:
        """The metric's name: its own in a birth, else what the birth bound its alias to."""
        if metric.HasField("name"):
            return str(metric.name)
        return self.aliases[(device, metric.alias)]

    def cursor(self) -> int:
        return self.collector.cursor()

    def counts(self) -> dict[str, int]:
        """Messages seen per type, e.g. for a test's closing line."""
        out: dict[str, int] = {}
        for m in self.messages():
            out[m.type] = out.get(m.type, 0) + 1
        return dict(sorted(out.items()))

    # -- commands -----------------------------------------------------------------------------

    def state(self, online: bool) -> None:
        """Sparkplug 3.0 STATE: retained JSON on spBv1.0/STATE/<host id>."""
        assert self.host_id is not None
        body = json.dumps({"online": online, "timestamp": round(time.time() * 1000)})
        self.collector.publish(f"{NS}/STATE/{self.host_id}", body, qos=1, retain=True)

    def _command(self, topic: str, device: str | None, name: str, val: bool,
                 by_alias: bool) -> None:
        payload = schema().Payload()
        payload.timestamp = round(time.time() * 1000)
        metric = payload.metrics.add()
        if by_alias:  # as a host may write a tag it knows from the birth
            metric.alias = next(a for (d, a), n in self.aliases.items()
                                if d == device and n == name)
        else:
            metric.name = name
        metric.datatype, metric.boolean_value = BOOLEAN, val
        self.collector.publish(topic, payload.SerializeToString(), qos=0)

    def rebirth(self, by_alias: bool = False) -> None:
        self._command(f"{NS}/{self.group}/NCMD/{self.node}", None, "Node Control/Rebirth",
                      True, by_alias)

    def dcmd(self, device: str, name: str, val: bool, by_alias: bool = False) -> None:
        self._command(f"{NS}/{self.group}/DCMD/{self.node}/{device}", device, name, val,
                      by_alias)


def assert_seq_continuous(msgs: list[SpMessage]) -> int:
    """From each NBIRTH (seq 0) on, every message's seq is the previous one's + 1 mod 256.
    Returns how many times it wrapped."""
    wraps, prev = 0, None
    for m in msgs:
        if m.type in ("NCMD", "DCMD"):  # the host's own commands
            continue
        if m.type == "NDEATH":
            assert m.seq is None, "NDEATH carries no seq"
            prev = None
            continue
        if m.type == "NBIRTH":
            assert m.seq == 0, f"NBIRTH seq {m.seq}"
        else:
            assert prev is not None, f"{m.type} before any NBIRTH"
            assert m.seq == (prev + 1) % 256, f"{m.type} seq {m.seq} after {prev}"
            wraps += m.seq == 0
        prev = m.seq
    return wraps
