"""TensorRT and CUDA, imported only when a TensorRT detector or an engine build needs them.

Importing streamd never imports TensorRT or CUDA: a box without a GPU runs every other
backend, and a missing library becomes one `DetectorError` naming the extra to install.

CUDA memory and streams come from cuda-python's runtime bindings (`cuda.bindings.runtime`,
cuda-python >= 12.6.1; the old `from cuda import cudart` path is gone in 13), not pycuda:

- they work on the runtime API's primary context, the one TensorRT itself uses, and any
  thread can use it after `cudaSetDevice`. pycuda's contexts are bound to the thread that
  made them (push/pop around every call), and streamd creates the detector on the main
  thread but runs it on the detector service's worker thread;
- NVIDIA publishes them as wheels for x86_64 and aarch64 that only need the driver's
  libcuda.so, while pycuda compiles against a CUDA toolkit at install time (nvcc on the
  Jetson itself);
- every call returns its error code, so each one is checked here and a failure names the
  call instead of surfacing later as garbage boxes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorError
from streamd.detect.tensorrt.key import GpuInfo

log = logging.getLogger(__name__)

TRT_EXTRA = "pip install streamd[trt]"
JETSON_HINT = ("on Jetson use JetPack's own bindings (apt install python3-libnvinfer, and a "
               "venv made with --system-site-packages); see engines/README.md")


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a DetectorError that says how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the module is there, libnvinfer is not
        raise DetectorError(f"TensorRT is not available ({exc}): {TRT_EXTRA} on x86_64; "
                            f"{JETSON_HINT}") from None
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime bindings, or a DetectorError that says how to install them."""
    try:
        from cuda.bindings import runtime
    except (ImportError, OSError) as exc:
        raise DetectorError(f"CUDA Python bindings are not available ({exc}): {TRT_EXTRA} "
                            "(cuda-python >= 12.6.1, which provides cuda.bindings)") from None
    return runtime


_TRT_LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR,
               "WARNING": logging.WARNING, "INFO": logging.DEBUG, "VERBOSE": logging.DEBUG - 5}


@functools.cache
def trt_logger(trt: Any) -> Any:
    """One `trt.ILogger` for the process (TensorRT wants the same logger for builder and
    runtime) that forwards to Python logging. TensorRT's INFO is chatty, so it goes to DEBUG."""
    trt_log = logging.getLogger("streamd.tensorrt")

    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = _TRT_LEVELS.get(getattr(severity, "name", ""), logging.INFO)
            trt_log.log(level, "%s", msg)

    return _Logger()


def host_view(ptr: int, nbytes: int, dtype: npt.DTypeLike, shape: Sequence[int]
              ) -> npt.NDArray[Any]:
    """A writable numpy array over `nbytes` of host memory at address `ptr` (pinned memory
    from cudaMallocHost): the letterboxed batch is written straight into what the DMA reads."""
    dt = np.dtype(dtype)
    count = math.prod(shape)
    if count * dt.itemsize > nbytes:
        raise ValueError(f"{list(shape)} {dt} needs {count * dt.itemsize} bytes, "
                         f"buffer has {nbytes}")
    raw = memoryview((ctypes.c_byte * nbytes).from_address(ptr)).cast("B")
    return np.frombuffer(raw, dt, count).reshape(tuple(shape))


class CudaRuntime:
    """The few CUDA runtime calls streamd makes, each checked. cuda-python returns
    `(error, *values)` from every call; a non-success error raises a DetectorError naming the
    call, the error and CUDA's explanation."""

    def __init__(self, cudart: Any, device: int) -> None:
        self._rt = cudart
        self.device = device
        count = self.call("cudaGetDeviceCount")
        if device >= count:
            raise DetectorError(f"detector.device: CUDA device {device} does not exist "
                                f"(this box has {count})")
        self.use()

    def call(self, name: str, *args: Any) -> Any:
        """`cudart.<name>(*args)`, error-checked; returns the value(s) after the error."""
        result = getattr(self._rt, name)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self._rt.cudaError_t.cudaSuccess:
            explanation = ""
            described = self._rt.cudaGetErrorString(err)
            if isinstance(described, tuple) and len(described) > 1:
                text = described[1]
                explanation = text.decode() if isinstance(text, bytes) else str(text)
            raise DetectorError(f"CUDA {name} failed: {getattr(err, 'name', err)}"
                                f"{': ' + explanation if explanation else ''}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def use(self) -> None:
        """Make `device` current for the calling thread (the runtime API's current device is
        per thread; the detector runs on the service's worker thread)."""
        self.call("cudaSetDevice", self.device)

    def gpu(self) -> GpuInfo:
        prop = self.call("cudaGetDeviceProperties", self.device)
        name = prop.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
        return GpuInfo(str(name).strip(), f"{prop.major}.{prop.minor}")

    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory: async copies from it overlap, and never page out."""
        return int(self.call("cudaMallocHost", nbytes))

    def free_host(self, ptr: int) -> None:
        self.call("cudaFreeHost", ptr)

    def stream_create(self) -> Any:
        return self.call("cudaStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        self.call("cudaStreamDestroy", stream)

    def synchronize(self, stream: Any) -> None:
        self.call("cudaStreamSynchronize", stream)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes,
                  self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def copy_to_device_sync(self, dst: int, src: int, nbytes: int) -> None:
        """Blocking copy from (pageable) host memory: INT8 calibration, off the hot path."""
        self.call("cudaMemcpy", dst, src, nbytes,
                  self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice)

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes,
                  self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    @staticmethod
    def handle(obj: Any) -> int:
        """The raw address of a cuda-python object (a stream, for TensorRT's
        `execute_async_v3`): `get_cuda_native_handle` where it exists (int() on these objects
        is deprecated there), `int()` on older cuda-python."""
        try:
            from cuda.bindings.utils import get_cuda_native_handle
        except ImportError:
            return int(obj)
        return int(get_cuda_native_handle(obj))
