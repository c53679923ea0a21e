"""The one interface every detector backend implements, and the error they raise.

A backend is one hot-path method plus `close()` (httpx's transport seam): the service that
batches crops from all cameras only ever sees this protocol, so ONNX Runtime, TensorRT and
HOG are interchangeable and tests can pass a fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import Field

from streamd.detections import Detections, IntArray
from streamd.frames import Image
from streamd.settings import Problem, StrictModel


class DetectorSettingsBase(StrictModel):
    """What every `detector:` section has, `backend: none` included: its key, when the
    detector runs (the detection schedule reads these for any backend; with `none` nothing
    runs) and the checks that need the file system."""

    backend: str
    full_frame_every: int = Field(
        0, ge=0, description="Also run on the whole frame every N analysed frames "
        "(0: only on motion ROIs), so objects that stopped moving are not lost.")
    max_crops: int = Field(
        1, ge=1, le=64, description="Crops per frame at most (more motion regions are "
        "merged). Crops are used only on frames larger than 3 model inputs (e.g. wider than "
        "900 px at the SSD's 300); smaller frames, and crops that would cover half the frame "
        "or more, are detected whole in one pass. Each crop costs one full inference at "
        "`input_size`, so 1 is the cheapest; raise it when objects are small and far apart.")
    interval: int | None = Field(
        None, ge=1, le=100, description="Unset (default): adaptive — each camera's detector "
        "rate follows the detector's measured capacity (`latency_target_ms`, `min_rate_hz`). "
        "An integer k: the fixed policy instead, the detector on every k-th analysed frame "
        "per camera; in between the tracker carries the boxes forward (DeepStream's "
        "`interval`).")
    latency_target_ms: float = Field(
        250.0, gt=0, le=60_000, description="Adaptive scheduling: the capture→MQTT latency "
        "to hold. The detector's queue is kept under a quarter of it (cameras defer due runs "
        "past that), and analysis frames are shed evenly across cameras when motion alone "
        "cannot keep frames under half of it.")
    min_rate_hz: float = Field(
        2.0, gt=0, le=100, description="Adaptive scheduling: detector runs per second every "
        "camera with motion gets first, while the detector can give it (shared evenly when "
        "it cannot); spare capacity goes to young tracks, then to everyone, max-min fair.")

    @property
    def runs(self) -> bool:
        """A model runs at all (False only for `backend: none`)."""
        return True

    def preflight(self, file: str, key: str) -> list[Problem]:
        """Problems only the file system shows (a missing model file); none here."""
        return []


class NoDetectorSettings(DetectorSettingsBase):
    """No detector: motion ROIs only (the schedule fields are accepted and unused)."""

    backend: Literal["none"]

    @property
    def runs(self) -> bool:
        return False


class ModelDetectorSettings(DetectorSettingsBase):
    """The filtering every backend with a model applies to its output."""

    confidence: float = Field(0.35, ge=0.0, le=1.0, description="Minimum score kept.")
    iou: float = Field(0.5, gt=0.0, le=1.0, description="IoU above which NMS suppresses.")
    classes: list[str] | None = Field(None, description="Keep only these labels.")


def model_file_problems(model: Path, file: str, key: str) -> list[Problem]:
    """The one file-system check a model path needs: it is there."""
    if model.is_file():
        return []
    return [Problem(file, f"{key}.model", f"{model} does not exist")]


class DetectorError(Exception):
    """A configured detector cannot run; the message says why (missing file, not ONNX, an
    output layout streamd does not understand, ...). Startup stops on it."""


class Detector(Protocol):
    """Finds objects in a batch of images (whole frames or crops of them).

    `detect` returns one `Detections` per image, boxes in that image's pixels, with the
    configured confidence threshold and class filter already applied. `max_batch` is the
    most images one call should carry (bigger lists still work, they are split); `input_size`
    is the square side the backend works at, so crop planning can aim for it.
    """

    labels: tuple[str, ...]
    max_batch: int
    input_size: int

    def detect(self, images: Sequence[Image]) -> list[Detections]: ...

    def close(self) -> None: ...


def class_ids(labels: Sequence[str], classes: Sequence[str] | None) -> IntArray | None:
    """Map the configured `classes:` names to ids of this model's label table.

    An unknown name is a configuration error, not an empty filter: a typo such as `persn`
    would otherwise silently detect nothing forever.
    """
    if classes is None:
        return None
    unknown = [c for c in classes if c not in labels]
    if unknown:
        known = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise DetectorError(f"detector.classes: {', '.join(map(repr, unknown))} not among "
                            f"the model's labels ({known})")
    return np.array(sorted({labels.index(c) for c in classes}), np.int64)
