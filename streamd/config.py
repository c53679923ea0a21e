"""YAML → typed, validated settings.

The models mirror the YAML one to one and forbid unknown keys at every level, so a typo is
an error rather than a silently ignored default. Validation itself does no I/O; `load()`
reads the file, maps every pydantic error back to its key path and YAML line, and reads
secrets (password files, env vars) only after the tree validated. `preflight()` is the I/O
half (model files, file sources) that `streamd check` and `streamd run` add on top.
"""

from __future__ import annotations

import importlib.util
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamd.sparkplug.settings import SparkplugSettings
from streamd.web import PASSWORD_ENV as WEB_PASSWORD_ENV
from streamd.web import WebSettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Site and camera names become MQTT topic levels: no `/`, `+`, `#` or spaces."""

PASSWORD_ENV = "STREAMD_MQTT_PASSWORD"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Model):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's cert.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")

    @model_validator(mode="after")
    def _cert_needs_key(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MQTTSettings(_Model):
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str | None = Field(
        None, description="Topic prefix; default `streamd/<site>`. No wildcards.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS for detections, descriptions, status.")
    stats_qos: Literal[0, 1, 2] = Field(0, description="QoS for the periodic stats topic.")
    client_id: str | None = Field(None, description="Default `streamd-<site>`.")
    username: str | None = None
    password_file: Path | None = Field(
        None, description=f"File holding the password (else env {PASSWORD_ENV}). "
        "A relative path is looked up in $CREDENTIALS_DIRECTORY first.")
    tls: TLSSettings | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    publish_empty: bool = Field(False, description="Publish detections for frames with nothing.")
    stats_interval_s: float = Field(10.0, gt=0, le=3600)
    max_pending: int = Field(
        100_000, ge=100, description="Messages kept in the durable outbox while the broker "
        "is away; past it the oldest stats, then detections, then descriptions are dropped "
        "(and counted), never status.")
    max_pending_bytes: int = Field(
        256 * 1024 * 1024, ge=64 * 1024, description="The same bound in payload bytes.")

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip("/") or any(c in v for c in "+#")):
            raise ValueError("must be a non-empty topic without + or #")
        return v.strip("/") if v is not None else None


class _DetectorBase(_Model):
    confidence: float = Field(0.35, ge=0.0, le=1.0, description="Minimum score kept.")
    iou: float = Field(0.5, gt=0.0, le=1.0, description="IoU above which NMS suppresses.")
    classes: list[str] | None = Field(None, description="Keep only these labels.")
    full_frame_every: int = Field(
        0, ge=0, description="Also run on the whole frame every N analysed frames "
        "(0: only on motion ROIs), so objects that stopped moving are not lost.")
    max_crops: int = Field(
        1, ge=1, le=64, description="Crops per frame at most (more motion regions are "
        "merged); when the crops would cover half the frame or more, the whole frame is "
        "detected in one pass instead. Each crop costs one full inference at `input_size`, "
        "so 1 is the cheapest; raise it when objects are small and far apart.")
    interval: int = Field(
        1, ge=1, le=100, description="Run the detector on every k-th analysed frame per "
        "camera; in between the tracker carries the boxes forward (DeepStream's `interval`).")


class ONNXRuntimeDetectorSettings(_DetectorBase):
    backend: Literal["onnxruntime"]
    model: Path = Field(description="YOLOv8/YOLO11-style ONNX file, output [N, 4+C, A].")
    input_size: int = Field(320, ge=32, le=2048, multiple_of=32)
    labels: list[str] | None = Field(
        None, description="Class names; default: the model's `names` metadata, else COCO.")
    threads: int = Field(0, ge=0, le=64, description="intra-op threads; 0 = ONNX Runtime's choice.")
    max_batch: int = Field(8, ge=1, le=256, description="Crops per inference call at most.")


class TensorRTDetectorSettings(_DetectorBase):
    """A TensorRT engine compiled from a YOLO ONNX model for this box's GPU (see
    engines/README.md). Engines are cached in `engine_dir` and keyed on the ONNX hash, the
    TensorRT version, the GPU, the precision, the input size and the batch range."""

    backend: Literal["tensorrt"]
    model: Path = Field(description="YOLOv8/YOLO11 ONNX file to build the engine from, or a "
                        "ready .engine/.plan (streamd's, or an Ultralytics export) loaded as is.")
    engine_dir: Path | None = Field(
        None, description="Engine cache (engines, JSON sidecars, timing and calibration "
        "caches); must be writable by the daemon. Default $CACHE_DIRECTORY (systemd "
        "CacheDirectory=), else ./engines.")
    build: Literal["auto", "never"] = Field(
        "auto", description="No matching engine cached: build it at startup (minutes on a "
        "Jetson), or refuse to start saying what differs.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="int8 needs calibration_dir (TensorRT 10.x only).")
    calibration_dir: Path | None = Field(
        None, description="Images (jpg/png/bmp/webp) for int8 calibration, ideally a few "
        "hundred frames from the cameras.")
    min_batch: int = Field(1, ge=1, le=256, description="Smallest batch of the engine profile.")
    opt_batch: int | None = Field(
        None, ge=1, le=256, description="Batch TensorRT tunes kernels for; default max_batch.")
    max_batch: int = Field(8, ge=1, le=256, description="Crops per inference call at most.")
    input_size: int = Field(320, ge=32, le=2048, multiple_of=32)
    workspace_mb: int = Field(1024, ge=16, le=1 << 20,
                              description="Builder scratch memory limit (MiB).")
    labels: list[str] | None = Field(
        None, description="Class names; default: the ONNX `names` metadata (or the "
        "Ultralytics engine header), else COCO.")
    device: int = Field(0, ge=0, le=63, description="CUDA device index.")

    @model_validator(mode="after")
    def _batches_and_calibration(self) -> TensorRTDetectorSettings:
        lo, opt, hi = self.batch_range
        if not lo <= opt <= hi:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {lo}/{opt}/{hi}")
        prebuilt = self.model.suffix.lower() in (".engine", ".plan", ".trt")
        if self.precision == "int8" and self.calibration_dir is None and not prebuilt:
            raise ValueError("precision int8 needs calibration_dir (a folder of images)")
        return self

    @property
    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) of the engine's batch axis."""
        opt = self.max_batch if self.opt_batch is None else self.opt_batch
        return self.min_batch, opt, self.max_batch

    def resolved_engine_dir(self) -> Path:
        if self.engine_dir is not None:
            return self.engine_dir
        env = os.environ.get("CACHE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path("engines")


class HOGDetectorSettings(_DetectorBase):
    backend: Literal["hog"]
    confidence: float = Field(
        0.25, ge=0.0, lt=1.0, description="Minimum score; HOG's SVM margin m is published as "
        "m / (1 + m), so 0.25 keeps margins above 0.33.")
    min_height: int = Field(96, ge=64, le=4096,
                            description="Crops are upscaled so a person this tall is found.")


class NoDetectorSettings(_Model):
    backend: Literal["none"]


DetectorSettings = Annotated[
    ONNXRuntimeDetectorSettings | TensorRTDetectorSettings | HOGDetectorSettings
    | NoDetectorSettings,
    Field(discriminator="backend"),
]


DESCRIBER_KEY_ENV = "STREAMD_DESCRIBER_API_KEY"
PROMPT_FIELDS = frozenset({"label", "camera", "zone"})
"""Placeholders a describer prompt may use: the object's label, its camera, and the 3x3 grid
cell (`top-left`, `centre`, ...) its box centre is in."""


def _check_placeholders(template: str, allowed: frozenset[str]) -> str:
    """Reject a template naming an unknown placeholder, so `{lable}` is a config error rather
    than a KeyError in the describer thread on the first object."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)} "
                         f"in {template!r}; allowed: "
                         f"{', '.join('{' + n + '}' for n in sorted(allowed))}")
    return template


class DescriberBaseSettings(_Model):
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
    prompt: str = Field(
        "Describe the {label} in this picture in one short sentence.",
        min_length=1, description="Default prompt; placeholders {label}, {camera}, {zone}.")
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Prompt per label (overrides `prompt`).")
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Longest answer, in tokens.")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _check_placeholders(v, PROMPT_FIELDS)

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: dict[str, str]) -> dict[str, str]:
        for template in v.values():
            _check_placeholders(template, PROMPT_FIELDS)
        return v


class TemplateDescriberSettings(DescriberBaseSettings):
    backend: Literal["template"]


class _LocalModelSettings(_Model):
    model: Path = Field(description="Hugging Face model directory (config.json, weights, "
                        "processor files); loaded offline, never downloaded.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="`auto`: cuda when torch sees a GPU, else cpu.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="`auto`: float16 on cuda, float32 on cpu.")


class TransformersDescriberSettings(PromptedDescriberSettings, _LocalModelSettings):
    backend: Literal["transformers"]
    image_size: int | None = Field(
        None, ge=32, le=4096, description="Longest crop side handed to the processor; "
        "default: what the model's processor says it works at.")
    trust_remote_code: bool = Field(
        False, description="Run Python shipped in the model directory (some models need it). "
        "Only for directories you trust.")
    processor_options: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="Extra keyword arguments for the processor call, "
        "e.g. {do_image_splitting: false} so SmolVLM sees a crop as one tile.")


class OpenAIDescriberSettings(PromptedDescriberSettings):
    backend: Literal["openai"]
    url: str = Field(
        pattern=r"^https?://[^/\s]+", description="OpenAI-compatible server, e.g. "
        "http://127.0.0.1:11434/v1 (Ollama); `/chat/completions` is appended unless given.")
    model: str = Field(min_length=1, description="Model name the server knows, e.g. "
                       "`moondream` or `qwen2.5vl:3b`.")
    api_key_file: Path | None = Field(
        None, description=f"File holding the API key (else env {DESCRIBER_KEY_ENV}); a "
        "relative path is looked up in $CREDENTIALS_DIRECTORY first. Never logged.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Longest wait for an answer.")
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    image_size: int = Field(512, ge=32, le=4096, description="Longest crop side sent.")
    jpeg_quality: int = Field(90, ge=10, le=100)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class CLIPDescriberSettings(DescriberBaseSettings, _LocalModelSettings):
    backend: Literal["clip"]
    vocabulary: list[str] = Field(
        min_length=2, description="Tags each crop is scored against (zero-shot).")
    vocabularies: dict[str, list[str]] = Field(
        default_factory=dict, description="Tags per label (overrides `vocabulary`).")
    text_template: str = Field(
        "a photo of {tag}", description="How a tag is phrased for the text encoder; "
        "placeholders {tag}, {label}.")
    top_k: int = Field(3, ge=1, le=50, description="Tags per description at most.")
    min_score: float = Field(
        0.1, ge=0.0, le=1.0, description="Tags below this probability are left out (the best "
        "one is always kept).")

    @field_validator("text_template")
    @classmethod
    def _text_template(cls, v: str) -> str:
        return _check_placeholders(v, frozenset({"tag", "label"}))

    @field_validator("vocabularies")
    @classmethod
    def _vocabularies(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for label, tags in v.items():
            if len(tags) < 2:
                raise ValueError(f"{label}: needs at least 2 tags to choose between")
        return v


class NoDescriberSettings(_Model):
    backend: Literal["none"]


DescriberSettings = Annotated[
    TemplateDescriberSettings | TransformersDescriberSettings | OpenAIDescriberSettings
    | CLIPDescriberSettings | NoDescriberSettings, Field(discriminator="backend")]


class MotionSettings(_Model):
    enabled: bool = Field(
        True, description="false: no motion gating; the detector then needs "
        "`full_frame_every` (the naive baseline of `streamd bench`).")
    scale_width: int = Field(
        320, ge=32, le=1920, description="Flow is computed at this width. 240 costs ~45 % "
        "of 320 and finds the same moving objects down to ~20 px (at 640 px wide); 160 "
        "also misses objects slower than ~2 px/frame.")
    threshold: Literal["auto"] | Annotated[float, Field(gt=0)] = Field(
        "auto", description="Flow magnitude (px/frame at full resolution) that counts as "
        "motion; `auto` adapts to the scene's noise floor.")
    min_area: float = Field(0.001, ge=0.0, lt=1.0, description="Smallest ROI, fraction of frame.")
    pad: float = Field(0.15, ge=0.0, le=2.0, description="ROI padding, fraction of its size.")
    max_rois: int = Field(8, ge=1, le=64, description="Largest ROIs kept per frame.")


class SnapshotSettings(_Model):
    interval_s: float = Field(
        0.0, ge=0, description="Publish an annotated JPEG per camera every N s (0: only on "
        "request, by any message to <prefix>/<camera>/snapshot/request).")
    max_width: int = Field(960, ge=160, le=4096, description="Scaled down to this width.")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality.")


class MetricsSettings(_Model):
    prometheus_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus text on this port (needs "
        "`pip install streamd[metrics]`); unset: no endpoint.")
    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 for all.")


Point = tuple[float, float]


class CameraSettings(_Model):
    name: str = Field(pattern=NAME_PATTERN, description="Topic level; unique in the fleet.")
    url: str | int = Field(description="rtsp://…, a file path, or a V4L2 device index.")
    fps: float | None = Field(None, gt=0, le=240, description="Analysis rate cap.")
    realtime: bool = Field(False, description="Pace a file at its native fps (live-like).")
    loop: bool = Field(False, description="Restart a file at its end.")
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(10.0, gt=0, le=120)
    read_timeout_s: float = Field(5.0, gt=0, le=120)
    reconnect_max_s: float = Field(
        1.5, gt=0, le=300, description="Longest wait between reconnect attempts (plus jitter); "
        "short, so a camera is back within seconds of its source.")
    ignore: list[list[Point]] = Field(
        default_factory=list, description="Polygons (full-frame pixels) where motion is ignored.")
    enabled: bool = True

    @field_validator("ignore")
    @classmethod
    def _polygons(cls, v: list[list[Point]]) -> list[list[Point]]:
        for i, poly in enumerate(v):
            if len(poly) < 3:
                raise ValueError(f"polygon {i} needs at least 3 points, has {len(poly)}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 0:
            raise ValueError("a device index is >= 0")
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v

    @property
    def kind(self) -> Literal["rtsp", "file", "device"]:
        if isinstance(self.url, int):
            return "device"
        if re.match(r"^(rtsps?|rtmp|https?|udp|tcp)://", self.url, re.I):
            return "rtsp"
        return "file"


class Settings(_Model):
    site: str = Field(pattern=NAME_PATTERN, description="Names the topic prefix streamd/<site>.")
    state_dir: Path | None = Field(
        None, description="frame_id/seq high-water marks; default $STATE_DIRECTORY, "
        "else ./state.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    ready_timeout_s: float = Field(
        30.0, gt=0, le=600, description="systemd READY=1 is sent once the broker is connected "
        "and a frame was analysed, or after this long regardless (dead cameras must not keep "
        "the unit 'activating').")
    mqtt: MQTTSettings = Field(default_factory=MQTTSettings)
    detector: DetectorSettings = Field(
        default_factory=lambda: HOGDetectorSettings(backend="hog"))
    describer: DescriberSettings = Field(
        default_factory=lambda: TemplateDescriberSettings(backend="template"))
    motion: MotionSettings = Field(default_factory=MotionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    sparkplug: SparkplugSettings | None = Field(
        None, description="Sparkplug B edge node beside contract v1; absent: none.")
    cameras: list[CameraSettings] = Field(min_length=1)

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, v: list[CameraSettings]) -> list[CameraSettings]:
        seen: set[str] = set()
        for cam in v:
            if cam.name in seen:
                raise ValueError(f"camera name {cam.name!r} is used twice")
            seen.add(cam.name)
        return v

    @model_validator(mode="after")
    def _detector_needs_a_trigger(self) -> Settings:
        if not self.motion.enabled and not isinstance(self.detector, NoDetectorSettings) \
                and not self.detector.full_frame_every:
            raise ValueError("motion.enabled is false, so detector.full_frame_every must be "
                             ">= 1 or the detector never runs")
        return self

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"streamd/{self.site}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"streamd-{self.site}"

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        env = os.environ.get("STATE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path("state")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (`file`, `path`, `line`) and why."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ConfigError(Exception):
    """Carries every problem found, so `streamd check` can list all of them at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Config:
    """Validated settings plus what was read beside them (secrets), never logged."""

    settings: Settings
    source: Path
    mqtt_password: SecretStr | None = None
    describer_api_key: SecretStr | None = None
    web_password: SecretStr | None = None


def _format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _line_index(node: yaml.Node, path: tuple[int | str, ...] = ()
                ) -> dict[tuple[int | str, ...], int]:
    """Map every key path in the YAML document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            lines[sub] = key.start_mark.line + 1
            lines.update({k: v for k, v in _line_index(value, sub).items() if k != sub})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> tuple[int | str, ...]:
    """Map a pydantic error location onto the YAML: drop union-branch tags (the `backend`
    value pydantic inserts for a discriminated union, `float` for a scalar union)."""
    out: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
            elif part == node.get("backend"):
                continue
            else:  # a missing key
                out.append(part)
                node = None
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
        else:
            break
    return tuple(out)


def validate(data: Any, file: str = "<config>", lines: dict[tuple[int | str, ...], int] | None
             = None) -> Settings:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", "the document must be a mapping of keys")])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, Problem] = {}
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]), data)
            msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"]
            key = _format_path(loc)
            if key in problems:  # one message per key for union alternatives
                msg = f"{problems[key].message}; or {msg[0].lower()}{msg[1:]}"
            line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines),
                        None)
            problems[key] = Problem(file, key, msg, line)
        raise ConfigError(list(problems.values())) from None


def _read_secret(secret_file: Path | None, env_name: str, key: str, file: str,
                 strip: str | None) -> SecretStr | None:
    """A secret from `secret_file` (relative: looked up in systemd's
    $CREDENTIALS_DIRECTORY first), else from env `env_name`, else None. `strip` is what is
    trimmed from the file's ends (a password may end in a space, a key may not)."""
    if secret_file is None:
        env = os.environ.get(env_name)
        return SecretStr(env) if env else None
    candidates = [secret_file]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and not secret_file.is_absolute():
        candidates.insert(0, Path(creds) / secret_file)
    for path in candidates:
        try:
            return SecretStr(path.read_text().strip(strip))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError([Problem(file, key, f"cannot read {path}: {exc.strerror}")]
                              ) from None
    raise ConfigError([Problem(file, key, f"{secret_file} does not exist")])


def _read_password(settings: Settings, file: str) -> SecretStr | None:
    return _read_secret(settings.mqtt.password_file, PASSWORD_ENV, "mqtt.password_file", file,
                        "\r\n")


def _read_describer_key(settings: Settings, file: str) -> SecretStr | None:
    """The `openai` describer's API key: `describer.api_key_file`, else env
    STREAMD_DESCRIBER_API_KEY, else none (a local server such as Ollama needs none)."""
    d = settings.describer
    if not isinstance(d, OpenAIDescriberSettings):
        return None
    return _read_secret(d.api_key_file, DESCRIBER_KEY_ENV, "describer.api_key_file", file, None)


def _read_web_password(settings: Settings, file: str) -> SecretStr | None:
    """The live view's Basic auth password, when `web.username` asks for one."""
    web = settings.web
    if not web.enabled or web.username is None:
        return None
    password = _read_secret(web.password_file, WEB_PASSWORD_ENV, "web.password_file", file,
                            "\r\n")
    if password is None or not password.get_secret_value():
        raise ConfigError([Problem(file, "web.password_file", "web.username is set but there "
                                   f"is no password: set web.password_file or env "
                                   f"{WEB_PASSWORD_ENV}")])
    return password


def load(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a YAML config; raise ConfigError with every problem."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, "", f"cannot read: {exc.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(file, "", f"invalid YAML: {reason}", line)]) from None
    lines = _line_index(node) if node is not None else {}
    settings = validate(data, file, lines)
    return Config(settings, path, _read_password(settings, file),
                  _read_describer_key(settings, file), _read_web_password(settings, file))


def _tensorrt_preflight(det: TensorRTDetectorSettings, file: str) -> list[Problem]:
    """Model and calibration folder exist; the engine cache can be written when the daemon
    may have to build (the usual failure under systemd's ProtectSystem=strict)."""
    problems: list[Problem] = []
    if not det.model.is_file():
        problems.append(Problem(file, "detector.model", f"{det.model} does not exist"))
    prebuilt = det.model.suffix.lower() in (".engine", ".plan", ".trt")
    if det.precision == "int8" and det.calibration_dir is not None and not prebuilt \
            and not det.calibration_dir.is_dir():
        problems.append(Problem(file, "detector.calibration_dir",
                                f"{det.calibration_dir} is not a directory"))
    if det.build == "auto" and not prebuilt:
        engine_dir = det.resolved_engine_dir()
        existing = next((p for p in (engine_dir, *engine_dir.absolute().parents)
                         if p.exists()), None)
        if existing is not None and not (existing.is_dir()
                                         and os.access(existing, os.W_OK | os.X_OK)):
            problems.append(Problem(
                file, "detector.engine_dir", f"{engine_dir} is not writable by this user, so "
                "no engine can be built there (under systemd: CacheDirectory=streamd and "
                "leave engine_dir unset, or build it beforehand and set build: never)"))
    return problems


def preflight(config: Config) -> list[Problem]:
    """The checks that need the file system: model files, file sources, TLS files."""
    s, file = config.settings, str(config.source)
    problems: list[Problem] = []
    det = s.detector
    if isinstance(det, ONNXRuntimeDetectorSettings) and not det.model.is_file():
        problems.append(Problem(file, "detector.model", f"{det.model} does not exist"))
    if isinstance(det, TensorRTDetectorSettings):
        problems += _tensorrt_preflight(det, file)
    desc = s.describer
    if isinstance(desc, TransformersDescriberSettings | CLIPDescriberSettings):
        if not desc.model.is_dir():
            problems.append(Problem(file, "describer.model", f"{desc.model} does not exist: "
                                    "put a Hugging Face model directory there (README, "
                                    "Describers)"))
        elif not (desc.model / "config.json").is_file():
            problems.append(Problem(file, "describer.model", f"{desc.model} has no "
                                    "config.json: not a Hugging Face model directory"))
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(Problem(file, "describer.backend", f"{desc.backend} needs "
                                    f"{' and '.join(missing)}: pip install 'streamd[vl]'"))
    for i, cam in enumerate(s.cameras):
        if cam.kind == "file" and not Path(str(cam.url)).is_file():
            problems.append(Problem(file, f"cameras[{i}].url", f"{cam.url} does not exist"))
    if s.mqtt.tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            p = getattr(s.mqtt.tls, key)
            if p is not None and not Path(p).is_file():
                problems.append(Problem(file, f"mqtt.tls.{key}", f"{p} does not exist"))
    return problems
