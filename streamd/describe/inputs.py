"""What a describer is given: where the object is (`zone`), its padded crop, the crop's
perceptual hash (the cache key), and the prompt with its placeholders filled in.

All of it runs on the analysis thread for objects that are due, so it is cheap: slicing, one
`cv2.resize` and a 9x8 difference hash.
"""

from __future__ import annotations

import cv2
import numpy as np

from streamd import geometry
from streamd.frames import Image

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")


def zone(box: tuple[int, int, int, int], frame_wh: tuple[int, int]) -> str:
    """Name the cell of a 3x3 grid that holds the box centre.

    >>> zone((0, 0, 10, 10), (300, 300))
    'top-left'
    >>> zone((140, 140, 160, 160), (300, 300))
    'centre'
    """
    w, h = frame_wh
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = _ROWS[min(int(3 * cy / max(h, 1)), 2)]
    col = _COLS[min(int(3 * cx / max(w, 1)), 2)]
    if row == "middle":
        return "centre" if col == "centre" else col
    return row if col == "centre" else f"{row}-{col}"


def pad_box(box: tuple[int, int, int, int], frame_wh: tuple[int, int], pad: float,
            square: bool = False) -> tuple[int, int, int, int]:
    """Grow an xyxy box by `pad` of its width and height on each side (to a square of the
    larger side first when `square`), clipped to the frame; never empty.

    >>> pad_box((100, 100, 120, 140), (640, 480), 0.5)
    (90, 80, 130, 160)
    >>> pad_box((100, 100, 120, 140), (640, 480), 0.0, square=True)
    (90, 100, 130, 140)
    >>> pad_box((0, 0, 10, 10), (640, 480), 1.0)
    (0, 0, 20, 20)
    """
    x1, y1, x2, y2 = box
    grown = geometry.pad([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)], pad, square)[0]
    fw, fh = frame_wh
    nx1 = min(max(round(grown[0]), 0), fw - 1)
    ny1 = min(max(round(grown[1]), 0), fh - 1)
    nx2 = max(min(round(grown[2]), fw), nx1 + 1)
    ny2 = max(min(round(grown[3]), fh), ny1 + 1)
    return nx1, ny1, nx2, ny2


def crop_for(image: Image, box: tuple[int, int, int, int], pad: float, max_side: int,
             square: bool = False) -> Image:
    """The padded crop of `box`, shrunk (aspect kept) so its longest side is at most
    `max_side`. Always a new array: the queue must not pin, or see changes to, the frame.

    >>> crop_for(np.zeros((480, 640, 3), np.uint8), (0, 0, 400, 200), 0.0, 100).shape
    (50, 100, 3)
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = pad_box(box, (w, h), pad, square)
    crop: Image = image[y1:y2, x1:x2]
    longest = max(x2 - x1, y2 - y1)
    if longest > max_side:
        scale = max_side / longest
        size = (max(round((x2 - x1) * scale), 1), max(round((y2 - y1) * scale), 1))
        return np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), np.uint8)
    return np.array(crop, np.uint8)


def dhash(image: Image) -> int:
    """64-bit difference hash: the grey image area-averaged to 9x8, one bit per pair of
    horizontal neighbours (is the right one brighter?). Re-encoding, small shifts of
    brightness and rescaling change few bits; a different picture changes about half.

    >>> flat = np.zeros((40, 30, 3), np.uint8)
    >>> dhash(flat)
    0
    >>> ramp = np.tile(np.arange(90, dtype=np.uint8), (80, 1))
    >>> f"{dhash(np.dstack([ramp] * 3)):x}"
    'ffffffffffffffff'
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Bits that differ between two hashes.

    >>> hamming(0b1011, 0b0001)
    2
    """
    return (a ^ b).bit_count()


def render_prompt(template: str, label: str, camera: str, zone_name: str) -> str:
    """Fill `{label}`, `{camera}`, `{zone}` (the config rejects any other placeholder).

    >>> render_prompt("What is the {label} in the {zone} of {camera} doing?", "car", "gate",
    ...               "top-left")
    'What is the car in the top-left of gate doing?'
    """
    return template.format(label=label, camera=camera, zone=zone_name)
