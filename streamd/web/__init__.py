"""The live view: a browser page per fleet and per camera, showing what streamd sees.

Operators tune motion thresholds, ignore zones and detector confidence by looking, so the
page shows every camera's annotated live picture (motion ROIs, the thresholded motion mask,
ignore zones, objects with track ids, descriptions) beside its stats, plus `/healthz` for
monitoring. It costs nothing while nobody looks: the pipeline hands a frame to the view only
while a viewer is connected and at most `web.fps` times a second (`LiveView.wants`), and all
drawing and JPEG encoding happens on the view's own thread.

This module holds only the settings, so `streamd.config` can import it without pulling in
the HTTP server; `streamd.web.server` (aiohttp) and `streamd.web.view` are imported by the
daemon when `web.enabled` is true.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from streamd.settings import StrictModel

PASSWORD_ENV = "STREAMD_WEB_PASSWORD"


class WebError(Exception):
    """The live view could not start (address in use, no permission to bind)."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; a host name is not resolved (validation
    does no I/O), so any other name counts as reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSettings(StrictModel):
    """`web:` — the live view. The auth fields come before `host` on purpose: the check that a
    non-loopback `host` has auth (or says `allow_anonymous`) reads them."""

    enabled: bool = Field(False, description="Serve the live view.")
    username: str | None = Field(
        None, min_length=1, description="HTTP Basic auth user; with it every path but "
        "/healthz needs the password.")
    password_file: Path | None = Field(
        None, description=f"File holding the password (else env {PASSWORD_ENV}); a relative "
        "path is looked up in $CREDENTIALS_DIRECTORY first. Never logged.")
    allow_anonymous: bool = Field(
        False, description="Allow a non-loopback `host` without auth (logged as a warning "
        "at startup): anyone who reaches the port sees the cameras.")
    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on; anything but loopback "
        "needs `username` (or `allow_anonymous: true`).")
    port: int = Field(8080, ge=1, le=65535)
    fps: float = Field(
        5.0, gt=0, le=30, description="Pictures per second per camera at most, while "
        "someone watches (each costs a draw and a JPEG encode).")
    quality: int = Field(75, ge=10, le=100, description="JPEG quality of the live pictures.")
    max_width: int = Field(
        1280, ge=160, le=4096, description="Live pictures are scaled down to this width.")

    @field_validator("password_file")
    @classmethod
    def _password_needs_user(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        data = info.data
        if v is not None and data.get("username") is None:
            raise ValueError("password_file is set but username is not")
        return v

    @field_validator("host")
    @classmethod
    def _exposed_needs_auth(cls, v: str, info: ValidationInfo) -> str:
        data = info.data
        if data.get("enabled") and not is_loopback(v) and data.get("username") is None \
                and not data.get("allow_anonymous"):
            raise ValueError(f"{v} is not a loopback address: set web.username and "
                             "web.password_file, or allow_anonymous: true to serve the "
                             "cameras to anyone who reaches the port")
        return v

    @property
    def exposed_anonymously(self) -> bool:
        """Listening beyond loopback without auth (allowed only by `allow_anonymous`)."""
        return not is_loopback(self.host) and self.username is None
