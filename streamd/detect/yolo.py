"""Pre- and post-processing for YOLOv8/YOLO11-style detectors, shared by every backend.

ONNX Runtime and TensorRT run the same network; the architecture contract says they must give
the same detections for the same model, so both feed it through `letterbox_batch` and read it
back through `decode` here. The layout is Ultralytics' export: input `images` [N, 3, S, S]
RGB 0..1 letterboxed with grey 114, output [N, 4+C, A] with (cx, cy, w, h) in input pixels
followed by C class scores that are already sigmoid probabilities.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from streamd.detect.base import DetectorError
from streamd.detections import Detections, FloatArray, IntArray
from streamd.frames import Image
from streamd.geometry import nms

log = logging.getLogger(__name__)

COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
"""The label table of every COCO-trained YOLO; used when a model carries no `names`."""

PAD_VALUE = 114
"""Ultralytics' letterbox grey: the value the models were trained to ignore."""
MAX_NMS = 30_000
"""Candidates kept for NMS, best first (Ultralytics' bound): an untrained or broken model
that scores everything high stays slow but bounded."""
MAX_DET = 300


class Letterbox(NamedTuple):
    """How one image was fitted into the model input: model = image * scale + pad."""

    scale: float
    pad_xy: tuple[int, int]
    image_wh: tuple[int, int]


def _letterbox_into(image: Image, size: int, out: FloatArray) -> Letterbox:
    """Resize keeping aspect, pad to `size` x `size`, write RGB 0..1 CHW into `out`."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = (image if (new_w, new_h) == (w, h) else
               cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)  # Ultralytics' rounding, for parity
    canvas = cv2.copyMakeBorder(resized, top, size - new_h - top, left, size - new_w - left,
                                cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    np.multiply(canvas.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=out,
                casting="unsafe")
    return Letterbox(scale, (left, top), (w, h))


def letterbox_batch(images: Sequence[Image], size: int
                    ) -> tuple[FloatArray, list[Letterbox]]:
    """N BGR images of any sizes -> (tensor (N, 3, size, size), one `Letterbox` each)."""
    out = np.empty((len(images), 3, size, size), np.float32)
    return out, [_letterbox_into(im, size, out[i]) for i, im in enumerate(images)]


def decode(output: npt.NDArray[np.floating], conf: float, iou: float,
           class_ids: IntArray | None, letterboxes: Sequence[Letterbox], *,
           labels: Sequence[str] = (), max_det: int = MAX_DET) -> list[Detections]:
    """Raw output [N, 4+C, A] -> one `Detections` per image, in that image's pixels.

    Each anchor keeps its best class (Ultralytics' single-label mode); scores must be above
    `conf`; the class filter then applies, like Ultralytics' `classes=`, so a filtered model
    reports exactly what the unfiltered one reports for those classes. NMS is class-aware;
    boxes are clipped to the image.
    """
    output = np.asarray(output)
    if output.ndim != 3 or output.shape[1] < 5:
        raise ValueError(f"expected output [N, 4+C, A], got {list(output.shape)}")
    if len(output) != len(letterboxes):
        raise ValueError(f"{len(output)} outputs for {len(letterboxes)} letterboxes")
    results = []
    for pred, lb in zip(output, letterboxes, strict=True):
        scores = pred[4:]
        cls = scores.argmax(axis=0)
        best = np.take_along_axis(scores, cls[None], axis=0)[0]
        keep = best > conf
        if class_ids is not None:
            keep &= np.isin(cls, class_ids)
        idx = np.flatnonzero(keep)
        if len(idx) > MAX_NMS:
            idx = idx[np.argsort(-best[idx], kind="stable")[:MAX_NMS]]
        cxcy, half = pred[:2, idx].T, pred[2:4, idx].T / 2
        xyxy = np.concatenate([cxcy - half, cxcy + half], axis=1)
        kept = nms(xyxy, best[idx], iou, cls[idx])[:max_det]
        pad = np.array(lb.pad_xy * 2, np.float32)
        xyxy = (xyxy[kept] - pad) / lb.scale
        w, h = lb.image_wh
        np.clip(xyxy, 0, np.array([w, h, w, h], np.float32), out=xyxy)
        results.append(Detections(xyxy, best[idx][kept], cls[idx][kept], labels=labels))
    return results


def parse_names(metadata: str) -> list[str]:
    """Ultralytics' `names` metadata (`"{0: 'person', 1: 'bicycle', ...}"`) -> labels in id
    order. Literal parsing only: the string comes from a model file, never `eval` it."""
    try:
        value = ast.literal_eval(metadata)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"names metadata is not a Python literal: {exc}") from None
    if isinstance(value, dict):
        if set(value) != set(range(len(value))):
            raise ValueError("names metadata keys must be the ids 0..C-1")
        value = [value[i] for i in range(len(value))]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("names metadata must map class ids to strings")
    return list(value)


def resolve_labels(configured: Sequence[str] | None, from_model: Sequence[str] | None,
                   classes: int, source: str) -> tuple[str, ...]:
    """Label table for a model with `classes` outputs: `detector.labels`, else the model's
    names (ONNX metadata via the sidecar, or the Ultralytics header), else COCO's 80, else
    the class ids (with a warning)."""
    if configured is not None:
        if len(configured) != classes:
            raise DetectorError(f"detector.labels has {len(configured)} names; the model has "
                                f"{classes} classes")
        return tuple(configured)
    if from_model is not None:
        if len(from_model) != classes:
            raise DetectorError(f"{source}: names metadata has {len(from_model)} entries, the "
                                f"output {classes} classes; set detector.labels")
        return tuple(from_model)
    if classes == len(COCO80):
        return COCO80
    log.warning("%s has no class names and %d classes: labels are class ids; set "
                "detector.labels", source, classes)
    return tuple(str(i) for i in range(classes))
