"""The `mqtt:` section: where the broker is, how streamd logs in and what it publishes with.

The publisher (`streamd.publish`) and the config loader (which reads the password file) both
read these; the model lives apart from the publisher so the loader does not import paho.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from streamd.settings import Problem, StrictModel

PASSWORD_ENV = "STREAMD_MQTT_PASSWORD"


class TLSSettings(StrictModel):
    """`mqtt.tls`: connect with TLS, checking the broker against `ca_file` (else the system
    CAs), optionally with a client certificate."""

    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's cert.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")

    @model_validator(mode="after")
    def _cert_needs_key(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    def preflight(self, file: str, key: str) -> list[Problem]:
        """Every file named here exists."""
        return [Problem(file, f"{key}.{name}", f"{path} does not exist")
                for name, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file),
                                   ("key_file", self.key_file))
                if path is not None and not path.is_file()]


class MQTTSettings(StrictModel):
    """`mqtt:`: the broker, the login, QoS, and how much the durable outbox keeps while the
    broker is away."""

    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    topic_prefix: str | None = Field(
        None, description="Topic prefix; default `streamd/<site>`. No wildcards.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS for detections, descriptions, status.")
    stats_qos: Literal[0, 1, 2] = Field(0, description="QoS for the periodic stats topic.")
    client_id: str | None = Field(None, description="Default `streamd-<site>`.")
    username: str | None = Field(None, description="Broker login; unset: anonymous.")
    password_file: Path | None = Field(
        None, description=f"File holding the password (else env {PASSWORD_ENV}). "
        "A relative path is looked up in $CREDENTIALS_DIRECTORY first.")
    tls: TLSSettings | None = Field(None, description="Connect with TLS; unset: plain TCP.")
    keepalive_s: int = Field(
        30, ge=5, le=3600, description="MQTT keepalive: the broker publishes streamd's last "
        "will (offline) after about 1.5x this without traffic.")
    publish_empty: bool = Field(False, description="Publish detections for frames with nothing.")
    stats_interval_s: float = Field(10.0, gt=0, le=3600,
                                    description="Period of the per-camera stats topic.")
    max_pending: int = Field(
        100_000, ge=100, description="Messages kept in the durable outbox while the broker "
        "is away; past it the oldest stats, then detections, then descriptions are dropped "
        "(and counted), never status.")
    max_pending_bytes: int = Field(
        256 * 1024 * 1024, ge=64 * 1024, description="The same bound in payload bytes.")
    drain_timeout_s: float = Field(
        120.0, ge=0, le=86_400, description="When every camera has ended (files played "
        "once, --max-frames), wait this long for the broker to take what the outbox still "
        "holds, reconnecting meanwhile; if messages remain, exit 75 (EX_TEMPFAIL) so "
        "systemd's Restart=on-failure starts the daemon again and it sends them.")

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip("/") or any(c in v for c in "+#")):
            raise ValueError("must be a non-empty topic without + or #")
        return v.strip("/") if v is not None else None

    def preflight(self, file: str, key: str) -> list[Problem]:
        """The TLS files exist."""
        return [] if self.tls is None else self.tls.preflight(file, f"{key}.tls")
