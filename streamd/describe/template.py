"""The `template` describer: one line from label, score, position and motion — no model.

It is the default because it costs microseconds, exercises the whole description path
(scheduling, frame sync, MQTT) on any box, and gives dashboards something readable before
an operator installs a vision-language model.
"""

from __future__ import annotations

import math
from typing import Literal

from streamd.describe.base import DescriberBaseSettings, DescribeRequest

KEY = "template"


class TemplateDescriberSettings(DescriberBaseSettings):
    """`backend: template`: a sentence from label, score, place and motion; no model."""

    backend: Literal["template"]

_DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")
STILL_PX = 0.5
"""Below this mean flow (px/frame) an object is described as stationary."""


def direction(flow_xy: tuple[float, float]) -> str:
    """Compass-like name for an image-space vector (y grows downwards).

    >>> direction((3.0, 0.1)), direction((0.0, -2.0)), direction((-1.0, 1.0))
    ('right', 'up', 'down-left')
    """
    angle = math.degrees(math.atan2(flow_xy[1], flow_xy[0])) % 360
    return _DIRECTIONS[int((angle + 22.5) // 45) % 8]


class TemplateDescriber:
    """Words from the request's fields; it never looks at pixels, so `input_size` is 0 and
    the service neither crops nor hashes for it (its text depends on motion, not looks)."""

    model = "template"
    input_size = 0
    square_input = False

    def __init__(self, settings: TemplateDescriberSettings | None = None) -> None:
        """Takes its settings like every backend; it has nothing to configure."""

    def describe(self, request: DescribeRequest) -> str:
        where = request.zone
        text = f"{request.label} ({request.score:.0%}) in the {where} of {request.camera}"
        flow = request.flow_xy
        if flow is None or math.hypot(*flow) < STILL_PX:
            return f"{text}, stationary"
        return f"{text}, moving {direction(flow)} at {math.hypot(*flow):.1f} px/frame"

    def close(self) -> None:
        """Nothing to release."""
