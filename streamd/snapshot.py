"""Annotated snapshots: the frame with what streamd saw drawn on it, as JPEG.

The first thing an operator looks at when tuning motion settings or a detector threshold:
motion ROIs (thin, yellow), objects with label, score and track id (green), the object's
latest description under its box, and a caption naming camera, frame_id and time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import cv2
import numpy as np

from streamd.detections import Detections
from streamd.frames import Frame, Image
from streamd.motion import Rois

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ROI = (0, 220, 255)
_OBJECT = (60, 220, 60)


def _label(img: Image, text: str, x: int, y: int, colour: tuple[int, int, int],
           scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    y = max(y, th + 2)
    cv2.rectangle(img, (x, y - th - 2), (x + tw + 2, y + base), colour, -1)
    cv2.putText(img, text, (x + 1, y - 1), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def annotate(frame: Frame, rois: Rois, dets: Detections,
             descriptions: Mapping[int, str] | None = None, *, max_width: int = 960,
             quality: int = 80) -> bytes:
    """Draw on a copy of the frame (frames are shared and immutable) and encode as JPEG,
    scaled down to `max_width` so a retained snapshot stays small."""
    img = frame.image.copy()
    h, w = img.shape[:2]
    scale = min(1.0, max_width / w)
    if scale < 1.0:
        img = np.asarray(cv2.resize(img, (round(w * scale), round(h * scale)),
                                    interpolation=cv2.INTER_AREA), np.uint8)
    font = 0.4 if img.shape[1] < 640 else 0.5
    for box in rois.xyxy:
        x1, y1, x2, y2 = (int(v * scale) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), _ROI, 1)
    for i in range(len(dets)):
        x1, y1, x2, y2 = (int(v * scale) for v in dets.xyxy[i])
        cv2.rectangle(img, (x1, y1), (x2, y2), _OBJECT, 2)
        tid = int(dets.tracker_id[i])
        _label(img, f"{dets.label(i)} #{tid} {float(dets.confidence[i]):.2f}", x1, y1 - 2,
               _OBJECT, font)
        text = (descriptions or {}).get(tid)
        if text:
            _label(img, text[:80], x1, min(y2 + 14, img.shape[0] - 2), (230, 230, 230),
                   font * 0.9)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frame.ts))
    _label(img, f"{frame.camera} frame {frame.frame_id} {when}Z  rois {len(rois)}  "
           f"objects {len(dets)}", 2, img.shape[0] - 4, (255, 255, 255), font)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())
