"""Test videos with known content.

A synthetic clip whose moving objects are known exactly lets a test check that every frame
was analysed and that every reported box lies inside the frame; ``VTEST`` (pedestrians) is the
real footage the HOG people detector is expected to find people in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

_DEBIAN_VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
_REPO_VTEST = Path(__file__).resolve().parents[2] / "data" / "vtest.avi"  # scripts/setup.sh

VTEST = Path(os.environ.get("STREAMD_SAMPLE_VIDEO")
             or (_DEBIAN_VTEST if _DEBIAN_VTEST.is_file() else _REPO_VTEST))
"""OpenCV's sample pedestrians clip (768x576, 795 frames, MPEG-4 part 2) from Debian's
``opencv-doc`` (or the copy ``scripts/setup.sh`` puts in ``data/``); override with
``STREAMD_SAMPLE_VIDEO``."""


@dataclass(frozen=True)
class ShapeTruth:
    """Where each moving rectangle is in one frame: ``boxes_xyxy`` is ``(N, 4)`` int pixels,
    exclusive of the right/bottom edge."""

    frame_index: int
    boxes_xyxy: np.ndarray


def _texture(rng: np.random.Generator, wh: tuple[int, int]) -> np.ndarray:
    """A random checker texture: dense optical flow needs gradients inside an object, a flat
    colour only moves at its edges."""
    w, h = wh
    cells = rng.integers(40, 255, size=(max(1, h // 6) + 1, max(1, w // 6) + 1, 3),
                         dtype=np.uint8)
    tex = cv2.resize(cells, None, fx=6, fy=6, interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(tex[:h, :w])


def render_moving_shapes(frames: int = 60, wh: tuple[int, int] = (320, 240), seed: int = 0
                         ) -> tuple[list[np.ndarray], list[ShapeTruth]]:
    """Render ``frames`` BGR images ``(H, W, 3)`` of two textured rectangles moving across a
    static, lightly textured background (motion = the rectangles only), with their boxes."""
    w, h = wh
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(
        rng.integers(60, 90, size=(h, w, 3), dtype=np.uint8), (5, 5), 0)
    sizes = [(w // 5, h // 4), (w // 7, h // 3)]
    textures = [_texture(rng, s) for s in sizes]
    images: list[np.ndarray] = []
    truth: list[ShapeTruth] = []
    for i in range(frames):
        img = background.copy()
        boxes = []
        t = i / max(1, frames - 1)
        # A moves left→right along the upper third, B bounces vertically on the right side.
        starts = [(int(t * (w - sizes[0][0])), h // 6),
                  (int(w * 0.65), int(abs(((2 * t) % 2) - 1) * (h - sizes[1][1])))]
        for (bw, bh), tex, (x, y) in zip(sizes, textures, starts, strict=True):
            x = min(max(0, x), w - bw)
            y = min(max(0, y), h - bh)
            img[y:y + bh, x:x + bw] = tex
            boxes.append((x, y, x + bw, y + bh))
        images.append(img)
        truth.append(ShapeTruth(i, np.asarray(boxes, dtype=np.int32)))
    return images, truth


def write_moving_shapes_video(path: str | os.PathLike[str], frames: int = 60,
                              wh: tuple[int, int] = (320, 240), fps: float = 10,
                              seed: int = 0) -> list[ShapeTruth]:
    """Write an MJPG ``.avi`` of moving textured rectangles and return the ground truth.

    MJPG in AVI is what both OpenCV's FFMPEG backend and Debian's GStreamer (without
    gstreamer1.0-libav) decode, so the same clip feeds the daemon as a file and the test RTSP
    server as a looped camera. The frame count is checked by reading the file back, because a
    VideoWriter that silently wrote nothing would make "lossless" tests meaningless."""
    path = Path(path)
    images, truth = render_moving_shapes(frames, wh, seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, wh)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write MJPG to {path}")
    try:
        for img in images:
            writer.write(img)
    finally:
        writer.release()
    got = count_frames(path)
    if got != frames:
        raise RuntimeError(f"{path}: wrote {frames} frames, reads back {got}")
    return truth


def frame_at(path: str | os.PathLike[str], index: int) -> np.ndarray:
    """Frame `index` of a video file, BGR uint8 (the real frames detector tests look at)."""
    cap = cv2.VideoCapture(str(path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = cap.read()
    finally:
        cap.release()
    if not ok:
        raise RuntimeError(f"cannot read frame {index} of {path}")
    return np.asarray(image, np.uint8)


def count_frames(path: str | os.PathLike[str]) -> int:
    """Frames OpenCV actually decodes (not the container's claim)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise RuntimeError(f"cannot open {path}")
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def transcode_to_mjpg(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                      max_frames: int | None = None, wh: tuple[int, int] | None = None) -> int:
    """Re-encode ``src`` as MJPG AVI (optionally resized / truncated) so Debian's GStreamer can
    decode it for the test RTSP server; returns the number of frames written."""
    cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {src}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer: cv2.VideoWriter | None = None
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, img = cap.read()
            if not ok:
                break
            if wh is not None:
                img = cv2.resize(img, wh, interpolation=cv2.INTER_AREA)
            if writer is None:
                h, w = img.shape[:2]
                writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"cv2.VideoWriter cannot write MJPG to {dst}")
            writer.write(img)
            n += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return n


RTSP_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;500000"
"""What OpenCV's FFMPEG backend needs to read the test camera promptly: TCP interleaving, and
a short stream probe (FFmpeg's default 5 s analyzeduration makes open() take ~2.8 s and then
hand out a burst of ~26 stale buffered frames)."""


def read_frames(url: str, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
    """Open ``url`` with OpenCV's FFMPEG backend, the way the daemon's capture does, and return
    ``count`` BGR frames ``(H, W, 3)``; fewer if the stream fails or ``timeout_s`` runs out.

    Sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for the call (OpenCV reads it at each open) and
    uses open/read timeouts so a dead camera cannot hang a test."""
    previous = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = RTSP_CAPTURE_OPTIONS
    try:
        ms = int(timeout_s * 1000)
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    finally:
        if previous is None:
            os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
        else:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = previous
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout_s
    try:
        while cap.isOpened() and len(frames) < count and time.monotonic() < deadline:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(img)
    finally:
        cap.release()
    return frames
