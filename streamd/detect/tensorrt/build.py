"""ONNX -> TensorRT engine, and the engine cache the daemon reads at startup.

`build_engine` is `streamd engine build`: parse the ONNX file (parser errors listed), set the
workspace pool limit, one optimization profile for the dynamic batch axis (min/opt/max at
`input_size`), the precision the installed TensorRT allows (`options.builder_options`), INT8
calibration from an image folder through the inference letterbox, a timing cache reused
between builds, and progress lines with the elapsed time. The engine lands in the cache
directory under a name derived from its `EngineKey`, with a JSON sidecar.

`ensure_engine` is what the TensorRT detector calls at startup: load the matching cached
engine, build it (`detector.build: auto`) or refuse a stale one (`never`) saying what
differs; a `detector.model` that is already an engine (streamd's or Ultralytics') is loaded
as it is, after checking its sidecar when it has one.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streamd import __version__
from streamd.detect.tensorrt.cache import CacheLookup, lookup, timing_cache_path
from streamd.detect.tensorrt.calibration import int8_calibrator
from streamd.detect.tensorrt.errors import EngineError
from streamd.detect.tensorrt.gpu import CudaRuntime, import_cudart, import_tensorrt, trt_logger
from streamd.detect.tensorrt.key import EngineKey, GpuInfo, diff_keys, file_sha256
from streamd.detect.tensorrt.onnx_meta import onnx_metadata
from streamd.detect.tensorrt.options import builder_options, format_parser_error, profile_shapes
from streamd.detect.tensorrt.progress import BuildProgress, progress_monitor
from streamd.detect.tensorrt.settings import TensorRTDetectorSettings
from streamd.detect.tensorrt.sidecar import (
    Sidecar,
    atomic_write,
    read_sidecar,
    sidecar_for,
    write_sidecar,
)
from streamd.detect.tensorrt.ultralytics import UltralyticsHeader, read_engine_file
from streamd.detect.yolo import parse_names

log = logging.getLogger(__name__)

Report = Callable[[str], None]

BUILD_OVERRIDES = ("model", "precision", "calibration_dir", "min_batch", "opt_batch",
                   "max_batch", "input_size", "workspace_mb", "engine_dir", "device")
"""Settings `streamd engine build` accepts on the command line (over the config's)."""


def build_settings(base: Any, overrides: Mapping[str, Any]) -> TensorRTDetectorSettings:
    """The settings one build uses: the config's `detector` (which must be tensorrt) or none,
    with command-line overrides, validated like the YAML (ValueError with the reason)."""
    if base is not None and not isinstance(base, TensorRTDetectorSettings):
        raise ValueError(f"the config's detector.backend is {base.backend!r}; engine build "
                         "needs backend: tensorrt (or no -c and --onnx)")
    data: dict[str, Any] = ({} if base is None else
                            base.model_dump(exclude_unset=True, exclude_defaults=False))
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["backend"] = "tensorrt"
    if "model" not in data:
        raise ValueError("no model: give --onnx FILE or -c CONFIG with detector.model")
    try:
        return TensorRTDetectorSettings.model_validate(data)
    except ValidationError as exc:
        raise ValueError("; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'detector'}: {e['msg']}" for e in exc.errors()
        )) from None


def _labels_from_onnx(path: Path) -> tuple[str, ...] | None:
    meta = onnx_metadata(path).get("names")
    if meta is None:
        return None
    try:
        return tuple(parse_names(meta))
    except ValueError as exc:
        log.warning("%s: names metadata ignored: %s", path, exc)
        return None


def wanted_key(settings: TensorRTDetectorSettings, tensorrt_version: str, gpu: GpuInfo,
               onnx_sha256: str) -> EngineKey:
    """The key of the engine `settings` need on this TensorRT and GPU."""
    s = settings.input_size
    return EngineKey(onnx_sha256, tensorrt_version, gpu.name, gpu.compute_capability,
                     settings.precision, (3, s, s), settings.batch_range)


@dataclass(frozen=True)
class BuildResult:
    """What `build_engine` did: where the engine is and its record."""

    path: Path
    sidecar: Sidecar
    built: bool
    """False: a matching engine was already cached."""
    seconds: float


@dataclass(frozen=True)
class EngineFile:
    """An engine ready to deserialize, and what is known about it."""

    path: Path
    plan: bytes
    labels: tuple[str, ...] | None
    imgsz: tuple[int, int] | None
    """(H, W) when a header or sidecar says."""


def build_engine(settings: TensorRTDetectorSettings, *, report: Report = log.info,
                 force: bool = False) -> BuildResult:
    """Build (or find cached) the engine for `settings` on this box's GPU; `streamd engine
    build`. Raises EngineError/DetectorError with the reason."""
    if settings.prebuilt:
        raise EngineError(f"{settings.model} is already an engine; engine build takes an "
                          "ONNX model")
    trt = import_tensorrt()
    cuda = CudaRuntime(import_cudart(), settings.device)
    return _build_or_find(settings, trt, cuda, report, force)


def _build_or_find(settings: TensorRTDetectorSettings, trt: Any, cuda: CudaRuntime,
                   report: Report, force: bool) -> BuildResult:
    onnx = settings.model
    if not onnx.is_file():
        raise EngineError(f"detector.model: {onnx} does not exist")
    gpu = cuda.gpu()
    key = wanted_key(settings, trt.__version__, gpu, file_sha256(onnx))
    engine_dir = settings.resolved_engine_dir()
    found = lookup(engine_dir, onnx.name, key)
    if found.found and not force:
        sidecar = read_sidecar(found.path)
        assert sidecar is not None  # lookup found it matching
        report(f"up to date: {found.path}")
        return BuildResult(found.path, sidecar, False, 0.0)
    if found.closest is not None and not force:
        path, diffs = found.closest
        report(f"{path.name} is stale ({'; '.join(diffs)}): building a new engine")
    try:
        engine_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"detector.engine_dir: cannot create {engine_dir}: {exc.strerror} "
                          "(under systemd, CacheDirectory=streamd gives a writable one)") from None
    progress = BuildProgress(report)
    plan = _build_plan(settings, trt, cuda, gpu, key, engine_dir, progress)
    try:
        atomic_write(found.path, plan)
        sidecar = sidecar_for(key, onnx, _labels_from_onnx(onnx), progress.elapsed_s(),
                                 __version__)
        write_sidecar(found.path, sidecar)
    except OSError as exc:
        raise EngineError(f"cannot write the engine to {engine_dir}: {exc.strerror}") from None
    progress.line(f"engine written: {found.path} ({len(plan) / 1e6:.1f} MB, built in "
                  f"{progress.elapsed_s():.1f} s)")
    return BuildResult(found.path, sidecar, True, progress.elapsed_s())


def _build_plan(settings: TensorRTDetectorSettings, trt: Any, cuda: CudaRuntime, gpu: GpuInfo,
                key: EngineKey, engine_dir: Path, progress: BuildProgress) -> bytes:
    """The TensorRT calls of one build; returns the serialized plan."""
    options = builder_options(trt.__version__, settings.precision)
    for note in options.notes:
        log.warning("%s", note)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
             if options.strongly_typed else 0)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    progress.line(f"parsing {settings.model}")
    ok = parser.parse_from_file(str(settings.model))
    errors = [format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok or errors:
        listed = "\n  ".join(errors) or "no details from the parser"
        raise EngineError(f"TensorRT cannot parse {settings.model} ({len(errors)} "
                          f"error(s)):\n  {listed}")
    if network.num_inputs != 1 or network.num_outputs < 1:
        raise EngineError(f"{settings.model} has {network.num_inputs} inputs and "
                          f"{network.num_outputs} outputs; a YOLO detector has one input")
    inp = network.get_input(0)
    lo, opt, hi = profile_shapes(list(inp.shape), settings.input_size,
                                    settings.batch_range)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    for name in options.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in options.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    timing_path = timing_cache_path(engine_dir, key)
    _load_timing_cache(config, timing_path, progress)
    monitor = progress_monitor(trt, progress)
    config.progress_monitor = monitor
    calibrator = None
    if options.calibrate:
        calibrator = int8_calibrator(trt, cuda, settings, key, engine_dir, inp.name)
        with warnings.catch_warnings():  # deprecated from 10.1; builder_options noted it
            warnings.simplefilter("ignore", DeprecationWarning)
            config.int8_calibrator = calibrator
            calib_profile = builder.create_optimization_profile()
            shape = (calibrator.get_batch_size(), 3, settings.input_size, settings.input_size)
            calib_profile.set_shape(inp.name, shape, shape, shape)
            config.set_calibration_profile(calib_profile)
    progress.line(f"building {settings.precision} engine for {gpu.name} (sm "
                  f"{gpu.compute_capability}), TensorRT {trt.__version__}, input "
                  f"{'x'.join(map(str, key.input_shape))}, batch {lo[0]}/{opt[0]}/{hi[0]}, "
                  f"workspace {settings.workspace_mb} MB; this takes minutes on a Jetson")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise EngineError("TensorRT failed to build the engine; its log above says why "
                          "(run with --log-level DEBUG for all of it)")
    _save_timing_cache(config, timing_path)
    return bytes(memoryview(serialized))


def _load_timing_cache(config: Any, path: Path, progress: BuildProgress) -> None:
    """Kernel timings of earlier builds on this GPU and TensorRT: a rebuild (another model,
    precision or batch range) skips most of the timing that makes builds slow."""
    data = b""
    if path.is_file():
        data = path.read_bytes()
        progress.line(f"timing cache: {path} ({len(data) / 1e3:.0f} kB)")
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log.warning("timing cache %s is unusable; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        atomic_write(path, bytes(memoryview(cache.serialize())))
    except OSError as exc:
        log.warning("cannot save the timing cache %s: %s", path, exc.strerror)


def ensure_engine(settings: TensorRTDetectorSettings, trt: Any, cuda: CudaRuntime, *,
                  report: Report = log.info) -> EngineFile:
    """The engine the daemon should load for `settings` on this GPU: cached, built now
    (`build: auto`), or refused with what differs (`build: never`)."""
    if settings.prebuilt:
        return _prebuilt(settings.model, trt.__version__, cuda.gpu())
    onnx = settings.model
    if not onnx.is_file():
        raise EngineError(f"detector.model: {onnx} does not exist")
    key = wanted_key(settings, trt.__version__, cuda.gpu(), file_sha256(onnx))
    engine_dir = settings.resolved_engine_dir()
    found = lookup(engine_dir, onnx.name, key)
    if found.found:
        sidecar = read_sidecar(found.path)
    elif settings.build == "never":
        raise EngineError(_missing_message(found, engine_dir, onnx))
    else:
        report(f"no engine for {onnx.name} matches this GPU and config in {engine_dir}; "
               "building one (detector.build: auto)")
        sidecar = _build_or_find(settings, trt, cuda, report, False).sidecar
    try:
        plan = found.path.read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read {found.path}: {exc.strerror}") from None
    return EngineFile(found.path, plan, sidecar.labels if sidecar else None,
                      key.input_shape[1:])


def _missing_message(found: CacheLookup, engine_dir: Path, onnx: Path) -> str:
    fix = ("run `streamd engine build -c CONFIG` (as the service user, so the engine lands in "
           "its engine_dir) or set detector.build: auto")
    if found.closest is None:
        return (f"detector.build is never and {engine_dir} holds no engine for {onnx.name}; "
                f"{fix}")
    path, diffs = found.closest
    return (f"detector.build is never and the engine for {onnx.name} in {engine_dir} is "
            f"stale: {path.name} differs in {'; '.join(diffs)}; {fix}")


def _prebuilt(path: Path, tensorrt_version: str, gpu: GpuInfo) -> EngineFile:
    """An engine file named in the config: streamd's (sidecar checked against this TensorRT
    and GPU) or an Ultralytics export (header read and stripped)."""
    if not path.is_file():
        raise EngineError(f"detector.model: {path} does not exist")
    header: UltralyticsHeader | None
    header, plan = read_engine_file(path)
    sidecar = read_sidecar(path)
    if sidecar is not None:
        here = dataclasses.replace(sidecar.key, tensorrt=tensorrt_version, gpu_name=gpu.name,
                                   compute_capability=gpu.compute_capability)
        diffs = diff_keys(here, sidecar.key)
        if diffs:
            raise EngineError(f"detector.model: {path} was built for another box: "
                              f"{'; '.join(diffs)}; rebuild it here from the ONNX model "
                              "(`streamd engine build`) or point detector.model at the .onnx")
        return EngineFile(path, plan, sidecar.labels, sidecar.key.input_shape[1:])
    if header is not None:
        log.info("%s: Ultralytics engine (%s), %s classes, imgsz %s", path,
                 header.raw.get("version", "?"),
                 len(header.names) if header.names else "no", header.imgsz)
        return EngineFile(path, plan, header.names, header.imgsz)
    log.warning("%s has no sidecar and no Ultralytics header: its TensorRT version and GPU "
                "cannot be checked before loading", path)
    return EngineFile(path, plan, None, None)
