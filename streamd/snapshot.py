"""Annotated snapshots: the frame with what streamd saw drawn on it, as JPEG.

The first thing an operator looks at when tuning motion settings or a detector threshold:
motion ROIs (thin, yellow), objects with label, score and track id (green), the object's
latest description under its box, and a caption naming camera, frame_id and time. The live
view (`streamd.web`) draws the same picture, plus the motion mask and the ignore zones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field

from streamd.detections import Detections
from streamd.frames import Frame, Image
from streamd.motion import Rois
from streamd.settings import StrictModel

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ROI = (0, 220, 255)
_OBJECT = (60, 220, 60)
_MASK = (40, 40, 255)
_ZONE = (128, 128, 128)


class SnapshotSettings(StrictModel):
    """`snapshots:`: annotated JPEGs published per camera."""

    interval_s: float = Field(
        0.0, ge=0, description="Publish an annotated JPEG per camera every N s (0: only on "
        "request, by any message to <prefix>/<camera>/snapshot/request).")
    max_width: int = Field(960, ge=160, le=4096, description="Scaled down to this width.")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality.")


def _label(img: Image, text: str, x: int, y: int, colour: tuple[int, int, int],
           scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    y = max(y, th + 2)
    cv2.rectangle(img, (x, y - th - 2), (x + tw + 2, y + base), colour, -1)
    cv2.putText(img, text, (x + 1, y - 1), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _tint(img: Image, mask: npt.NDArray[np.uint8], colour: tuple[int, int, int],
          alpha: float) -> None:
    """Blend `colour` into `img` (in place) with weight `alpha` where `mask` is non-zero;
    in OpenCV (numpy fancy indexing costs several times more)."""
    keep = 1.0 - alpha
    blend = np.array([[keep, 0, 0, alpha * colour[0]], [0, keep, 0, alpha * colour[1]],
                      [0, 0, keep, alpha * colour[2]]], np.float32)
    cv2.copyTo(cv2.transform(img, blend), mask, img)


def draw(frame: Frame, rois: Rois, dets: Detections,
         descriptions: Mapping[int, str] | None = None, *, max_width: int = 960,
         show_rois: bool = True, show_objects: bool = True, show_descriptions: bool = True,
         motion_mask: npt.NDArray[np.uint8] | None = None,
         zones: Sequence[Sequence[tuple[float, float]]] = ()) -> Image:
    """The annotated picture (BGR), drawn on a copy (frames are shared and immutable) scaled
    down to `max_width`. `motion_mask` (any resolution, 255 = moving) is laid over in
    translucent red and `zones` (polygons, full-frame pixels) in translucent grey, so the live
    view can show why motion was or was not found; the `show_*` flags are its toggles."""
    img: Image = frame.image.copy()
    h, w = img.shape[:2]
    scale = min(1.0, max_width / w)
    if scale < 1.0:
        img = np.asarray(cv2.resize(img, (round(w * scale), round(h * scale)),
                                    interpolation=cv2.INTER_AREA), np.uint8)
    font = 0.4 if img.shape[1] < 640 else 0.5
    if zones:
        pts = [np.round(np.asarray(z, np.float64) * scale).astype(np.int32) for z in zones]
        inside = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(inside, pts, 255)
        _tint(img, inside, _ZONE, 0.45)
        cv2.polylines(img, pts, True, _ZONE, 1, cv2.LINE_AA)
    if motion_mask is not None:
        _tint(img, np.asarray(cv2.resize(motion_mask, (img.shape[1], img.shape[0]),
                                         interpolation=cv2.INTER_NEAREST), np.uint8),
              _MASK, 0.5)
    for box in rois.xyxy if show_rois else ():
        x1, y1, x2, y2 = (int(v * scale) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), _ROI, 1)
    for i in range(len(dets) if show_objects else 0):
        x1, y1, x2, y2 = (int(v * scale) for v in dets.xyxy[i])
        cv2.rectangle(img, (x1, y1), (x2, y2), _OBJECT, 2)
        tid = int(dets.tracker_id[i])
        _label(img, f"{dets.label(i)} #{tid} {float(dets.confidence[i]):.2f}", x1, y1 - 2,
               _OBJECT, font)
        text = (descriptions or {}).get(tid) if show_descriptions else None
        if text:
            _label(img, text[:80], x1, min(y2 + 14, img.shape[0] - 2), (230, 230, 230),
                   font * 0.9)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frame.ts))
    _label(img, f"{frame.camera} frame {frame.frame_id} {when}Z  rois {len(rois)}  "
           f"objects {len(dets)}", 2, img.shape[0] - 4, (255, 255, 255), font)
    return img


def annotate(frame: Frame, rois: Rois, dets: Detections,
             descriptions: Mapping[int, str] | None = None, *, max_width: int = 960,
             quality: int = 80) -> bytes:
    """`draw` with ROIs, objects and descriptions, encoded as JPEG, scaled down to
    `max_width` so a retained snapshot stays small."""
    return encode_jpeg(draw(frame, rois, dets, descriptions, max_width=max_width), quality)


def encode_jpeg(img: Image, quality: int) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())
