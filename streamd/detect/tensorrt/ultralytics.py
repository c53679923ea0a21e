"""Ultralytics' engine header: the metadata an Ultralytics `.engine` export carries before
the TensorRT plan."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.detect.tensorrt.errors import EngineError

ULTRALYTICS_MAX_HEADER = 1 << 20
"""An Ultralytics header is a few kB of JSON; a first word announcing more is a bare plan."""


@dataclass(frozen=True)
class UltralyticsHeader:
    """The metadata Ultralytics writes before the plan of an exported `.engine`:
    a 4-byte little-endian length, then that many bytes of UTF-8 JSON."""

    names: tuple[str, ...] | None
    imgsz: tuple[int, int] | None
    """(H, W)."""
    batch: int | None
    raw: dict[str, Any]


def _names(value: Any) -> tuple[str, ...] | None:
    """Ultralytics `names`: {"0": "person", ...} (JSON turned the int keys into strings) or a
    list."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, dict):
        try:
            by_id = {int(k): v for k, v in value.items()}
        except ValueError:
            return None
        if set(by_id) == set(range(len(by_id))) and all(isinstance(v, str)
                                                         for v in by_id.values()):
            return tuple(by_id[i] for i in range(len(by_id)))
    return None


def split_ultralytics(data: bytes | memoryview) -> tuple[UltralyticsHeader | None, memoryview]:
    """Separate an Ultralytics metadata header from the TensorRT plan that follows it.

    A bare plan (what `streamd engine build` or trtexec write) has no header and comes back
    whole: its first four bytes read as a length that is absurdly large, or what follows is
    not a JSON object.
    """
    view = memoryview(data)
    if len(view) < 4:
        raise EngineError(f"{len(view)} bytes is not a TensorRT engine")
    size = int.from_bytes(view[:4], "little")
    if 2 <= size <= min(ULTRALYTICS_MAX_HEADER, len(view) - 4):
        try:
            meta = json.loads(bytes(view[4:4 + size]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            meta = None
        if isinstance(meta, dict):
            imgsz = meta.get("imgsz")
            if isinstance(imgsz, int):
                imgsz = [imgsz, imgsz]
            hw = ((int(imgsz[0]), int(imgsz[1])) if isinstance(imgsz, list) and len(imgsz) == 2
                  else None)
            batch = meta.get("batch")
            header = UltralyticsHeader(_names(meta.get("names")), hw,
                                       batch if isinstance(batch, int) else None, meta)
            return header, view[4 + size:]
    return None, view


def read_engine_file(path: Path) -> tuple[UltralyticsHeader | None, bytes]:
    """(Ultralytics header or None, the bare plan TensorRT deserializes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror}") from None
    header, plan = split_ultralytics(data)
    return header, bytes(plan) if header is not None else data
