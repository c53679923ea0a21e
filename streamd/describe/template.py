"""The `template` describer: one line from label, score, position and motion — no model.

It is the default because it costs microseconds, exercises the whole description path
(scheduling, frame sync, MQTT) on any box, and gives dashboards something readable before
an operator installs a vision-language model.
"""

from __future__ import annotations

import math

from streamd.describe import DescribeRequest

KEY = "template"

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "centre", "right")
_DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")
STILL_PX = 0.5
"""Below this mean flow (px/frame) an object is described as stationary."""


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


def direction(flow_xy: tuple[float, float]) -> str:
    """Compass-like name for an image-space vector (y grows downwards).

    >>> direction((3.0, 0.1)), direction((0.0, -2.0)), direction((-1.0, 1.0))
    ('right', 'up', 'down-left')
    """
    angle = math.degrees(math.atan2(flow_xy[1], flow_xy[0])) % 360
    return _DIRECTIONS[int((angle + 22.5) // 45) % 8]


class TemplateDescriber:
    model = "template"

    def describe(self, request: DescribeRequest) -> str:
        where = zone(request.box, request.frame_wh)
        text = f"{request.label} ({request.score:.0%}) in the {where} of {request.camera}"
        flow = request.flow_xy
        if flow is None or math.hypot(*flow) < STILL_PX:
            return f"{text}, stationary"
        return f"{text}, moving {direction(flow)} at {math.hypot(*flow):.1f} px/frame"

    def close(self) -> None:
        """Nothing to release."""
