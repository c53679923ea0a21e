"""A Prometheus text endpoint, for operators who scrape instead of subscribe.

The figures are the ones the stats topic carries, read at scrape time from the running
stages (`snapshot()`), so nothing is counted twice and an idle endpoint costs nothing.
prometheus-client is an optional extra (`pip install streamd[metrics]`), imported only when
`metrics.prometheus_port` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from streamd.contract import CameraState
from streamd.settings import StrictModel

log = logging.getLogger(__name__)


class MetricsSettings(StrictModel):
    """`metrics:`: the optional Prometheus endpoint."""

    prometheus_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus text on this port (needs "
        "`pip install streamd[metrics]`); unset: no endpoint.")
    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 for all.")


@dataclass
class CameraFigures:
    """Cumulative figures of one camera since start."""

    state: CameraState
    frames_in: int
    frames_analysed: int
    dropped: int
    skipped: int
    decode_errors: int
    reconnects: int
    stage_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    analysis_errors: int = 0
    detector_runs: int = 0
    detector_deferred: int = 0
    shed: dict[str, int] = field(default_factory=dict)
    detect_hz: float = 0.0
    """Detector runs per second since the previous scrape."""
    detect_rate_hz: float | None = None
    """The adaptive schedule's allocated rate (None with a fixed `detector.interval`)."""


@dataclass
class Figures:
    cameras: dict[str, CameraFigures]
    mqtt_pending: int
    mqtt_dropped: dict[str, int]
    mqtt_connected: bool
    detector_batches: int = 0
    detector_crops: int = 0
    detector_errors: dict[str, int] = field(default_factory=dict)
    """Frames the detector failed on, by kind (exception class, `timeout`)."""
    describer: dict[str, float] = field(default_factory=dict)
    """The describer's numeric figures (offered, described, dropped, cache_hit_rate, …)."""


class MetricsError(Exception):
    """The endpoint could not start (extra missing, port taken)."""


class MetricsServer:
    """Serves /metrics on `host:port` from a thread of prometheus-client's; `close()` is
    idempotent."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Figures]) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:
            raise MetricsError("metrics.prometheus_port needs prometheus-client: "
                               "pip install streamd[metrics]") from exc
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(snapshot))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise MetricsError(f"metrics: cannot listen on {host}:{port}: {exc}") from exc
        log.info("prometheus metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(2)


class _Collector:
    def __init__(self, snapshot: Callable[[], Figures]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        f = self._snapshot()
        counters = {
            "frames_in": "Frames read from the source",
            "frames_analysed": "Frames analysed",
            "dropped": "Frames overwritten before analysis (live sources)",
            "skipped": "Frames skipped by the fps cap",
            "decode_errors": "Frames that failed to decode",
            "reconnects": "Source reconnects",
            "analysis_errors": "Frames whose analysis failed (logged once per kind)",
            "detector_runs": "Frames sent to the detector",
            "detector_deferred": "Due detector runs deferred: the detector's queue was full",
        }
        for key, doc in counters.items():
            m = CounterMetricFamily(f"streamd_{key}", doc, labels=["camera"])
            for name, cam in f.cameras.items():
                m.add_metric([name], getattr(cam, key))
            yield m
        stage = CounterMetricFamily("streamd_stage_seconds", "Time spent per stage",
                                    labels=["camera", "stage"])
        latency = GaugeMetricFamily("streamd_latency_ms", "Capture to publish latency over "
                                    "the last messages", labels=["camera", "quantile"])
        state = GaugeMetricFamily("streamd_camera_state", "1 for the camera's current state",
                                  labels=["camera", "state"])
        shed = CounterMetricFamily("streamd_shed", "Frames not analysed, by reason (cpu: "
                                   "motion could not keep up)", labels=["camera", "reason"])
        detect_hz = GaugeMetricFamily("streamd_detect_hz", "Detector runs per second since "
                                      "the previous scrape", labels=["camera"])
        allocated = GaugeMetricFamily("streamd_detect_rate_hz", "Detector rate the adaptive "
                                      "schedule allocated", labels=["camera"])
        for name, cam in f.cameras.items():
            for reason, n in cam.shed.items():
                shed.add_metric([name, reason], n)
            detect_hz.add_metric([name], cam.detect_hz)
            if cam.detect_rate_hz is not None:
                allocated.add_metric([name], cam.detect_rate_hz)
        yield from (shed, detect_hz, allocated)
        for name, cam in f.cameras.items():
            for key, ms in cam.stage_ms.items():
                stage.add_metric([name, key], ms / 1000.0)
            for q, v in (cam.latency_ms or {}).items():
                latency.add_metric([name, q], v)
            for s in CameraState:
                state.add_metric([name, s.value], float(cam.state is s))
        yield from (stage, latency, state)
        yield GaugeMetricFamily("streamd_mqtt_pending", "Messages not yet acknowledged",
                                value=f.mqtt_pending)
        yield GaugeMetricFamily("streamd_mqtt_connected", "1 while connected to the broker",
                                value=float(f.mqtt_connected))
        dropped = CounterMetricFamily("streamd_mqtt_dropped", "Messages dropped by the "
                                      "outbox bound", labels=["kind"])
        for kind, n in f.mqtt_dropped.items():
            dropped.add_metric([kind], n)
        yield dropped
        yield CounterMetricFamily("streamd_detector_batches", "Detector inference calls",
                                  value=f.detector_batches)
        yield CounterMetricFamily("streamd_detector_crops", "Images sent to the detector",
                                  value=f.detector_crops)
        errors = CounterMetricFamily("streamd_detector_errors", "Frames the detector failed "
                                     "on, by kind (exception class, timeout)", labels=["kind"])
        for kind, n in f.detector_errors.items():
            errors.add_metric([kind], n)
        yield errors
        describer = GaugeMetricFamily("streamd_describer", "Describer figures, as in the "
                                      "stats topic", labels=["figure"])
        for key, value in f.describer.items():
            describer.add_metric([key], value)
        yield describer
