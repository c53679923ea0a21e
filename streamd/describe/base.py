"""The one interface every describer backend implements, and the values that cross it.

A backend is one hot-path method plus `close()`, like a detector: `DescriberService` owns
everything around the model (which objects are due, rate limits, the queue, the cache, the
crop), so a backend only turns one prepared request into words and can be swapped, or faked
in a test, without touching scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from streamd.describe.inputs import zone
from streamd.frames import Image


@dataclass(frozen=True, eq=False)
class DescribeRequest:
    """What a describer may look at: the object, the frame it was seen in, and its motion.

    The analysis thread fills the identity and geometry; `DescriberService` adds `crop` (the
    padded object pixels, already sized for the backend) and `prompt` (the rendered prompt)
    when it decides the object is due, so nothing is cropped for objects it skips.
    """

    camera: str
    frame_id: int
    ts: float
    """Capture time of the described frame (UTC epoch s): the description names its frame."""
    object_id: int
    label: str
    score: float
    box: tuple[int, int, int, int]
    """xyxy in pixels of the original frame."""
    frame_wh: tuple[int, int]
    flow_xy: tuple[float, float] | None = None
    """Mean motion of the object's region, px/frame (x right, y down), if it moved."""
    crop: Image | None = field(default=None, repr=False)
    """The object's pixels, BGR (H, W, 3), padded around the box and sized for the backend."""
    prompt: str = ""
    """The rendered prompt, for backends that take one."""

    @property
    def zone(self) -> str:
        """The cell of the frame's 3x3 grid that holds the box centre (`top-left`, ...)."""
        return zone(self.box, self.frame_wh)


@dataclass(frozen=True, eq=False)
class Description:
    """One answer, as the service hands it to the publisher."""

    request: DescribeRequest
    text: str
    model: str
    latency_ms: float
    """Time spent producing the text: the model call, or the cache lookup when `cached`."""
    cached: bool


class Describer(Protocol):
    """Turns one object into words. Called from the describer's worker thread only."""

    model: str
    """Names the model in every description (`model` field of the payload)."""
    input_size: int
    """Longest crop side (px) worth sending (0: the backend looks at no pixels, so nothing is
    cropped or cached for it): larger crops are shrunk before queueing, so the
    queue holds small images and an HTTP backend sends no more than the model will use."""
    square_input: bool
    """The model looks at a square (CLIP-style centre crop): the service widens the box to a
    square of context instead of letting the processor cut off head and feet."""

    def describe(self, request: DescribeRequest) -> str: ...

    def close(self) -> None: ...


class DescriberError(Exception):
    """A configured describer cannot run; the message says why. Startup stops on it."""
