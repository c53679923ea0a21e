"""The TensorRT detector at runtime: a YOLO engine on an NVIDIA GPU (Jetson or discrete).

The engine comes from `streamd.detect.tensorrt.build.ensure_engine` (cached, built, or a ready
`.engine` file). Inference uses TensorRT 10's name-based I/O: the one input and the outputs
are found by name and mode, the batch goes into `set_input_shape`, buffers are bound with
`set_tensor_address` and the work is queued with `execute_async_v3` on one CUDA stream,
between async copies from and to pinned host memory. Buffers are allocated for a batch
capacity and reused; they grow (to the next power of two, at most `max_batch`) only when a
batch needs more. Pre- and post-processing are `yolo.letterbox_batch` and `yolo.decode`, the
code the ONNX Runtime backend runs, so both backends give the same boxes for the same model.

Importing this module imports neither TensorRT nor CUDA; creating the detector does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorError, class_ids
from streamd.detect.onnxruntime import anchor_count
from streamd.detect.tensorrt.build import EngineFile, ensure_engine
from streamd.detect.tensorrt.gpu import (
    CudaRuntime,
    host_view,
    import_cudart,
    import_tensorrt,
    trt_logger,
)
from streamd.detect.tensorrt.settings import TensorRTDetectorSettings
from streamd.detect.timing import PhaseTimes
from streamd.detect.yolo import decode, letterbox_batch, resolve_labels
from streamd.detections import Detections
from streamd.frames import Image

log = logging.getLogger(__name__)


def grown_capacity(current: int, needed: int, limit: int) -> int:
    """Batch capacity the buffers should have for a batch of `needed`: unchanged while it
    fits, else the next power of two (at most `limit`), so a stream of growing batches
    reallocates O(log max_batch) times, not once per new size.

    >>> [grown_capacity(c, n, 8) for c, n in [(0, 1), (1, 1), (1, 3), (4, 3), (4, 5), (8, 8)]]
    [1, 1, 4, 4, 8, 8]
    """
    if not 1 <= needed <= limit:
        raise ValueError(f"batch {needed} outside 1..{limit}")
    if needed <= current:
        return current
    return min(limit, 1 << (needed - 1).bit_length())


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor of the engine: its name, the shape of one sample, its element type."""

    name: str
    sample_shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def nbytes(self, batch: int) -> int:
        return batch * math.prod(self.sample_shape) * self.dtype.itemsize


class Allocator(Protocol):
    """The memory calls `IOBuffers` needs (`CudaRuntime` in production)."""

    def malloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def malloc_host(self, nbytes: int) -> int: ...

    def free_host(self, ptr: int) -> None: ...


class IOBuffers:
    """A pinned host buffer and a device buffer per I/O tensor, sized for `capacity` samples.

    `ensure(batch)` reallocates all of them together, and only when `batch` exceeds the
    capacity; `host(name)` is a numpy view (capacity, *sample_shape) of the pinned buffer,
    `device(name)` the device address to bind.
    """

    def __init__(self, memory: Allocator, specs: Sequence[TensorSpec], limit: int) -> None:
        self._memory = memory
        self.specs = {s.name: s for s in specs}
        self.limit = limit
        self.capacity = 0
        self.allocations = 0
        """How many times the buffers were (re)allocated: growth is visible in tests."""
        self._host: dict[str, tuple[int, npt.NDArray[Any]]] = {}
        self._device: dict[str, int] = {}

    def ensure(self, batch: int) -> bool:
        """Make room for `batch` samples; True when the buffers moved (rebind addresses)."""
        capacity = grown_capacity(self.capacity, batch, self.limit)
        if capacity == self.capacity:
            return False
        self.free()
        for spec in self.specs.values():
            nbytes = spec.nbytes(capacity)
            ptr = self._memory.malloc_host(nbytes)
            self._host[spec.name] = (ptr, host_view(ptr, nbytes, spec.dtype,
                                                    (capacity, *spec.sample_shape)))
            self._device[spec.name] = self._memory.malloc(nbytes)
        self.capacity = capacity
        self.allocations += 1
        return True

    def host(self, name: str) -> npt.NDArray[Any]:
        return self._host[name][1]

    def host_ptr(self, name: str) -> int:
        return self._host[name][0]

    def device(self, name: str) -> int:
        return self._device[name]

    def free(self) -> None:
        """Release everything; the views returned by `host` must not be used after this."""
        for ptr, _ in self._host.values():
            self._memory.free_host(ptr)
        for ptr in self._device.values():
            self._memory.free(ptr)
        self._host.clear()
        self._device.clear()
        self.capacity = 0


class TensorRTDetector:
    """A YOLO TensorRT engine behind the `Detector` interface.

    Batches of up to `max_batch` images (the engine profile's max, or `detector.max_batch` if
    smaller) go through one `execute_async_v3`; a batch below the profile's minimum is
    zero-padded up to it. One warm-up inference at startup checks the output layout.
    """

    def __init__(self, settings: TensorRTDetectorSettings) -> None:
        self.phases = PhaseTimes()
        trt = import_tensorrt()
        self._cuda = CudaRuntime(import_cudart(), settings.device)
        self._trt = trt
        self._buffers: IOBuffers | None = None
        self._stream: Any = None
        self._context: Any = None
        try:
            self._load(settings, ensure_engine(settings, trt, self._cuda))
        except BaseException:
            self.close()
            raise

    def _load(self, settings: TensorRTDetectorSettings, engine_file: EngineFile) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(trt_logger(trt))
        engine = self._runtime.deserialize_cuda_engine(engine_file.plan)
        if engine is None:
            raise DetectorError(f"TensorRT {trt.__version__} cannot load {engine_file.path} "
                                "(built by another TensorRT version or for another GPU?); "
                                "rebuild it here with `streamd engine build`")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise DetectorError(f"{engine_file.path} has inputs {inputs} and outputs {outputs}; "
                                "a YOLO detector has one input, images [N, 3, H, W]")
        self._input, self._output = inputs[0], outputs[0]
        shape = [int(d) for d in engine.get_tensor_shape(self._input)]
        if -1 in shape:  # dynamic: the optimization profile bounds it
            lo, _, hi = ([int(d) for d in s]
                         for s in engine.get_tensor_profile_shape(self._input, 0))
        else:
            lo = hi = shape
        size = settings.input_size
        if engine_file.imgsz is not None and engine_file.imgsz != (size, size):
            raise DetectorError(f"{engine_file.path} was built for {engine_file.imgsz[0]}x"
                                f"{engine_file.imgsz[1]} images; set detector.input_size to "
                                f"match (it is {size})")
        if len(shape) != 4 or hi[2:] != [size, size] or lo[2:] != [size, size]:
            raise DetectorError(f"{engine_file.path} takes {shape} (profile {lo}..{hi}); "
                                f"expected [N, 3, {size}, {size}] for input_size {size}")
        self.input_size = size
        self._min_batch = int(lo[0])
        self.max_batch = min(settings.max_batch, int(hi[0]))
        if self.max_batch < self._min_batch:
            raise DetectorError(f"{engine_file.path} needs batches of at least {lo[0]}, more "
                                f"than detector.max_batch ({settings.max_batch})")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise DetectorError("TensorRT could not create an execution context (GPU memory?)")
        self._stream = self._cuda.stream_create()
        self._stream_handle = CudaRuntime.handle(self._stream)
        specs = self._specs(outputs)
        self._buffers = IOBuffers(self._cuda, specs, self.max_batch)
        self._conf, self._iou = settings.confidence, settings.iou
        out = self.infer(np.zeros((self._min_batch, 3, size, size), np.float32))
        expected_a = anchor_count(size)
        if out.ndim != 3 or out.shape[2] != expected_a or out.shape[1] < 5:
            raise DetectorError(
                f"{engine_file.path} outputs {list(out.shape)}; expected [N, 4+C, {expected_a}] "
                f"(YOLOv8/YOLO11 layout at input_size {size})")
        self.labels = resolve_labels(settings.labels, engine_file.labels,
                                     int(out.shape[1]) - 4, str(engine_file.path))
        self._class_ids = class_ids(self.labels, settings.classes)
        log.info("tensorrt detector: %s, TensorRT %s, %d classes, input %d, batch %d..%d",
                 engine_file.path, trt.__version__, len(self.labels), size, self._min_batch,
                 self.max_batch)

    def _specs(self, outputs: Sequence[str]) -> list[TensorSpec]:
        """Per-sample shapes and types of every I/O tensor, read from the context after the
        input shape is set (outputs of a dynamic-batch engine have -1 until then)."""
        trt, engine = self._trt, self._engine
        size = self.input_size
        if not self._context.set_input_shape(self._input, (self._min_batch, 3, size, size)):
            raise DetectorError(f"TensorRT rejects input shape {self._min_batch}x3x{size}x{size}")
        specs = []
        for name in (self._input, *outputs):
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if len(shape) < 1 or any(d < 0 for d in shape):
                raise DetectorError(f"engine tensor {name} has unresolved shape {list(shape)}")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            specs.append(TensorSpec(name, shape[1:], dtype))
        return specs

    def infer(self, tensor: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw inference: n letterboxed images (n, 3, S, S), n <= max_batch -> the first
        output [n, 4+C, A] as float32, copied out of the pinned buffer. `detect` decodes it;
        conformance tests compare it with ONNX Runtime's."""
        buffers, cuda, context = self._buffers, self._cuda, self._context
        if buffers is None or context is None:
            raise DetectorError("tensorrt detector used after close()")
        n = len(tensor)
        run = max(n, self._min_batch)
        if buffers.ensure(run):
            for name in buffers.specs:
                if not context.set_tensor_address(name, buffers.device(name)):
                    raise DetectorError(f"TensorRT rejects the address of tensor {name}")
        size = self.input_size
        if not context.set_input_shape(self._input, (run, 3, size, size)):
            raise DetectorError(f"TensorRT rejects input shape {run}x3x{size}x{size}")
        host_in = buffers.host(self._input)
        host_in[:n] = tensor  # casts to the engine's input type (fp16 engines)
        host_in[n:run] = 0
        spec_in = buffers.specs[self._input]
        cuda.copy_to_device(buffers.device(self._input), buffers.host_ptr(self._input),
                            spec_in.nbytes(run), self._stream)
        if not context.execute_async_v3(self._stream_handle):
            raise DetectorError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        out_spec = buffers.specs[self._output]
        cuda.copy_to_host(buffers.host_ptr(self._output), buffers.device(self._output),
                          out_spec.nbytes(run), self._stream)
        cuda.synchronize(self._stream)
        return np.array(buffers.host(self._output)[:n], np.float32)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        if self._buffers is None:
            raise DetectorError("tensorrt detector used after close()")
        self._cuda.use()  # called from the detector service's thread
        results: list[Detections] = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            with self.phases.phase("preprocess"):
                tensor, boxes = letterbox_batch(chunk, self.input_size)
            with self.phases.phase("inference"):  # copies in, engine, copies out
                out = self.infer(tensor)
            with self.phases.phase("postprocess"):
                results += decode(out, self._conf, self._iou, self._class_ids, boxes,
                                  labels=self.labels)
        return results

    def close(self) -> None:
        """Free buffers, stream, context and engine; safe to call twice. A CUDA error here
        is logged, not raised: close also runs on the way out of a failed start."""
        buffers, self._buffers = self._buffers, None
        stream, self._stream = self._stream, None
        try:
            if stream is not None:
                self._cuda.synchronize(stream)
            if buffers is not None:
                buffers.free()
            if stream is not None:
                self._cuda.stream_destroy(stream)
        except DetectorError as exc:
            log.warning("closing the tensorrt detector: %s", exc)
        self._context = None  # before the engine it came from
        self._engine = None
        self._runtime = None
