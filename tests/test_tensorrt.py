"""The TensorRT backend: buffer sizing and CUDA error handling on any machine; the backend
against ONNX Runtime on the same model and images where TensorRT and a GPU exist (`gpu`
marker, skipped elsewhere with the reason)."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from streamd.cli import main
from streamd.detect import BACKENDS, DetectorError, create_detector
from streamd.detect.base import Detector
from streamd.detect.onnxruntime import ONNXRuntimeDetectorSettings
from streamd.detect.tensorrt import TensorRTDetectorSettings
from streamd.detect.tensorrt.build import build_engine, wanted_key
from streamd.detect.tensorrt.errors import EngineError
from streamd.detect.tensorrt.gpu import CudaRuntime, host_view
from streamd.detect.tensorrt.key import GpuInfo, file_sha256
from streamd.detect.tensorrt.runtime import (
    IOBuffers,
    TensorRTDetector,
    TensorSpec,
    grown_capacity,
)
from streamd.detect.tensorrt.sidecar import read_sidecar, sidecar_for, write_sidecar
from streamd.detect.yolo import COCO80, letterbox_batch, resolve_labels
from streamd.detections import Detections
from streamd.frames import Image
from tests.test_engine import FakeParserError, write_images

# --- buffer sizing --------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "needed", "limit", "expected"), [
    (0, 1, 8, 1),
    (0, 3, 8, 4),
    (4, 4, 8, 4),  # fits: no growth
    (4, 1, 8, 4),  # never shrinks
    (4, 5, 8, 8),
    (8, 8, 8, 8),
    (0, 5, 6, 6),  # capped at the limit
    (0, 1, 1, 1),
])
def test_grown_capacity(current: int, needed: int, limit: int, expected: int) -> None:
    assert grown_capacity(current, needed, limit) == expected


@pytest.mark.parametrize(("needed", "limit"), [(0, 8), (9, 8), (-1, 8)])
def test_grown_capacity_outside_the_range(needed: int, limit: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        grown_capacity(0, needed, limit)


def test_tensor_spec_bytes() -> None:
    spec = TensorSpec("output0", (84, 2100), np.dtype(np.float16))
    assert spec.nbytes(1) == 84 * 2100 * 2
    assert spec.nbytes(4) == 4 * 84 * 2100 * 2


class HostMemory:
    """Allocator test double backed by real (ctypes) memory, counting live allocations."""

    def __init__(self) -> None:
        self.live: dict[int, ctypes.Array[ctypes.c_byte]] = {}
        self.sizes: list[tuple[str, int]] = []

    def _alloc(self, kind: str, nbytes: int) -> int:
        buf = (ctypes.c_byte * nbytes)()
        ptr = ctypes.addressof(buf)
        self.live[ptr] = buf
        self.sizes.append((kind, nbytes))
        return ptr

    def malloc(self, nbytes: int) -> int:
        return self._alloc("device", nbytes)

    def malloc_host(self, nbytes: int) -> int:
        return self._alloc("host", nbytes)

    def free(self, ptr: int) -> None:
        del self.live[ptr]

    def free_host(self, ptr: int) -> None:
        del self.live[ptr]


SPECS = [TensorSpec("images", (3, 32, 32), np.dtype(np.float16)),
         TensorSpec("output0", (6, 21), np.dtype(np.float32))]


def test_buffers_grow_only_when_the_batch_grows() -> None:
    memory = HostMemory()
    buffers = IOBuffers(memory, SPECS, limit=8)
    assert buffers.ensure(1)
    assert buffers.capacity == 1 and len(memory.live) == 4  # host + device per tensor
    assert memory.sizes == [("host", 3 * 32 * 32 * 2), ("device", 3 * 32 * 32 * 2),
                            ("host", 6 * 21 * 4), ("device", 6 * 21 * 4)]
    for batch in (1, 1, 1):
        assert not buffers.ensure(batch)
    assert buffers.ensure(3)
    assert buffers.capacity == 4 and buffers.allocations == 2 and len(memory.live) == 4
    for batch in (2, 4, 1, 3):
        assert not buffers.ensure(batch)
    assert buffers.ensure(7) and buffers.capacity == 8
    assert not buffers.ensure(8)
    assert buffers.allocations == 3 and len(memory.live) == 4  # old buffers were freed
    host = buffers.host("images")
    assert host.shape == (8, 3, 32, 32) and host.dtype == np.float16
    assert buffers.host("output0").shape == (8, 6, 21)
    assert buffers.device("images") in memory.live
    with pytest.raises(ValueError, match="outside"):
        buffers.ensure(9)
    buffers.free()
    assert memory.live == {} and buffers.capacity == 0
    buffers.free()  # twice is fine


def test_host_buffer_views_write_through_to_the_memory() -> None:
    memory = HostMemory()
    buffers = IOBuffers(memory, SPECS, limit=2)
    buffers.ensure(2)
    view = buffers.host("images")
    view[1] = np.float32(0.5)  # fp32 data into an fp16 engine input
    raw = np.frombuffer(memory.live[buffers.host_ptr("images")], np.float16)
    assert raw.size == 2 * 3 * 32 * 32
    assert (raw[: 3 * 32 * 32] == 0).all() and (raw[3 * 32 * 32:] == 0.5).all()


def test_host_view_checks_the_size() -> None:
    buf = (ctypes.c_byte * 16)()
    view = host_view(ctypes.addressof(buf), 16, np.float32, (2, 2))
    view[:] = 1.0
    assert bytes(buf) == np.ones(4, np.float32).tobytes()
    with pytest.raises(ValueError, match="needs 20 bytes"):
        host_view(ctypes.addressof(buf), 16, np.float32, (5,))


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "from_model", "classes", "expected"), [
    (["a", "b"], ["x", "y"], 2, ("a", "b")),
    (None, ["x", "y"], 2, ("x", "y")),
    (None, None, 80, COCO80),
    (None, None, 3, ("0", "1", "2")),
])
def test_resolve_labels(configured: list[str] | None, from_model: list[str] | None,
                        classes: int, expected: tuple[str, ...]) -> None:
    assert resolve_labels(configured, from_model, classes, "m.engine") == expected


@pytest.mark.parametrize(("configured", "from_model", "words"), [
    (["a"], None, "detector.labels has 1 names; the model has 2"),
    (None, ["x", "y", "z"], "names metadata has 3 entries, the output 2 classes"),
])
def test_resolve_labels_mismatch(configured: list[str] | None, from_model: list[str] | None,
                                 words: str) -> None:
    with pytest.raises(DetectorError, match=words):
        resolve_labels(configured, from_model, 2, "m.engine")


# --- CUDA call checking ---------------------------------------------------------------------


class FakeError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


def fake_cudart(devices: int = 1, malloc_error: FakeError = FakeError.cudaSuccess) -> Any:
    """The shape of cuda-python's runtime module: every call returns (error, *values)."""
    return SimpleNamespace(
        cudaError_t=FakeError,
        cudaGetDeviceCount=lambda: (FakeError.cudaSuccess, devices),
        cudaSetDevice=lambda device: (FakeError.cudaSuccess,),
        cudaMalloc=lambda nbytes: (malloc_error, 0xD000),
        cudaGetErrorString=lambda err: (FakeError.cudaSuccess, b"out of memory"),
        cudaGetDeviceProperties=lambda device: (FakeError.cudaSuccess, SimpleNamespace(
            name=b"Orin\0\0\0", major=8, minor=7)),
    )


def test_cuda_calls_return_their_values() -> None:
    cuda = CudaRuntime(fake_cudart(), 0)
    assert cuda.malloc(64) == 0xD000
    gpu = cuda.gpu()
    assert (gpu.name, gpu.compute_capability) == ("Orin", "8.7")


def test_cuda_errors_name_the_call() -> None:
    cuda = CudaRuntime(fake_cudart(malloc_error=FakeError.cudaErrorMemoryAllocation), 0)
    with pytest.raises(DetectorError, match="CUDA cudaMalloc failed: "
                       "cudaErrorMemoryAllocation: out of memory"):
        cuda.malloc(64)


def test_a_missing_cuda_device() -> None:
    with pytest.raises(DetectorError, match=r"device 1 does not exist \(this box has 1"):
        CudaRuntime(fake_cudart(devices=1), 1)


# --- without TensorRT -----------------------------------------------------------------------


def trt_settings(model: Path, **kw: Any) -> TensorRTDetectorSettings:
    return TensorRTDetectorSettings(backend="tensorrt", model=model, **kw)


def test_tensorrt_is_registered_without_importing_it() -> None:
    assert "tensorrt" in BACKENDS
    assert "tensorrt" not in sys.modules or sys.modules["tensorrt"] is not None


def test_create_detector_without_tensorrt(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where installed
    with pytest.raises(DetectorError, match=r"TensorRT is not available .*"
                       r"pip install streamd\[trt\].*python3-libnvinfer"):
        create_detector(trt_settings(tmp_path / "m.onnx"))


def test_create_detector_without_cuda_python(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DetectorError, match=r"CUDA Python bindings are not available .*"
                       r"pip install streamd\[trt\]"):
        create_detector(trt_settings(tmp_path / "m.onnx"))


# --- on a GPU: TensorRT against ONNX Runtime ------------------------------------------------


@pytest.fixture(scope="module")
def gpu() -> Any:
    """TensorRT and CUDA with at least one device, or a skip that says what is missing."""
    reasons = []
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        reasons.append(f"import tensorrt: {exc}")
        tensorrt = None
    try:
        from cuda.bindings import runtime
    except (ImportError, OSError) as exc:
        reasons.append(f"import cuda.bindings: {exc}")
    else:
        err, count = runtime.cudaGetDeviceCount()
        if err != runtime.cudaError_t.cudaSuccess or count < 1:
            reasons.append(f"no CUDA device ({err})")
    if reasons:
        pytest.skip("TensorRT/CUDA not available: " + "; ".join(reasons))
    return tensorrt


@pytest.fixture(scope="module")
def yolo320(gpu: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_detect import load_builder

    path: Path = load_builder().build(tmp_path_factory.mktemp("onnx") / "yolov8n.onnx",
                                      imgsz=320)
    return path


@pytest.fixture(scope="module")
def engine_dir(gpu: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def scene(seed: int, h: int, w: int) -> Image:
    """Smooth random texture with a few blobs: the random-weight model finds a few dozen
    objects with spread-out scores in some of these (no near-ties for NMS to flip)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h // 8, w // 8, 3), np.uint8)
    img = cv2.GaussianBlur(cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 2)
    for _ in range(5):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 80))
        axes = (int(rng.integers(8, 30)), int(rng.integers(15, 40)))
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.ellipse(img, (x + 30, y + 40), axes, 0, 0, 360, color, -1)
    return np.asarray(img, np.uint8)


@pytest.fixture(scope="module")
def images() -> list[Image]:
    """Four sizes (letterbox both ways); on the imgsz=320 random model the first two give
    34 and 41 detections with ONNX Runtime, the others none."""
    return [scene(1, 240, 320), scene(11, 240, 320), scene(0, 576, 768), scene(3, 100, 400)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def matched(ref: Detections, other: Detections, conf: float, margin: float = 0.01
            ) -> tuple[int, int]:
    """(detections of `ref` clearly above `conf`, how many of them `other` has: same class,
    IoU > 0.95, score within `margin`). Scores right at the threshold may flip either way."""
    clear = np.flatnonzero(ref.confidence > conf + margin)
    found = 0
    for i in clear:
        same = np.flatnonzero(other.class_id == ref.class_id[i])
        if len(same):
            overlap, j = max((iou(ref.xyxy[i], other.xyxy[j]), j) for j in same)
            found += overlap > 0.95 and abs(other.confidence[j] - ref.confidence[i]) < margin
    return len(clear), found


def assert_same_boxes(expected: Detections, got: Detections, conf: float) -> None:
    for a, b in ((expected, got), (got, expected)):
        total, found = matched(a, b, conf)
        assert found >= 0.95 * total, f"{found} of {total} detections matched"
    assert abs(len(expected) - len(got)) <= max(2, len(expected) // 20)


@pytest.fixture(scope="module")
def trt_fp32(yolo320: Path, engine_dir: Path) -> Iterator[Detector]:
    det = create_detector(trt_settings(yolo320, precision="fp32", engine_dir=engine_dir,
                                       max_batch=4, confidence=0.25))
    assert det is not None
    yield det
    det.close()


@pytest.mark.gpu
def test_build_writes_engine_sidecar_and_timing_cache(trt_fp32: Detector, yolo320: Path,
                                                      engine_dir: Path, gpu: Any) -> None:
    engines = list(engine_dir.glob("*.engine"))
    assert len(engines) == 1
    sidecar = read_sidecar(engines[0])
    assert sidecar is not None
    assert sidecar.key.tensorrt == gpu.__version__
    assert sidecar.key.precision == "fp32" and sidecar.key.batch == (1, 4, 4)
    assert sidecar.key.input_shape == (3, 320, 320)
    assert sidecar.labels == COCO80 and sidecar.onnx_file == "yolov8n.onnx"
    assert list(engine_dir.glob("timing.*.cache"))
    assert trt_fp32.labels == COCO80 and trt_fp32.max_batch == 4


@pytest.mark.gpu
def test_tensorrt_gives_onnxruntime_boxes(trt_fp32: Detector, yolo320: Path,
                                          images: list[Image]) -> None:
    import onnxruntime

    assert isinstance(trt_fp32, TensorRTDetector)
    tensor, _ = letterbox_batch(images, 320)
    session = onnxruntime.InferenceSession(str(yolo320), providers=["CPUExecutionProvider"])
    raw_ort = session.run(None, {"images": tensor})[0]
    raw_trt = trt_fp32.infer(tensor)
    assert raw_trt.shape == raw_ort.shape == (4, 84, 2100)
    np.testing.assert_allclose(raw_trt[:, :4], raw_ort[:, :4], atol=0.1)  # px
    np.testing.assert_allclose(raw_trt[:, 4:], raw_ort[:, 4:], atol=5e-3)  # scores

    ort = create_detector(ONNXRuntimeDetectorSettings(backend="onnxruntime", model=yolo320,
                                                      max_batch=4, confidence=0.25))
    assert ort is not None
    expected = ort.detect(images)
    got = trt_fp32.detect(images)  # one batch of 4
    one_by_one = [trt_fp32.detect([im])[0] for im in images]  # batch 1, buffers reused
    assert sum(len(d) for d in expected) >= 20, "the random model found too little"
    for e, g, s in zip(expected, got, one_by_one, strict=True):
        assert_same_boxes(e, g, 0.25)
        assert_same_boxes(g, s, 0.25)
    assert len(trt_fp32.detect(images * 3)) == 12  # more than max_batch: split
    assert trt_fp32.detect([]) == []


@pytest.mark.gpu
def test_cached_engine_is_reused_and_stale_one_refused(trt_fp32: Detector, yolo320: Path,
                                                       engine_dir: Path) -> None:
    again = create_detector(trt_settings(yolo320, precision="fp32", engine_dir=engine_dir,
                                         max_batch=4, build="never"))
    assert again is not None
    again.close()
    assert len(list(engine_dir.glob("*.engine"))) == 1
    with pytest.raises(EngineError, match=r"stale: .*precision: engine fp32, wanted fp16"):
        create_detector(trt_settings(yolo320, precision="fp16", engine_dir=engine_dir,
                                     max_batch=4, build="never"))


@pytest.mark.gpu
def test_ultralytics_engine_file_loads_with_its_names(trt_fp32: Detector, engine_dir: Path,
                                                      tmp_path: Path, images: list[Image]
                                                      ) -> None:
    (plan_path,) = engine_dir.glob("*.engine")
    names = {str(i): f"thing{i}" for i in range(80)}
    meta = json.dumps({"names": names, "imgsz": [320, 320], "batch": 4}).encode()
    exported = tmp_path / "yolov8n.engine"
    exported.write_bytes(len(meta).to_bytes(4, "little") + meta + plan_path.read_bytes())
    det = create_detector(trt_settings(exported, max_batch=4, confidence=0.25))
    assert det is not None
    try:
        assert det.labels == tuple(names.values())
        for a, b in zip(det.detect(images), trt_fp32.detect(images), strict=True):
            np.testing.assert_array_equal(a.xyxy, b.xyxy)
    finally:
        det.close()


@pytest.mark.gpu
def test_fp16_engine_runs(yolo320: Path, tmp_path: Path, images: list[Image]) -> None:
    det = create_detector(trt_settings(yolo320, precision="fp16", engine_dir=tmp_path,
                                       max_batch=2))
    assert det is not None
    try:
        out = det.detect(images)
        assert len(out) == len(images)
        for d, im in zip(out, images, strict=True):
            assert (d.xyxy[:, 2] <= im.shape[1]).all() and (d.xyxy[:, 3] <= im.shape[0]).all()
    finally:
        det.close()
    det.close()  # twice is fine
    with pytest.raises(DetectorError, match="after close"):
        det.detect(images)


# --- the backend's control flow on a simulated TensorRT + CUDA ------------------------------


class SimulatedCuda:
    """cuda-python's runtime module as the backend calls it, on host memory: "device"
    pointers are ctypes buffers and copies are memmove. Records what was called."""

    cudaError_t = FakeError

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.live: dict[int, ctypes.Array[ctypes.c_byte]] = {}
        self.calls: list[str] = []

    def _ok(self, name: str, *values: Any) -> tuple[Any, ...]:
        self.calls.append(name)
        return (FakeError.cudaSuccess, *values)

    def _alloc(self, name: str, nbytes: int) -> tuple[Any, ...]:
        buf = (ctypes.c_byte * nbytes)()
        self.live[ctypes.addressof(buf)] = buf
        return self._ok(name, ctypes.addressof(buf))

    def cudaGetDeviceCount(self) -> tuple[Any, ...]:
        return self._ok("cudaGetDeviceCount", 1)

    def cudaSetDevice(self, device: int) -> tuple[Any, ...]:
        return self._ok("cudaSetDevice")

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, ...]:
        return self._ok("cudaGetDeviceProperties",
                        SimpleNamespace(name=b"Simulated GPU\0", major=8, minor=7))

    def cudaMalloc(self, nbytes: int) -> tuple[Any, ...]:
        return self._alloc("cudaMalloc", nbytes)

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, ...]:
        return self._alloc("cudaMallocHost", nbytes)

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:
        del self.live[ptr]
        return self._ok("cudaFree")

    def cudaFreeHost(self, ptr: int) -> tuple[Any, ...]:
        del self.live[ptr]
        return self._ok("cudaFreeHost")

    def cudaStreamCreate(self) -> tuple[Any, ...]:
        return self._ok("cudaStreamCreate", 77)

    def cudaStreamDestroy(self, stream: int) -> tuple[Any, ...]:
        return self._ok("cudaStreamDestroy")

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any, ...]:
        return self._ok("cudaStreamSynchronize")

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind: Any) -> tuple[Any, ...]:
        ctypes.memmove(dst, src, nbytes)
        return self._ok(f"cudaMemcpy {kind.name[10:]} {nbytes}")

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: Any,
                        stream: int) -> tuple[Any, ...]:
        assert stream == 77
        ctypes.memmove(dst, src, nbytes)
        return self._ok(f"cudaMemcpyAsync {kind.name[10:]} {nbytes}")

    def cudaGetErrorString(self, err: Any) -> tuple[Any, ...]:
        return (FakeError.cudaSuccess, b"simulated")


class SimulatedTensorRT:
    """The slice of the TensorRT 10 Python API streamd uses. The builder calls the progress
    monitor and the calibrator as TensorRT does and returns the ONNX model as the "plan";
    the runtime runs that with ONNX Runtime when `execute_async_v3` is called, reading and
    writing the bound addresses. So streamd's side (build orchestration, cache, name-based
    I/O, shapes, bindings, copies, padding) runs for real; TensorRT itself does not (the gpu
    tests do that)."""

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class ILogger:
        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    class BuilderFlag(enum.Enum):
        FP16 = 1
        INT8 = 2
        TF32 = 3

    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
    MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")

    def __init__(self, profile: tuple[int, int, int], version: str = "10.3.0") -> None:
        self.__version__ = version
        self.profile = profile
        """Batch range of engines that were not built by the simulated builder."""
        self.executions: list[int] = []
        self.builds: list[SimulatedConfig] = []
        outer = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                assert isinstance(logger, outer.ILogger)

            def deserialize_cuda_engine(self, plan: bytes) -> Any:
                return SimulatedEngine(outer, plan)

        class Builder:
            def __init__(self, logger: Any) -> None:
                assert isinstance(logger, outer.ILogger)

            def create_network(self, flags: int) -> Any:
                return SimpleNamespace(flags=flags, num_inputs=0, num_outputs=0, model=b"",
                                       get_input=lambda i: SimpleNamespace(
                                           name="images", shape=(-1, 3, -1, -1)))

            def create_builder_config(self) -> SimulatedConfig:
                return SimulatedConfig()

            def create_optimization_profile(self) -> Any:
                profile = SimpleNamespace(shapes={})
                profile.set_shape = lambda name, *shapes: profile.shapes.update({name: shapes})
                return profile

            def build_serialized_network(self, network: Any, config: SimulatedConfig) -> Any:
                return outer.build(network, config)

        class OnnxParser:
            def __init__(self, network: Any, logger: Any) -> None:
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                data = Path(path).read_bytes()
                if b"output0" not in data:
                    self.errors = [FakeParserError(0, "/junk"), FakeParserError(-1, None)]
                    return False
                self.network.model, self.network.num_inputs, self.network.num_outputs = (
                    data, 1, 1)
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> Any:
                return self.errors[i]

        self.Runtime, self.Builder, self.OnnxParser = Runtime, Builder, OnnxParser

    def build(self, network: Any, config: SimulatedConfig) -> bytes:
        """What TensorRT does with our callbacks during a build; the plan is the ONNX model
        behind a line with the profile's batch range."""
        self.builds.append(config)
        monitor = config.progress_monitor
        monitor.phase_start("Building engine", None, 2)
        monitor.phase_start("Autotuning", "Building engine", 3)
        for step in range(3):
            assert monitor.step_complete("Autotuning", step)
        monitor.phase_finish("Autotuning")
        monitor.phase_finish("Building engine")
        calibrator = config.int8_calibrator
        if calibrator is not None and calibrator.read_calibration_cache() is None:
            while (ptrs := calibrator.get_batch(["images"])) is not None:
                config.calibration_batches.append(ptrs)
            calibrator.write_calibration_cache(b"scales")
        config.timing_cache.data += b"+"
        (shapes,) = config.profiles
        return b"SIMPLAN %d %d %d\n" % tuple(s[0] for s in shapes["images"]) + network.model

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype


class SimulatedConfig:
    """IBuilderConfig: records what the builder was asked for."""

    def __init__(self) -> None:
        self.pools: dict[str, int] = {}
        self.profiles: list[dict[str, tuple[Any, ...]]] = []
        self.flags: set[str] = set()
        self.cleared: set[str] = set()
        self.progress_monitor: Any = None
        self.int8_calibrator: Any = None
        self.calibration_profile: Any = None
        self.calibration_batches: list[list[int]] = []
        self.timing_cache: Any = None
        self.loaded_timing_cache = b""

    def set_memory_pool_limit(self, pool: str, nbytes: int) -> None:
        self.pools[pool] = nbytes

    def add_optimization_profile(self, profile: Any) -> None:
        self.profiles.append(profile.shapes)

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self.cleared.add(flag.name)

    def set_calibration_profile(self, profile: Any) -> None:
        self.calibration_profile = profile.shapes

    def create_timing_cache(self, data: bytes) -> Any:
        self.loaded_timing_cache = bytes(data)
        return SimpleNamespace(data=bytes(data), serialize=lambda: self.timing_cache.data)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> None:
        self.timing_cache = cache

    def get_timing_cache(self) -> Any:
        return self.timing_cache


class SimulatedEngine:
    def __init__(self, trt: SimulatedTensorRT, plan: bytes) -> None:
        import onnxruntime

        self.trt = trt
        self.profile = trt.profile
        if plan.startswith(b"SIMPLAN "):  # built by the simulated builder
            line, plan = plan.split(b"\n", 1)
            lo, opt, hi = (int(v) for v in line.split()[1:])
            self.profile = (lo, opt, hi)
        self.session = onnxruntime.InferenceSession(plan, providers=["CPUExecutionProvider"])
        self.num_io_tensors = 2
        self.channels = int(self.session.get_outputs()[0].shape[1])  # 4 + classes

    def get_tensor_name(self, i: int) -> str:
        return ["images", "output0"][i]

    def get_tensor_mode(self, name: str) -> Any:
        mode = self.trt.TensorIOMode
        return mode.INPUT if name == "images" else mode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 3, 320, 320) if name == "images" else (-1, self.channels, 2100)

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        assert name == "images" and index == 0
        return [(b, 3, 320, 320) for b in self.profile]

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32

    def create_execution_context(self) -> Any:
        return SimulatedContext(self)


class SimulatedContext:
    def __init__(self, engine: SimulatedEngine) -> None:
        self.engine = engine
        self.batch = -1
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.profile
        if name != "images" or not lo <= shape[0] <= hi or shape[1:] != (3, 320, 320):
            return False
        self.batch = shape[0]
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self.engine.get_tensor_shape(name)
        return (self.batch, *shape[1:])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        n = self.batch
        count = n * 3 * 320 * 320
        raw = (ctypes.c_float * count).from_address(self.addresses["images"])
        images = np.frombuffer(raw, np.float32).reshape(n, 3, 320, 320)
        out = np.ascontiguousarray(self.engine.session.run(None, {"images": images})[0])
        ctypes.memmove(self.addresses["output0"], out.ctypes.data, out.nbytes)
        self.engine.trt.executions.append(n)
        return True


@pytest.fixture(scope="module")
def cpu_yolo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_detect import load_builder

    path: Path = load_builder().build(tmp_path_factory.mktemp("onnx") / "yolov8n.onnx",
                                      num_classes=3, imgsz=320)
    return path


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch) -> tuple[SimulatedTensorRT, SimulatedCuda]:
    trt, cuda = SimulatedTensorRT(profile=(2, 2, 4)), SimulatedCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    bindings = SimpleNamespace(runtime=cuda)
    monkeypatch.setitem(sys.modules, "cuda", SimpleNamespace(bindings=bindings))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)
    return trt, cuda


def ultralytics_engine(path: Path, plan: bytes, names: list[str]) -> Path:
    meta = json.dumps({"names": dict(enumerate(names)), "imgsz": [320, 320]}).encode()
    path.write_bytes(len(meta).to_bytes(4, "little") + meta + plan)
    return path


def test_backend_flow_on_simulated_tensorrt(simulated: tuple[SimulatedTensorRT, SimulatedCuda],
                                            cpu_yolo: Path, tmp_path: Path,
                                            images: list[Image]) -> None:
    trt, cuda = simulated
    engine = ultralytics_engine(tmp_path / "m.engine", cpu_yolo.read_bytes(), ["a", "b", "c"])
    det = create_detector(trt_settings(engine, max_batch=8, confidence=0.05, classes=["b"]))
    assert isinstance(det, TensorRTDetector)
    assert det.labels == ("a", "b", "c")  # from the Ultralytics header
    assert det.max_batch == 4  # the profile's max, below detector.max_batch
    assert trt.executions == [2]  # warm-up at the profile's minimum batch
    ort = create_detector(ONNXRuntimeDetectorSettings(backend="onnxruntime", model=cpu_yolo,
                                                      labels=["a", "b", "c"], max_batch=4,
                                                      confidence=0.05, classes=["b"]))
    assert ort is not None
    one = det.detect(images[:1])  # padded to the minimum batch of 2
    many = det.detect(images * 2)  # 8 images: two batches of 4, buffers grown once
    expected = ort.detect(images * 2)
    assert trt.executions == [2, 2, 4, 4]
    assert sum(len(d) for d in expected) > 0
    for got, want in zip([*one, *many], [expected[0], *expected], strict=True):
        np.testing.assert_array_equal(got.xyxy, want.xyxy)
        np.testing.assert_array_equal(got.confidence, want.confidence)
        assert (got.class_id == 1).all() and got.labels == ("a", "b", "c")
    assert det._buffers is not None and det._buffers.allocations == 2  # capacity 2, then 4
    assert all(ms > 0 for ms in det.phases.snapshot().values())
    copies = [c for c in cuda.calls if c.startswith("cudaMemcpyAsync")]
    assert copies[-2:] == [f"cudaMemcpyAsync HostToDevice {4 * 3 * 320 * 320 * 4}",
                           f"cudaMemcpyAsync DeviceToHost {4 * 7 * 2100 * 4}"]
    det.close()
    det.close()
    assert cuda.live == {} and cuda.calls[-1] == "cudaStreamDestroy"
    with pytest.raises(DetectorError, match="after close"):
        det.detect(images)


def test_backend_refuses_a_wrong_input_size(simulated: tuple[SimulatedTensorRT, SimulatedCuda],
                                            cpu_yolo: Path, tmp_path: Path) -> None:
    _, cuda = simulated
    engine = ultralytics_engine(tmp_path / "m.engine", cpu_yolo.read_bytes(), ["a", "b", "c"])
    with pytest.raises(DetectorError, match=r"built for 320x320 images; set "
                       r"detector.input_size to match \(it is 640\)"):
        create_detector(trt_settings(engine, input_size=640))
    assert cuda.live == {}  # nothing leaked by the failed start


def cache_for(settings: TensorRTDetectorSettings, engine_dir: Path, **changes: Any) -> Path:
    """Put an "engine" (the ONNX bytes the simulation runs) for `settings` into the cache as
    `streamd engine build` would on the simulated GPU, with key fields overridden."""
    key = wanted_key(settings, "10.3.0", GpuInfo("Simulated GPU", "8.7"),
                     file_sha256(settings.model))
    key = dataclasses.replace(key, **changes)
    path = engine_dir / key.file_name(settings.model.stem)
    engine_dir.mkdir(parents=True, exist_ok=True)
    path.write_bytes(settings.model.read_bytes())
    write_sidecar(path, sidecar_for(key, settings.model, ("x", "y", "z"), 1.0, "0.1.0"))
    return path


def test_cached_engine_is_loaded_with_the_sidecar_labels(
        simulated: tuple[SimulatedTensorRT, SimulatedCuda], cpu_yolo: Path,
        tmp_path: Path) -> None:
    settings = trt_settings(cpu_yolo, engine_dir=tmp_path, build="never")
    cache_for(settings, tmp_path)
    det = create_detector(settings)
    assert det is not None and det.labels == ("x", "y", "z") and det.max_batch == 4
    det.close()


@pytest.mark.parametrize(("changes", "words"), [
    ({"tensorrt": "10.0.1"}, "TensorRT version: engine 10.0.1, here 10.3.0"),
    ({"precision": "fp32", "gpu_name": "Orin"},
     "GPU: engine built on 'Orin', here 'Simulated GPU'; precision: engine fp32, wanted fp16"),
    ({"batch": (1, 4, 4)}, r"batch range \(min/opt/max\): engine 1/4/4, wanted 1/8/8"),
])
def test_stale_engine_is_refused_saying_what_differs(
        simulated: tuple[SimulatedTensorRT, SimulatedCuda], cpu_yolo: Path, tmp_path: Path,
        changes: dict[str, Any], words: str) -> None:
    settings = trt_settings(cpu_yolo, engine_dir=tmp_path, build="never")
    stale = cache_for(settings, tmp_path, **changes)
    with pytest.raises(EngineError, match=f"is stale: {stale.name} differs in {words}; run "
                       r"`streamd engine build -c CONFIG`"):
        create_detector(settings)


def test_no_engine_and_build_never(simulated: tuple[SimulatedTensorRT, SimulatedCuda],
                                   cpu_yolo: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=f"{tmp_path} holds no engine for yolov8n.onnx"):
        create_detector(trt_settings(cpu_yolo, engine_dir=tmp_path, build="never"))


def test_a_ready_engine_from_another_box_is_refused(
        simulated: tuple[SimulatedTensorRT, SimulatedCuda], cpu_yolo: Path,
        tmp_path: Path) -> None:
    cached = cache_for(trt_settings(cpu_yolo, engine_dir=tmp_path), tmp_path,
                       tensorrt="10.8.0", compute_capability="8.9")
    with pytest.raises(EngineError, match=r"was built for another box: TensorRT version: "
                       r"engine 10\.8\.0, here 10\.3\.0; compute capability: engine sm 8\.9"):
        create_detector(trt_settings(cached))


def test_engine_build_command_on_simulated_tensorrt(
        simulated: tuple[SimulatedTensorRT, SimulatedCuda], cpu_yolo: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    trt, _ = simulated
    argv = ["engine", "build", "--onnx", str(cpu_yolo), "--engine-dir", str(tmp_path),
            "--max-batch", "4", "--opt-batch", "2", "--workspace-mb", "256"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    (engine,) = tmp_path.glob("*.engine")
    assert out.strip() == str(engine)
    assert "Building engine (2 steps)" in err and "  Autotuning done" in err
    assert f"engine written: {engine}" in err and " s] " in err
    (config,) = trt.builds
    assert config.flags == {"FP16"} and config.cleared == set()
    assert config.pools == {"workspace": 256 << 20}
    assert config.profiles == [{"images": ((1, 3, 320, 320), (2, 3, 320, 320),
                                           (4, 3, 320, 320))}]
    assert config.int8_calibrator is None and config.loaded_timing_cache == b""
    sidecar = read_sidecar(engine)
    assert sidecar is not None
    assert sidecar.labels == ("person", "bicycle", "car")  # the ONNX names metadata
    assert sidecar.key.batch == (1, 2, 4) and sidecar.key.gpu_name == "Simulated GPU"
    (timing,) = tmp_path.glob("timing.*.cache")
    assert timing.name == "timing.simulated-gpu.sm87.trt10.3.0.cache"
    assert timing.read_bytes() == b"+"

    assert main(argv) == 0  # cached: nothing built
    assert "up to date" in capsys.readouterr().err and len(trt.builds) == 1
    assert main([*argv, "--force"]) == 0  # rebuilt, with the timing cache of the first build
    assert trt.builds[1].loaded_timing_cache == b"+" and timing.read_bytes() == b"++"
    assert main([*argv[:-4], "--precision", "fp32", "--max-batch", "4"]) == 0
    assert "is stale (precision: engine fp16, wanted fp32; batch range" in (
        capsys.readouterr().err)
    assert trt.builds[2].cleared == {"TF32"} and len(list(tmp_path.glob("*.engine"))) == 2


def test_int8_build_calibrates_with_the_image_folder(
        simulated: tuple[SimulatedTensorRT, SimulatedCuda], cpu_yolo: Path,
        tmp_path: Path) -> None:
    trt, cuda = simulated
    write_images(tmp_path / "calib", 5)
    settings = trt_settings(cpu_yolo, engine_dir=tmp_path / "e", precision="int8",
                            calibration_dir=tmp_path / "calib", max_batch=2)
    result = build_engine(settings, report=lambda line: None)
    (config,) = trt.builds
    assert config.flags == {"INT8", "FP16"}
    assert config.calibration_profile == {"images": ((2, 3, 320, 320),) * 3}
    assert len(config.calibration_batches) == 2  # 5 images, batches of 2
    assert cuda.calls.count(f"cudaMemcpy HostToDevice {2 * 3 * 320 * 320 * 4}") == 2
    (cache,) = (tmp_path / "e").glob("calib.*.cache")
    assert cache.read_bytes() == b"scales"
    assert result.built and result.sidecar.key.precision == "int8"
    assert all(ptr not in cuda.live for (ptr,) in config.calibration_batches)  # freed
    build_engine(settings, report=lambda line: None, force=True)
    assert trt.builds[1].calibration_batches == []  # the calibration cache was used


def test_startup_builds_a_missing_engine(simulated: tuple[SimulatedTensorRT, SimulatedCuda],
                                         cpu_yolo: Path, tmp_path: Path,
                                         images: list[Image]) -> None:
    trt, _ = simulated
    det = create_detector(trt_settings(cpu_yolo, engine_dir=tmp_path, max_batch=4,
                                       min_batch=1, confidence=0.05))
    assert isinstance(det, TensorRTDetector)
    try:
        assert len(trt.builds) == 1 and det.labels == ("person", "bicycle", "car")
        assert det.max_batch == 4 and trt.executions == [1]  # the built profile's minimum
        assert len(det.detect(images)) == 4
    finally:
        det.close()


def test_parser_errors_are_listed(simulated: tuple[SimulatedTensorRT, SimulatedCuda],
                                  tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(EngineError, match=r"cannot parse .*junk.onnx \(2 error\(s\)\):\n  "
                       r"UNSUPPORTED_NODE: .* \(node 0, /junk, Resize\)\n  UNSUPPORTED_NODE"):
        build_engine(trt_settings(junk, engine_dir=tmp_path), report=lambda line: None)


@pytest.mark.parametrize(("version", "precision", "words"), [
    ("11.0.0", "fp16", "builds strongly typed networks only"),
    ("8.6.1", "fp32", "too old"),
])
def test_unsupported_tensorrt_versions_fail_clearly(
        monkeypatch: pytest.MonkeyPatch, simulated: tuple[SimulatedTensorRT, SimulatedCuda],
        cpu_yolo: Path, tmp_path: Path, version: str, precision: str, words: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    trt, _ = simulated
    monkeypatch.setattr(trt, "__version__", version)
    assert main(["engine", "build", "--onnx", str(cpu_yolo), "--engine-dir", str(tmp_path),
                 "--precision", precision]) == 1
    assert words in capsys.readouterr().err
    assert trt.builds == []


def test_tensorrt_11_builds_fp32_strongly_typed(
        monkeypatch: pytest.MonkeyPatch, simulated: tuple[SimulatedTensorRT, SimulatedCuda],
        cpu_yolo: Path, tmp_path: Path) -> None:
    trt, _ = simulated
    monkeypatch.setattr(trt, "__version__", "11.0.0")
    networks: list[int] = []
    create = trt.Builder.create_network
    monkeypatch.setattr(trt.Builder, "create_network",
                        lambda self, flags: networks.append(flags) or create(self, flags))
    build_engine(trt_settings(cpu_yolo, engine_dir=tmp_path, precision="fp32"),
                 report=lambda line: None)
    assert networks == [1 << 5] and trt.builds[0].flags == set() == trt.builds[0].cleared
