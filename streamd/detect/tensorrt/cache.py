"""The engine cache directory: find the engine for a key, or the nearest stale one of the same
model to explain why it cannot be used; where the timing cache lives."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from streamd.detect.tensorrt.errors import EngineError
from streamd.detect.tensorrt.key import ENGINE_SUFFIX, EngineKey, diff_keys
from streamd.detect.tensorrt.sidecar import read_sidecar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheLookup:
    """Where the engine for a key is (or will be built), and what else is there."""

    path: Path
    found: bool
    """An engine with a matching sidecar is at `path`."""
    closest: tuple[Path, list[str]] | None = None
    """When not found: the cached engine of the same model that differs least, and how."""


def lookup(engine_dir: Path, onnx_file: str, key: EngineKey) -> CacheLookup:
    """Find the engine for `key` in `engine_dir`, or the nearest stale one of the same model
    (same ONNX file name or same ONNX hash) to explain why it cannot be used."""
    path = engine_dir / key.file_name(Path(onnx_file).stem)
    if path.is_file():
        try:
            sidecar = read_sidecar(path)
        except EngineError as exc:
            log.warning("%s; the engine will be treated as stale", exc)
            sidecar = None
        if sidecar is not None and sidecar.key == key:
            return CacheLookup(path, True)
    best: tuple[int, float, Path, list[str]] | None = None
    for record in sorted(engine_dir.glob("*.json")) if engine_dir.is_dir() else []:
        engine = record.with_suffix(ENGINE_SUFFIX)
        if not engine.is_file():
            continue
        try:
            other = read_sidecar(engine)
        except EngineError as exc:
            log.debug("skipping %s", exc)
            continue
        if other is None or (other.onnx_file != onnx_file
                             and other.key.onnx_sha256 != key.onnx_sha256):
            continue
        diffs = diff_keys(key, other.key) or ["sidecar or file name edited by hand"]
        rank = (len(diffs), -engine.stat().st_mtime, engine, diffs)
        if best is None or rank[:2] < best[:2]:
            best = rank
    return CacheLookup(path, False, None if best is None else (best[2], best[3]))


def timing_cache_path(engine_dir: Path, key: EngineKey) -> Path:
    """One timing cache per GPU model and TensorRT version, shared by all builds there: it
    holds kernel timings, which do not depend on the model, and TensorRT refuses a cache made
    elsewhere."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key.gpu_name).strip("-").lower() or "gpu"
    cc = key.compute_capability.replace(".", "")
    return engine_dir / f"timing.{gpu}.sm{cc}.trt{key.tensorrt}.cache"
