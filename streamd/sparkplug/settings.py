"""The `sparkplug:` section: streamd as a Sparkplug B 3.0 edge node beside contract v1."""

from __future__ import annotations

from pydantic import Field, field_validator

from streamd.settings import StrictModel

FORBIDDEN = "+#/"
"""Sparkplug ids are MQTT topic levels: no separator, no wildcards."""


def _check_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must not be empty")
    bad = sorted({c for c in value if c in FORBIDDEN})
    if bad:
        raise ValueError(f"must not contain {' or '.join(repr(c) for c in bad)} (Sparkplug ids "
                         "are MQTT topic levels: no '/', '+' or '#')")
    return value


class SparkplugSettings(StrictModel):
    """Broker host, port, TLS, credentials and the outbox bound are the `mqtt:` section's;
    the edge node opens its own MQTT session on that broker, because its will (NDEATH) must
    be that session's last will."""

    enabled: bool = Field(True, description="Run the edge node (set false to keep the "
                          "section but not publish).")
    group_id: str = Field(description="Sparkplug group: the first level under spBv1.0/, "
                          "the folder a host such as Ignition's MQTT Engine shows the node in.")
    edge_node_id: str | None = Field(
        None, description="Edge node id (this daemon); default: the site.")
    primary_host_id: str | None = Field(
        None, description="Publish only while spBv1.0/STATE/<id> says online; store data "
        "meanwhile and send it, flagged historical, after the births.")
    client_id: str | None = Field(
        None, description="MQTT client id of the edge node session; default "
        "`<mqtt client id>-spb`.")
    idle_after_s: float = Field(
        2.0, gt=0, le=3600, description="Motion/Active and the object counts fall back to "
        "false and 0 when a camera sent no detections for this long (detections are only "
        "published for frames with motion or objects).")

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        return _check_id(v)
