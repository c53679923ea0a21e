"""The one interface every detector backend implements, and the error they raise.

A backend is one hot-path method plus `close()` (httpx's transport seam): the service that
batches crops from all cameras only ever sees this protocol, so ONNX Runtime, TensorRT and
HOG are interchangeable and tests can pass a fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from streamd.detections import Detections, IntArray
from streamd.frames import Image


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
