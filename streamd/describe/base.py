"""The one interface every describer backend implements, and the values that cross it.

A backend is one hot-path method plus `close()`, like a detector: `DescriberService` owns
everything around the model (which objects are due, rate limits, the queue, the cache, the
crop), so a backend only turns one prepared request into words and can be swapped, or faked
in a test, without touching scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, field_validator

from streamd.describe.inputs import zone
from streamd.frames import Image
from streamd.settings import Problem, StrictModel, check_placeholders

PROMPT_FIELDS = frozenset({"label", "camera", "zone"})
"""Placeholders a describer prompt may use: the object's label, its camera, and the 3x3 grid
cell (`top-left`, `centre`, ...) its box centre is in."""


@dataclass(frozen=True)
class SecretSource:
    """Where a backend's secret comes from: a file (relative: looked up in systemd's
    $CREDENTIALS_DIRECTORY first), else an env var. `key` names the setting in errors."""

    file: Path | None
    env: str
    key: str


class DescriberSettingsBase(StrictModel):
    """What every `describer:` section has, `backend: none` included: its key, the checks
    that need the file system, and the secret it needs read at load time."""

    backend: str

    def preflight(self, file: str, key: str) -> list[Problem]:
        """Problems only the file system shows (a missing model directory); none here."""
        return []

    def secret(self) -> SecretSource | None:
        """The API key this backend sends, if it sends one; read by `config.load`."""
        return None


class NoDescriberSettings(DescriberSettingsBase):
    """`backend: none`: objects are not described."""

    backend: Literal["none"]


class DescriberBaseSettings(DescriberSettingsBase):
    """Scheduling, rate limits, queue, input cache and crop geometry: every backend has them
    because `DescriberService` applies them in front of whichever model answers."""

    max_per_second: float = Field(
        5.0, gt=0, le=1000, description="Model calls per second, all cameras together.")
    camera_max_per_second: float | None = Field(
        None, gt=0, le=1000, description="Model calls per second for any one camera "
        "(default: only the overall cap), so one busy camera cannot starve the others.")
    refresh_s: float = Field(
        30.0, gt=0, description="Describe a tracked object again after this many seconds.")
    on_zone_change: bool = Field(
        True, description="Describe an object again when it moves into another cell of the "
        "frame's 3x3 grid (`{zone}`).")
    queue_size: int = Field(
        64, ge=1, le=10_000, description="Requests waiting for the model; past it the "
        "oldest is dropped (counted) and its object becomes due again.")
    cache_size: int = Field(
        256, ge=0, le=100_000, description="Descriptions kept for reuse (LRU); 0 disables "
        "the cache.")
    cache_max_distance: int = Field(
        6, ge=0, le=32, description="Largest Hamming distance (of 64 bits) between the "
        "difference hashes of two crops that still counts as the same picture.")
    crop_pad: float = Field(
        0.15, ge=0.0, le=2.0, description="The box is grown by this fraction of its width "
        "and height on each side before cropping (context helps a model).")


class PromptedDescriberSettings(DescriberBaseSettings):
    """The backends that are asked a question: a prompt per label and an answer length."""

    prompt: str = Field(
        "Describe the {label} in this picture in one short sentence.",
        min_length=1, description="Default prompt; placeholders {label}, {camera}, {zone}.")
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Prompt per label (overrides `prompt`).")
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Longest answer, in tokens.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return check_placeholders(v, PROMPT_FIELDS)

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: dict[str, str]) -> dict[str, str]:
        for template in v.values():
            check_placeholders(template, PROMPT_FIELDS)
        return v


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
