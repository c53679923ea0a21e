"""What the running stages report: the stats topic, the Prometheus figures, systemd's STATUS.

All three read the same counters from the stages (capture stats, the pipeline's stage
times and failures, the detector and describer services, the publisher), so a figure means
the same thing wherever an operator reads it. The payload layout is `contract.stats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from streamd import contract
from streamd.camera import Camera
from streamd.contract import CameraState, Kind
from streamd.describe.service import DescriberService
from streamd.detect import DetectorService
from streamd.detect.adaptive import RateBoard
from streamd.metrics import CameraFigures, Figures
from streamd.publish import Publisher
from streamd.shed import ShedGovernor


class Report:
    """Reads the fleet's figures; `detector`, `describer`, `rates` (the adaptive schedule's
    board) and `governor` (shedding) are set once they exist."""

    def __init__(self, publisher: Publisher, cameras: Callable[[], Mapping[str, Camera]]
                 ) -> None:
        self._publisher = publisher
        self._cameras = cameras
        self.detector: DetectorService | None = None
        self.describer: DescriberService | None = None
        self.rates: RateBoard | None = None
        self.governor: ShedGovernor | None = None
        self._last_stats_mono = time.monotonic()
        self._last_frames_in: dict[str, int] = {}
        self._last_runs: dict[str, int] = {}
        self._scraped: tuple[float, dict[str, int]] = (time.monotonic(), {})
        """When Prometheus last scraped, and each camera's detector runs then."""

    def forget(self, camera: str) -> None:
        """A camera left (reload): its rates restart from zero if it comes back."""
        self._last_frames_in.pop(camera, None)
        self._last_runs.pop(camera, None)
        if self.rates is not None:
            self.rates.remove(camera)
        if self.governor is not None:
            self.governor.forget(camera)

    def publish_stats(self) -> None:
        """Per camera: rates over the time since the last stats, totals since start."""
        now = time.monotonic()
        elapsed = max(now - self._last_stats_mono, 1e-3)
        self._last_stats_mono = now
        pub = self._publisher
        shared: dict[str, Any] = {"mqtt_pending": pub.pending,
                                  "mqtt_dropped": dict(pub.dropped)}
        d = self.detector
        if d is not None:
            shared["detector"] = {"batches": d.batches, "crops": d.crops,
                                  "last_batch_size": d.last_batch_size,
                                  "infer_ms": round(d.infer_ms_ema, 2),
                                  "errors": d.failures.counts()}
            if d.load is not None:
                shared["detector"].update(
                    ms_per_image=round(d.load.ms_per_image, 2),
                    utilisation=round(d.load.utilisation, 3),
                    capacity_ips=round(d.load.capacity_ips(), 1),
                    queued=d.queued_images)
        if self.governor is not None:
            shared["analysis_share"] = round(self.governor.factor, 3)
        rates = self.rates.rates() if self.rates is not None else {}
        if self.describer is not None:
            shared["describer"] = self.describer.snapshot()
        for name, camera in list(self._cameras().items()):
            pipe, cap = camera.pipeline, camera.capture
            frames, stage_ms = pipe.times.take()
            st = cap.stats
            last = self._last_frames_in.get(name, 0)
            self._last_frames_in[name] = st.frames_read
            runs, last_runs = pipe.detector_runs, self._last_runs.get(name, 0)
            self._last_runs[name] = runs
            payload = contract.stats(
                state=cap.state, interval_s=elapsed, frames=frames,
                frames_analysed=pipe.analysed, stage_ms=stage_ms,
                latency_ms=pub.latency[name].percentiles(), dropped=pipe.slot.dropped,
                frames_read=st.frames_read, fps_in=(st.frames_read - last) / elapsed,
                skipped=st.skipped, decode_errors=st.decode_errors,
                reconnects=st.reconnects, analysis_errors=pipe.failures.total, shared=shared,
                fps_detected=(runs - last_runs) / elapsed,
                detect_rate_hz=rates.get(name, 0.0) if self.rates is not None else None,
                detector_runs=runs, detector_deferred=pipe.deferred, shed=pipe.shed)
            pub.publish_camera(name, Kind.STATS, payload, qos=pub.settings.mqtt.stats_qos)

    def figures(self) -> Figures:
        """Cumulative figures for the Prometheus endpoint (read at scrape time)."""
        cams = {}
        now = time.monotonic()
        since, runs_then = self._scraped
        runs_now: dict[str, int] = {}
        rates = self.rates.rates() if self.rates is not None else {}
        for name, camera in list(self._cameras().items()):
            st, pipe = camera.capture.stats, camera.pipeline
            frames, stage_ms = pipe.times.totals()
            cams[name] = CameraFigures(
                state=camera.capture.state, frames_in=st.frames_read, frames_analysed=frames,
                dropped=pipe.slot.dropped, skipped=st.skipped, decode_errors=st.decode_errors,
                reconnects=st.reconnects, stage_ms={"decode": st.decode_ms, **stage_ms},
                latency_ms=self._publisher.latency[name].percentiles(),
                analysis_errors=pipe.failures.total, detector_runs=pipe.detector_runs,
                detector_deferred=pipe.deferred, shed=dict(pipe.shed),
                detect_hz=(pipe.detector_runs - runs_then.get(name, 0)) / max(now - since, 1e-3),
                detect_rate_hz=rates.get(name) if self.rates is not None else None)
            runs_now[name] = pipe.detector_runs
        self._scraped = (now, runs_now)
        d = self.detector
        described = self.describer.snapshot() if self.describer else {}
        pub = self._publisher
        return Figures(cams, pub.pending, dict(pub.dropped), pub.connected,
                       d.batches if d else 0, d.crops if d else 0,
                       d.failures.counts() if d else {},
                       {k: float(v) for k, v in described.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})

    def summary(self) -> str:
        """One line for `systemctl status`."""
        cameras = self._cameras()
        streaming = sum(c.capture.state is CameraState.STREAMING for c in cameras.values())
        fps = sum(c.pipeline.times.interval_frames for c in cameras.values()) / max(
            time.monotonic() - self._last_stats_mono, 1e-3)
        broker = "connected" if self._publisher.connected else "DISCONNECTED"
        return (f"{streaming}/{len(cameras)} cameras streaming, {fps:.1f} fps analysed, "
                f"broker {broker}, outbox {self._publisher.pending}")
