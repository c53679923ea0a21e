"""INT8 calibration: the image folder, its batches through the inference letterbox, the
calibration cache, and the TensorRT calibrator fed from them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamd.detect.tensorrt.errors import EngineError
from streamd.detect.tensorrt.gpu import CudaRuntime
from streamd.detect.tensorrt.key import EngineKey
from streamd.detect.tensorrt.settings import TensorRTDetectorSettings
from streamd.detect.tensorrt.sidecar import atomic_write
from streamd.detect.yolo import letterbox_batch
from streamd.detections import FloatArray

log = logging.getLogger(__name__)

CALIBRATION_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


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


def int8_calibrator(trt: Any, cuda: CudaRuntime, settings: TensorRTDetectorSettings,
                key: EngineKey, engine_dir: Path, input_name: str) -> Any:
    """An INT8 entropy calibrator fed with `calibration_dir` through `letterbox_batch`, with a
    calibration cache next to the engines (a rebuild with the same images skips it)."""
    assert settings.calibration_dir is not None  # the settings validator requires it
    batch = settings.batch_range[1]
    images = calibration_images(settings.calibration_dir, batch)
    cache_path = calibration_cache_path(engine_dir, key, images)
    size = settings.input_size
    nbytes = batch * 3 * size * size * 4

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = calibration_batches(images, size, batch)
            self._device = cuda.malloc(nbytes)
            self._count = 0

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            # Called from inside TensorRT: an exception here would not reach the caller.
            try:
                tensor = next(self._batches, None)
                if tensor is None or input_name not in names:
                    return None
                cuda.copy_to_device_sync(self._device, tensor.ctypes.data, tensor.nbytes)
            except Exception:
                log.exception("calibration batch failed; calibration stops here")
                return None
            self._count += 1
            log.info("calibration batch %d (%d images)", self._count, batch)
            return [self._device]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path.is_file():
                log.info("calibration cache: %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                atomic_write(cache_path, bytes(memoryview(cache)))
            except OSError as exc:
                log.warning("cannot save the calibration cache %s: %s", cache_path,
                            exc.strerror)

        def free(self) -> None:
            if self._device:
                cuda.free(self._device)
                self._device = 0

    return _Calibrator()
