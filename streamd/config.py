"""YAML → typed, validated settings.

The models mirror the YAML one to one and forbid unknown keys at every level, so a typo is
an error rather than a silently ignored default. Validation itself does no I/O; `load()`
reads the file, maps every pydantic error back to its key path and YAML line, and reads
secrets (password files, env vars) only after the tree validated. `preflight()` is the I/O
half (model files, file sources) that `streamd check` and `streamd run` add on top; it asks
each section's model, so this module knows no backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from streamd.capture import CameraSettings
from streamd.describe import DescriberSettings
from streamd.describe.template import TemplateDescriberSettings
from streamd.detect import DetectorSettings
from streamd.detect.tflite import TFLiteDetectorSettings
from streamd.metrics import MetricsSettings
from streamd.motion import MotionSettings
from streamd.mqtt import PASSWORD_ENV, MQTTSettings
from streamd.settings import NAME_PATTERN, Problem, StrictModel
from streamd.snapshot import SnapshotSettings
from streamd.sparkplug.settings import SparkplugSettings
from streamd.track import TrackerSettings
from streamd.web import PASSWORD_ENV as WEB_PASSWORD_ENV
from streamd.web import WebSettings

__all__ = [
    "PASSWORD_ENV",
    "Config",
    "ConfigError",
    "Problem",
    "Settings",
    "load",
    "preflight",
    "validate",
]


class Settings(StrictModel):
    """The whole file. Each section's model lives with the stage or backend it configures
    (`streamd.capture.CameraSettings`, `streamd.detect.*`, ...); this root only assembles
    them and checks what spans sections."""

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
        default_factory=lambda: TFLiteDetectorSettings(backend="tflite"),
        description="Default: MobileNet-SSD v2 COCO on LiteRT (engines/fetch_ssd.sh).")
    describer: DescriberSettings = Field(
        default_factory=lambda: TemplateDescriberSettings(backend="template"))
    motion: MotionSettings = Field(default_factory=MotionSettings)
    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
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
        if not self.motion.enabled and self.detector.runs \
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
    """The describer's API key, for a backend that sends one (`secret()`): its file, else its
    env var, else none (a local server such as Ollama needs none)."""
    source = settings.describer.secret()
    if source is None:
        return None
    return _read_secret(source.file, source.env, source.key, file, None)


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


def preflight(config: Config) -> list[Problem]:
    """The checks that need the file system (model files, file sources, TLS files): each
    section asks its own settings model, which knows what it names."""
    s, file = config.settings, str(config.source)
    problems = [*s.detector.preflight(file, "detector"),
                *s.describer.preflight(file, "describer")]
    for i, cam in enumerate(s.cameras):
        problems += cam.preflight(file, f"cameras[{i}]")
    return problems + s.mqtt.preflight(file, "mqtt")
