"""Describers turn one detected object into words, off the video path.

A backend is one module holding its YAML key and its class, registered in `BACKENDS`;
`DescriberService` (in `service.py`) owns scheduling, rate limits and the queue, so a
backend only answers `describe(request) -> str`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from streamd.config import DescriberSettings, NoDescriberSettings, TemplateDescriberSettings
from streamd.frames import Image


@dataclass(frozen=True, eq=False)
class DescribeRequest:
    """What a describer may look at: the object, the frame it was seen in, and its motion."""

    camera: str
    frame_id: int
    ts: float
    object_id: int
    label: str
    score: float
    box: tuple[int, int, int, int]
    """xyxy in pixels of the original frame."""
    frame_wh: tuple[int, int]
    flow_xy: tuple[float, float] | None = None
    """Mean motion of the object's region, px/frame (x right, y down), if it moved."""
    crop: Image | None = field(default=None, repr=False)
    """The object's pixels (padded), for backends that look at the image."""


class Describer(Protocol):
    model: str
    """Names the model in every description (`model` field of the payload)."""

    def describe(self, request: DescribeRequest) -> str: ...

    def close(self) -> None: ...


class DescriberError(Exception):
    """A configured describer could not start; the message says why."""


def _template(settings: DescriberSettings) -> Describer:
    from streamd.describe.template import TemplateDescriber

    return TemplateDescriber()


BACKENDS: dict[str, Callable[[DescriberSettings], Describer]] = {
    "template": _template,
}


def create_describer(settings: DescriberSettings) -> Describer | None:
    """The configured backend, or None for `backend: none`."""
    if isinstance(settings, NoDescriberSettings):
        return None
    assert isinstance(settings, TemplateDescriberSettings)
    return BACKENDS[settings.backend](settings)
