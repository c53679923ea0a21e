"""ONNX metadata without the `onnx` package: the class names an engine build records."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

from streamd.detect.tensorrt.errors import EngineError
from streamd.sparkplug.codec import read_varint


def _fields(buf: memoryview | mmap.mmap, start: int, end: int
            ) -> Iterator[tuple[int, int, int, int]]:
    """Top-level protobuf fields in buf[start:end]: (number, wire type, value start, value
    end or varint value)."""
    pos = start
    while pos < end:
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
            yield number, wire, value, pos
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise ValueError("field runs past the end")
            yield number, wire, pos, pos + size
            pos += size
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("field runs past the end")


def onnx_metadata(path: Path) -> dict[str, str]:
    """`metadata_props` of an ONNX file (ModelProto field 14: key 1, value 2), read straight
    from the protobuf. The engine builder needs only the class names; the runtime has no
    `onnx` package and loading the model into ONNX Runtime just for them would cost seconds
    and memory on a Jetson. The file is memory-mapped: the graph is skipped, not read."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            props: dict[str, str] = {}
            for number, wire, start, end in _fields(buf, 0, len(buf)):
                if number != 14 or wire != 2:
                    continue
                key = value = ""
                for sub, sub_wire, s, e in _fields(buf, start, end):
                    if sub_wire == 2 and sub in (1, 2):
                        text = bytes(buf[s:e]).decode("utf-8")
                        key, value = (text, value) if sub == 1 else (key, text)
                props[key] = value
            return props
    except (OSError, ValueError) as exc:  # mmap of an empty file raises ValueError too
        raise EngineError(f"{path} is not a readable ONNX model: {exc}") from None
