"""The JSON record written next to every engine streamd builds (`<engine>.json`), and the
atomic write both go through."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.detect.tensorrt.errors import EngineError
from streamd.detect.tensorrt.key import EngineKey

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class Sidecar:
    """The record written next to every engine streamd builds (`<engine>.json`)."""

    key: EngineKey
    onnx_file: str
    """Name of the ONNX file the engine came from: finds stale engines of the same model."""
    labels: tuple[str, ...] | None
    """The ONNX model's `names` metadata; an engine keeps no metadata of its own."""
    built_at: str
    """UTC ISO-8601."""
    build_s: float
    streamd: str

    def to_json(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, "key": self.key.to_json(), "onnx_file": self.onnx_file,
                "labels": None if self.labels is None else list(self.labels),
                "built_at": self.built_at, "build_s": round(self.build_s, 3),
                "streamd": self.streamd}

    @classmethod
    def from_json(cls, data: Any) -> Sidecar:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {SIDECAR_FORMAT}")
        labels = data.get("labels")
        if labels is not None and (not isinstance(labels, list)
                                   or not all(isinstance(v, str) for v in labels)):
            raise ValueError("labels must be a list of strings")
        return cls(EngineKey.from_json(data["key"]), str(data["onnx_file"]),
                   None if labels is None else tuple(labels), str(data["built_at"]),
                   float(data["build_s"]), str(data["streamd"]))


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename: a crash or a second builder never leaves a
    half-written engine (or sidecar) under the final name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_sidecar(engine: Path, sidecar: Sidecar) -> Path:
    path = sidecar_path(engine)
    atomic_write(path, (json.dumps(sidecar.to_json(), indent=2) + "\n").encode())
    return path


def read_sidecar(engine: Path) -> Sidecar | None:
    """The engine's sidecar; None when there is none; EngineError when it is unreadable."""
    path = sidecar_path(engine)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return Sidecar.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{path} is not a streamd engine record: {exc}") from None


def sidecar_for(key: EngineKey, onnx_file: Path, labels: tuple[str, ...] | None,
                build_s: float, streamd_version: str) -> Sidecar:
    """The record of a build that just finished."""
    built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Sidecar(key, onnx_file.name, labels, built_at, build_s, streamd_version)
