"""Detection: backends behind one interface, the shared YOLO pre/post-processing, crop
planning, and the service that batches crops from every camera.

Backends register here by their YAML `backend:` key; each backend module holds its `KEY`, its
settings model and its class, which takes those settings; the `DetectorSettings` union below
is what the `detector:` section validates against. A backend's heavy imports happen when it is
created, so importing this package costs nothing for backends that are not configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from streamd.detect import hog, onnxruntime, tensorrt, tflite
from streamd.detect.base import Detector, DetectorError, NoDetectorSettings
from streamd.detect.crops import plan_regions
from streamd.detect.service import DetectorService, ServiceStopped

__all__ = ["BACKENDS", "Detector", "DetectorError", "DetectorService", "DetectorSettings",
           "ServiceStopped", "create_detector", "plan_regions"]

DetectorSettings = Annotated[
    onnxruntime.ONNXRuntimeDetectorSettings | tensorrt.TensorRTDetectorSettings
    | hog.HOGDetectorSettings | tflite.TFLiteDetectorSettings | NoDetectorSettings,
    Field(discriminator="backend"),
]
"""The `detector:` section: one settings model per backend, chosen by `backend:`."""

BACKENDS: dict[str, Callable[[Any], Detector]] = {
    onnxruntime.KEY: onnxruntime.ONNXRuntimeDetector,
    tensorrt.KEY: tensorrt.TensorRTDetector,  # imports TensorRT/CUDA only when created
    hog.KEY: hog.HOGDetector,
    tflite.KEY: tflite.TFLiteDetector,  # imports LiteRT only when created
}
"""YAML `backend:` -> the class that builds that detector from its settings."""


def create_detector(settings: DetectorSettings) -> Detector | None:
    """The configured detector, or None for `backend: none`.

    Any failure to build it becomes a `DetectorError` naming the backend and the reason, so
    startup can stop with one clear line instead of a traceback from deep inside ONNX Runtime.
    """
    if isinstance(settings, NoDetectorSettings):
        return None
    factory = BACKENDS.get(settings.backend)
    if factory is None:
        raise DetectorError(f"detector.backend: {settings.backend!r} is not available here "
                            f"(known: {', '.join(sorted(BACKENDS))})")
    try:
        return factory(settings)
    except DetectorError:
        raise
    except Exception as exc:
        raise DetectorError(f"{settings.backend} detector failed to start: {exc}") from exc
