"""HOG backend: OpenCV's pretrained HOG+SVM people detector (OpenCV 4.x only).

It needs no model file and no download (the fallback where the default `tflite` SSD cannot be
fetched). It is slow on whole frames (~80 ms for 768x576 on two CPU cores) but cheap on the
motion crops the detector service feeds it, and it only knows one class, `person`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from streamd.detect.base import DetectorError, ModelDetectorSettings, class_ids
from streamd.detect.timing import PhaseTimes
from streamd.detections import Detections
from streamd.frames import Image
from streamd.geometry import nms

log = logging.getLogger(__name__)

KEY = "hog"
WINDOW_WH = (64, 128)
PERSON_HEIGHT = 96
"""Height of a person inside the 64x128 detection window (the INRIA training crops)."""
WINDOW_MARGIN = (0.2, 0.1)
"""Fraction of the window's width and height that is context around the person on each side;
trimmed so boxes hug the person as a YOLO box would."""
MAX_UPSCALE = 4.0
INPUT_SIZE = 320
"""Crop side the service should aim for: half of it (the smallest planned crop) still holds a
128 px window with room around a person."""


class HOGDetectorSettings(ModelDetectorSettings):
    """`backend: hog`: OpenCV's people detector; no model file."""

    backend: Literal["hog"]
    confidence: float = Field(
        0.25, ge=0.0, lt=1.0, description="Minimum score; HOG's SVM margin m is published as "
        "m / (1 + m), so 0.25 keeps margins above 0.33.")
    min_height: int = Field(96, ge=64, le=4096,
                            description="Crops are upscaled so a person this tall is found.")


class HOGDetector:
    """`cv2.HOGDescriptor` with the default people SVM behind the `Detector` interface.

    Each image is rescaled first so that a person `min_height` px tall fills the window's
    person height (small crops are upscaled, large `min_height` lets big frames shrink and run
    faster). The SVM margin m becomes the score m / (1 + m): the contract's scores live in
    [0, 1] for every backend, and the order (hence NMS) is unchanged. Overlapping groups are
    merged by OpenCV's grouping, then NMS drops boxes nested in others.
    """

    labels: tuple[str, ...] = ("person",)

    def __init__(self, settings: HOGDetectorSettings) -> None:
        self.max_batch = 16
        self.phases = PhaseTimes()
        """HOG has no separate pre/post step worth splitting: all of it is `inference`."""
        self.input_size = INPUT_SIZE
        self._conf, self._iou = settings.confidence, settings.iou
        self._min_height = settings.min_height
        ids = class_ids(self.labels, settings.classes)
        if ids is not None and len(ids) == 0:
            raise DetectorError("detector.classes is empty: the hog backend would find nothing")
        svm = np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32)
        self._hog: cv2.HOGDescriptor | None = cv2.HOGDescriptor()
        self._hog.setSVMDetector(svm)
        log.info("hog detector: people, min_height %d px, confidence %.2f", self._min_height,
                 self._conf)

    def _scale(self, w: int, h: int) -> float:
        scale = PERSON_HEIGHT / self._min_height
        scale = max(scale, WINDOW_WH[0] / w, WINDOW_WH[1] / h)  # one window must fit
        return min(scale, MAX_UPSCALE)

    def _detect_one(self, hog: cv2.HOGDescriptor, image: Image) -> Detections:
        h, w = image.shape[:2]
        if w == 0 or h == 0:
            return Detections.empty(self.labels)
        scale = self._scale(w, h)
        scaled = image if abs(scale - 1.0) < 1e-3 else cv2.resize(
            image, (max(round(w * scale), WINDOW_WH[0]), max(round(h * scale), WINDOW_WH[1])),
            interpolation=cv2.INTER_LINEAR)
        rects, weights = hog.detectMultiScale(scaled, winStride=(8, 8), padding=(16, 16),
                                              scale=1.05)
        if len(rects) == 0:
            return Detections.empty(self.labels)
        margin = np.clip(np.asarray(weights, np.float32).reshape(-1), 0.0, None)
        score = margin / (1.0 + margin)  # SVM margin squashed into [0, 1), order kept
        xywh = np.asarray(rects, np.float32).reshape(-1, 4) / scale
        mx, my = xywh[:, 2] * WINDOW_MARGIN[0], xywh[:, 3] * WINDOW_MARGIN[1]
        xyxy = np.stack([xywh[:, 0] + mx, xywh[:, 1] + my, xywh[:, 0] + xywh[:, 2] - mx,
                         xywh[:, 1] + xywh[:, 3] - my], axis=1)
        np.clip(xyxy, 0, np.array([w, h, w, h], np.float32), out=xyxy)
        keep = score > self._conf
        xyxy, score = xyxy[keep], score[keep]
        kept = nms(xyxy, score, self._iou)
        return Detections(xyxy[kept], score[kept], np.zeros(len(kept), np.int64),
                          labels=self.labels)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        hog = self._hog
        if hog is None:
            raise DetectorError("hog detector used after close()")
        with self.phases.phase("inference"):
            found = [self._detect_one(hog, im) for im in images]
        return found

    def close(self) -> None:
        self._hog = None
