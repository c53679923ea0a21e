"""The Sparkplug B payload on the protobuf wire, for the part of the schema streamd uses.

Sparkplug B 3.0 payloads are protobuf messages (`org.eclipse.tahu.protobuf.Payload`). The
PyPI Sparkplug libraries do not fit this daemon (pysparkplug pins paho-mqtt < 2,
mqtt-spb-wrapper pins paho-mqtt 1.6.1 and protobuf 3.20, aiospb is asyncio-only, LGPL and
Python >= 3.11), and generated protobuf code would tie the daemon to one protobuf runtime
range. The subset used here — a payload timestamp, `seq`, and metrics with name, alias,
timestamp, datatype, the historical/null flags and a scalar value — is small, so it is
written directly against the wire format, with the field numbers of the specification
(Payload: timestamp 1, metrics 2, seq 3; Metric: name 1, alias 2, timestamp 3, datatype 4,
is_historical 5, is_transient 6, is_null 7, int_value 10, long_value 11, float_value 12,
double_value 13, boolean_value 14, string_value 15). The tests decode what the daemon sends
with Google's protobuf runtime and a `.proto` of their own, so a mistake on either side fails.

>>> m = Metric("Motion/Active", DataType.BOOLEAN, True, alias=7, timestamp_ms=1700000000000)
>>> decode_payload(encode_payload([m], timestamp_ms=1700000000001, seq=3)).metrics[0].value
True
"""

from __future__ import annotations

import enum
import mmap
import struct
import time
from dataclasses import dataclass, field

Value = bool | int | float | str | None
Buffer = bytes | memoryview | mmap.mmap


def now_ms() -> int:
    """Now as a Sparkplug timestamp (UTC epoch ms)."""
    return round(time.time() * 1000)


class DataType(enum.IntEnum):
    """Sparkplug B metric data types (the subset streamd declares, numbered as in the spec)."""

    INT32 = 3
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13


_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

# Metric value fields by data type: (field number, wire type).
_VALUE_FIELD: dict[DataType, tuple[int, int]] = {
    DataType.INT32: (10, _VARINT),
    DataType.UINT64: (11, _VARINT),
    DataType.DATETIME: (11, _VARINT),
    DataType.FLOAT: (12, _FIXED32),
    DataType.DOUBLE: (13, _FIXED64),
    DataType.BOOLEAN: (14, _VARINT),
    DataType.STRING: (15, _LEN),
}


@dataclass(frozen=True)
class Metric:
    """One metric. `name` is sent in births and commands, `alias` in data messages;
    `timestamp_ms` is UTC epoch milliseconds of the observation; `value` None is sent as
    `is_null` (a birth may declare a metric before it has a value)."""

    name: str | None
    datatype: DataType | int
    value: Value
    alias: int | None = None
    timestamp_ms: int | None = None
    is_historical: bool = False


@dataclass(frozen=True)
class Payload:
    """A decoded payload (commands from a host): top-level timestamp, seq, metrics."""

    timestamp_ms: int | None
    seq: int | None
    metrics: list[Metric] = field(default_factory=list)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32/int64 are sent as 64-bit two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len_field(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(data)) + data


def _encode_value(datatype: int, value: bool | int | float | str) -> bytes:
    number, wire = _VALUE_FIELD[DataType(datatype)]
    if wire == _LEN:
        return _len_field(number, str(value).encode("utf-8"))
    if wire == _FIXED32:
        return _key(number, wire) + struct.pack("<f", float(value))
    if wire == _FIXED64:
        return _key(number, wire) + struct.pack("<d", float(value))
    if datatype == DataType.INT32:
        # Sparkplug carries Int8..Int32 in the uint32 field, negatives as 32-bit two's
        # complement.
        return _key(number, wire) + _varint(int(value) & 0xFFFFFFFF)
    return _key(number, wire) + _varint(int(value))


def encode_metric(metric: Metric) -> bytes:
    """One `Payload.Metric` message body."""
    out = bytearray()
    if metric.name is not None:
        out += _len_field(1, metric.name.encode("utf-8"))
    if metric.alias is not None:
        out += _key(2, _VARINT) + _varint(metric.alias)
    if metric.timestamp_ms is not None:
        out += _key(3, _VARINT) + _varint(metric.timestamp_ms)
    out += _key(4, _VARINT) + _varint(int(metric.datatype))
    if metric.is_historical:
        out += _key(5, _VARINT) + b"\x01"
    if metric.value is None:
        out += _key(7, _VARINT) + b"\x01"
    else:
        out += _encode_value(int(metric.datatype), metric.value)
    return bytes(out)


def encode_payload(metrics: list[Metric], timestamp_ms: int, seq: int | None) -> bytes:
    """A `Payload`: timestamp, metrics, and `seq` (None for NDEATH, which carries none)."""
    out = bytearray(_key(1, _VARINT) + _varint(timestamp_ms))
    for metric in metrics:
        out += _len_field(2, encode_metric(metric))
    if seq is not None:
        out += _key(3, _VARINT) + _varint(seq)
    return bytes(out)


class DecodeError(ValueError):
    """The bytes are not a Sparkplug B payload this decoder understands."""


def read_varint(data: Buffer, pos: int) -> tuple[int, int]:
    """The protobuf varint at `data[pos]` and the position after it (any indexable bytes:
    the ONNX metadata reader walks an mmap with it too)."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field of one message: varints and fixed
    values as ints (fixed ones as their little-endian bytes), length-delimited as bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == _VARINT:
            value, pos = read_varint(data, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = data[pos:pos + size], pos + size
            if len(value) != size:
                raise DecodeError("truncated fixed-size field")
        elif wire == _LEN:
            size, pos = read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
            if len(value) != size:
                raise DecodeError("truncated length-delimited field")
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _decode_metric(data: bytes) -> Metric:
    name: str | None = None
    alias = timestamp = None
    datatype = 0
    historical = False
    value: Value = None
    for number, _wire, raw in _fields(data):
        if number == 1 and isinstance(raw, bytes):
            name = raw.decode("utf-8", errors="replace")
        elif number == 2 and isinstance(raw, int):
            alias = raw
        elif number == 3 and isinstance(raw, int):
            timestamp = raw
        elif number == 4 and isinstance(raw, int):
            datatype = raw
        elif number == 5 and isinstance(raw, int):
            historical = bool(raw)
        elif number in (10, 11) and isinstance(raw, int):
            value = raw
        elif number == 12 and isinstance(raw, bytes):
            value = struct.unpack("<f", raw)[0]
        elif number == 13 and isinstance(raw, bytes):
            value = struct.unpack("<d", raw)[0]
        elif number == 14 and isinstance(raw, int):
            value = bool(raw)
        elif number == 15 and isinstance(raw, bytes):
            value = raw.decode("utf-8", errors="replace")
    return Metric(name, datatype, value, alias=alias, timestamp_ms=timestamp,
                  is_historical=historical)


def decode_payload(data: bytes) -> Payload:
    """Decode a payload (NCMD/DCMD from a host); unknown fields are skipped."""
    timestamp = seq = None
    metrics: list[Metric] = []
    for number, _wire, raw in _fields(data):
        if number == 1 and isinstance(raw, int):
            timestamp = raw
        elif number == 2 and isinstance(raw, bytes):
            metrics.append(_decode_metric(raw))
        elif number == 3 and isinstance(raw, int):
            seq = raw
    return Payload(timestamp, seq, metrics)
