"""Small factories shared by unit tests."""

from __future__ import annotations

import numpy as np

from streamd.frames import Frame


def frame(frame_id: int = 1, camera: str = "cam", wh: tuple[int, int] = (64, 48),
          ts: float = 1_700_000_000.0, value: int = 0) -> Frame:
    w, h = wh
    return Frame(camera, frame_id, ts + frame_id / 10, np.full((h, w, 3), value, np.uint8),
                 pts=frame_id / 10)
