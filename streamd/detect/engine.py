"""TensorRT engine files: what an engine was built from and for, and whether it still fits.

A serialized TensorRT engine only runs on the TensorRT version and GPU model it was built
with, and it bakes in the precision, the input shape and the batch range. None of that can be
read back from the plan cheaply, so every engine streamd builds gets a JSON sidecar recording
its `EngineKey`, and the file name carries the same fields (plus a digest of all of them) so
that engines for several configs or GPUs can share one cache directory. At startup the wanted
key is compared with what is cached: an exact match is loaded, anything else is stale and the
differences are listed field by field, so an operator reads "TensorRT version: engine 10.0.1,
here 10.3.0" instead of a deserialization error.

Everything here is plain Python (no TensorRT, no CUDA), so the cache logic, the Ultralytics
header format, the per-version builder options and the progress formatting are tested on any
machine. `streamd.detect.build` drives TensorRT with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamd.detect.base import DetectorError
from streamd.detect.yolo import letterbox_batch
from streamd.detections import FloatArray

log = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
PREBUILT_SUFFIXES = (".engine", ".plan", ".trt")
"""A `detector.model` with one of these suffixes is a ready engine, loaded as it is."""
SIDECAR_FORMAT = 1
MIN_TENSORRT = (10, 0)
"""Name-based I/O and `execute_async_v3` with the batch in the tensor shape: TensorRT 10."""
CALIBRATION_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
ULTRALYTICS_MAX_HEADER = 1 << 20
"""An Ultralytics header is a few kB of JSON; a first word announcing more is a bare plan."""


class EngineError(DetectorError):
    """An engine cannot be built, found or loaded; the message says why and what to do."""


# --- the cache key --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """The device an engine is built for: TensorRT plans are specific to the GPU model."""

    name: str
    compute_capability: str
    """"major.minor", e.g. "8.7" for Jetson Orin."""


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Two engines are interchangeable exactly when
    their keys are equal."""

    onnx_sha256: str
    tensorrt: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, int, int]
    """(C, H, W) of one image."""
    batch: tuple[int, int, int]
    """(min, opt, max) of the optimization profile's batch axis."""

    def digest(self) -> str:
        """Short hash of every field; ends the file name so that no two keys collide."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def file_name(self, model_stem: str) -> str:
        """`<model>.<precision>.<H>x<W>.b<min>-<opt>-<max>.sm<cc>.trt<version>.<digest>.engine`:
        readable in `ls`, unique per key.

        >>> key = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", (3, 320, 320), (1, 4, 8))
        >>> key.file_name("yolov8n")
        'yolov8n.fp16.320x320.b1-4-8.sm87.trt10.3.0.0356bcd66dfc.engine'
        """
        _, h, w = self.input_shape
        lo, opt, hi = self.batch
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", model_stem) or "model"
        cc = self.compute_capability.replace(".", "")
        version = re.sub(r"[^0-9.]+", "_", self.tensorrt)
        return (f"{stem}.{self.precision}.{h}x{w}.b{lo}-{opt}-{hi}.sm{cc}.trt{version}."
                f"{self.digest()}{ENGINE_SUFFIX}")

    def to_json(self) -> dict[str, Any]:
        return {"onnx_sha256": self.onnx_sha256, "tensorrt": self.tensorrt,
                "gpu_name": self.gpu_name, "compute_capability": self.compute_capability,
                "precision": self.precision, "input_shape": list(self.input_shape),
                "batch": list(self.batch)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineKey:
        """Inverse of `to_json`; KeyError/TypeError/ValueError on a malformed record."""
        shape = tuple(int(v) for v in data["input_shape"])
        batch = tuple(int(v) for v in data["batch"])
        if len(shape) != 3 or len(batch) != 3:
            raise ValueError("input_shape and batch must have 3 entries each")
        return cls(str(data["onnx_sha256"]), str(data["tensorrt"]), str(data["gpu_name"]),
                   str(data["compute_capability"]), str(data["precision"]),
                   (shape[0], shape[1], shape[2]), (batch[0], batch[1], batch[2]))


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def diff_keys(wanted: EngineKey, found: EngineKey) -> list[str]:
    """What makes `found` (an engine on disk) unusable where `wanted` is needed, one line per
    field, in the words an operator knows; [] when they are the same.

    >>> import dataclasses
    >>> a = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", (3, 320, 320), (1, 8, 8))
    >>> diff_keys(a, dataclasses.replace(a, tensorrt="10.0.1", precision="fp32"))
    ['TensorRT version: engine 10.0.1, here 10.3.0', 'precision: engine fp32, wanted fp16']
    """
    out = []
    if found.onnx_sha256 != wanted.onnx_sha256:
        out.append(f"ONNX model: engine built from sha256 {found.onnx_sha256[:12]}…, the "
                   f"model file is now {wanted.onnx_sha256[:12]}…")
    if found.tensorrt != wanted.tensorrt:
        out.append(f"TensorRT version: engine {found.tensorrt}, here {wanted.tensorrt}")
    if found.gpu_name != wanted.gpu_name:
        out.append(f"GPU: engine built on {found.gpu_name!r}, here {wanted.gpu_name!r}")
    if found.compute_capability != wanted.compute_capability:
        out.append(f"compute capability: engine sm {found.compute_capability}, here sm "
                   f"{wanted.compute_capability}")
    if found.precision != wanted.precision:
        out.append(f"precision: engine {found.precision}, wanted {wanted.precision}")
    if found.input_shape != wanted.input_shape:
        out.append(f"input shape: engine {_fmt_shape(found.input_shape)}, wanted "
                   f"{_fmt_shape(wanted.input_shape)}")
    if found.batch != wanted.batch:
        out.append(f"batch range (min/opt/max): engine {'/'.join(map(str, found.batch))}, "
                   f"wanted {'/'.join(map(str, wanted.batch))}")
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (models can be hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- the JSON sidecar -----------------------------------------------------------------------


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


# --- the cache directory --------------------------------------------------------------------


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


# --- Ultralytics' engine header -------------------------------------------------------------


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


# --- builder options per TensorRT version ---------------------------------------------------


@dataclass(frozen=True)
class BuilderOptions:
    """How to ask a given TensorRT for a given precision."""

    strongly_typed: bool
    """Create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED."""
    set_flags: tuple[str, ...]
    """BuilderFlag members to set."""
    clear_flags: tuple[str, ...]
    """BuilderFlag members to clear (TF32, on by default, would make fp32 inexact)."""
    calibrate: bool
    """Attach an INT8 entropy calibrator fed from `detector.calibration_dir`."""
    notes: tuple[str, ...] = ()
    """Deprecations worth a warning in the build log."""


def parse_version(version: str) -> tuple[int, int]:
    """'10.3.0.30' -> (10, 3).

    >>> parse_version("10.3.0.30")
    (10, 3)
    """
    m = re.match(r"^\s*(\d+)\.(\d+)", version)
    if m is None:
        raise EngineError(f"cannot read TensorRT version {version!r}")
    return int(m.group(1)), int(m.group(2))


def builder_options(tensorrt_version: str, precision: str) -> BuilderOptions:
    """The builder settings that give `precision` on `tensorrt_version`, or an EngineError
    that says what to do instead.

    - 10.x builds weakly typed networks: fp32 with TF32 off (so it matches ONNX Runtime),
      fp16 with BuilderFlag.FP16, int8 with BuilderFlag.INT8 + FP16 (layers without an int8
      kernel fall back to fp16, not fp32) and an entropy calibrator. Calibrators are
      deprecated from 10.1 and the weak-typing flags from 10.12; they still work there.
    - 11.x removed those flags and calibrators: every network is strongly typed and the
      precision is the one the ONNX file carries, so only fp32 (the ONNX types as they are)
      is buildable; fp16/int8 need a converted model (ModelOpt AutoCast or Q/DQ).
    - older than 10.0 or newer than 11: refused.

    >>> builder_options("10.3.0", "int8").set_flags
    ('INT8', 'FP16')
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise EngineError(f"precision {precision!r}: expected fp32, fp16 or int8")
    major, minor = parse_version(tensorrt_version)
    if (major, minor) < MIN_TENSORRT:
        raise EngineError(
            f"TensorRT {tensorrt_version} is too old: streamd needs TensorRT 10 (name-based "
            "I/O, execute_async_v3). JetPack 6 ships 10.3; on x86 `pip install streamd[trt]` "
            "installs 10.x")
    if major == 11:
        if precision != "fp32":
            raise EngineError(
                f"TensorRT {tensorrt_version} builds strongly typed networks only: the FP16 and "
                "INT8 builder flags and INT8 calibrators were removed in TensorRT 11, so "
                f"precision {precision} cannot be chosen at build time. Convert the ONNX model "
                "instead (fp16: NVIDIA ModelOpt AutoCast; int8: Q/DQ quantization with ModelOpt) "
                "and build it with precision: fp32, which keeps the model's own types; or use "
                "TensorRT 10.x")
        return BuilderOptions(True, (), (), False, (
            "TensorRT 11 builds strongly typed: the engine runs in the ONNX model's own types",))
    if major > 11:
        raise EngineError(f"TensorRT {tensorrt_version} is newer than streamd supports "
                          "(10.x, and 11.x for fp32/strongly typed models)")
    notes: list[str] = []
    if precision == "fp32":
        return BuilderOptions(False, (), ("TF32",), False)
    if minor >= 12:
        notes.append(f"TensorRT {tensorrt_version} deprecates weakly typed {precision} builds "
                     "(BuilderFlag.FP16/INT8); TensorRT 11 removes them")
    if precision == "fp16":
        return BuilderOptions(False, ("FP16",), (), False, tuple(notes))
    if minor >= 1:
        notes.append(f"TensorRT {tensorrt_version} deprecates INT8 calibration (removed in "
                     "TensorRT 11, which needs Q/DQ models); it still works here")
    return BuilderOptions(False, ("INT8", "FP16"), (), True, tuple(notes))


def profile_shapes(network_input: Sequence[int], input_size: int, batch: tuple[int, int, int]
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of the optimization profile for a network input of shape
    `network_input` (-1 = dynamic), or an EngineError when the model cannot take them.

    >>> profile_shapes([-1, 3, -1, -1], 320, (1, 4, 8))
    ((1, 3, 320, 320), (4, 3, 320, 320), (8, 3, 320, 320))
    """
    dims = list(network_input)
    if len(dims) != 4 or dims[1] not in (3, -1):
        raise EngineError(f"the model's input is {dims}; a YOLO detector takes [N, 3, H, W]")
    fixed_hw = [d for d in dims[2:] if d != -1]
    if fixed_hw and fixed_hw != [input_size] * len(fixed_hw):
        raise EngineError(f"the model takes {dims[2]}x{dims[3]} images; set "
                          f"detector.input_size to match (it is {input_size})")
    if dims[0] != -1 and batch != (dims[0],) * 3:
        raise EngineError(
            f"the model has a fixed batch of {dims[0]}; export it with a dynamic batch axis "
            f"(`streamd export`, or yolo export dynamic=True), or set min_batch, opt_batch and "
            f"max_batch to {dims[0]}")
    return tuple((b, 3, input_size, input_size) for b in batch)  # type: ignore[return-value]


def format_parser_error(error: Any) -> str:
    """One line for a TensorRT ONNX parser error (`OnnxParser.get_error(i)`): description,
    node index, and node name/operator where this TensorRT version reports them."""
    parts = [str(error.desc()).strip()]
    where = []
    node = int(error.node())
    if node >= 0:
        where.append(f"node {node}")
    for attr in ("node_name", "node_operator"):
        getter = getattr(error, attr, None)
        value = str(getter()).strip() if callable(getter) else ""
        if value:
            where.append(value)
    if where:
        parts.append(f"({', '.join(where)})")
    code = getattr(error.code(), "name", str(error.code()))
    return f"{code}: {' '.join(parts)}"


# --- progress -------------------------------------------------------------------------------


class BuildProgress:
    """Turns TensorRT's IProgressMonitor callbacks into a few readable lines with the elapsed
    time: phase starts and ends up to `max_depth`, and at most one "step i/n" line per
    `interval_s`. TensorRT calls it from its own threads, hence the lock. Builds on a Jetson
    take minutes; an operator must see that it is alive."""

    def __init__(self, report: Callable[[str], None], *, interval_s: float = 5.0,
                 max_depth: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self._report = report
        self._interval_s = interval_s
        self._max_depth = max_depth
        self._clock = clock
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int, float]] = {}  # name -> depth, steps, start
        self.started = clock()
        self._last_step_line = self.started

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def line(self, text: str) -> None:
        self._report(f"[{self.elapsed_s():7.1f} s] {text}")

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = 0 if parent_phase is None else self._phases.get(parent_phase,
                                                                     (-1, 0, 0.0))[0] + 1
            self._phases[phase_name] = (depth, num_steps, self._clock())
            if depth <= self._max_depth:
                self.line(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        """Always True: returning False would cancel the build."""
        with self._lock:
            now = self._clock()
            if now - self._last_step_line >= self._interval_s:
                self._last_step_line = now
                depth, steps, _ = self._phases.get(phase_name, (0, 0, now))
                self.line(f"{'  ' * depth}{phase_name}: step {step + 1}/{steps}")
        return True

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            depth, _, start = self._phases.pop(phase_name, (0, 0, self._clock()))
            if depth <= self._max_depth:
                self.line(f"{'  ' * depth}{phase_name} done ({self._clock() - start:.1f} s)")


# --- INT8 calibration data ------------------------------------------------------------------


def calibration_images(folder: Path, batch: int) -> list[Path]:
    """The image files in `folder` (sorted, so calibration is repeatable), at least `batch`."""
    if not folder.is_dir():
        raise EngineError(f"detector.calibration_dir: {folder} is not a directory")
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in CALIBRATION_SUFFIXES)
    if len(images) < batch:
        raise EngineError(
            f"detector.calibration_dir: {folder} has {len(images)} images "
            f"({', '.join(sorted(CALIBRATION_SUFFIXES))}); int8 calibration needs at least "
            f"{batch} (one batch), a few hundred frames from the cameras are best")
    return images


def calibration_batches(images: Sequence[Path], size: int, batch: int
                        ) -> Iterator[FloatArray]:
    """Full batches (batch, 3, size, size) of calibration images, preprocessed by the very
    `letterbox_batch` inference uses, so int8 scales are measured on what the engine will
    see. Unreadable files are skipped (logged); a last partial batch is dropped, because the
    calibration profile has a fixed batch."""
    pending = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("calibration: cannot read %s, skipped", path)
            continue
        pending.append(np.asarray(image, np.uint8))
        if len(pending) == batch:
            yield letterbox_batch(pending, size)[0]
            pending = []


def calibration_cache_path(engine_dir: Path, key: EngineKey, images: Sequence[Path]) -> Path:
    """INT8 scales depend on the model, the input size and the images (not on the GPU), so
    the cache is keyed on those: a changed image folder recalibrates."""
    h = hashlib.sha256()
    for p in images:
        h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
    return engine_dir / (f"calib.{key.onnx_sha256[:12]}.{key.input_shape[1]}."
                         f"{h.hexdigest()[:12]}.cache")


# --- ONNX metadata without onnx -------------------------------------------------------------


def _varint(buf: memoryview | mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview | mmap.mmap, start: int, end: int
            ) -> Iterator[tuple[int, int, int, int]]:
    """Top-level protobuf fields in buf[start:end]: (number, wire type, value start, value
    end or varint value)."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, pos
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
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


def sidecar_for(key: EngineKey, onnx_file: Path, labels: tuple[str, ...] | None,
                build_s: float, streamd_version: str) -> Sidecar:
    """The record of a build that just finished."""
    built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Sidecar(key, onnx_file.name, labels, built_at, build_s, streamd_version)
