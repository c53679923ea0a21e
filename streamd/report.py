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
from streamd.contract import CameraState, Kind
from streamd.describe.service import DescriberService
from streamd.detect import DetectorService
from streamd.metrics import CameraFigures, Figures
from streamd.pipeline import Camera
from streamd.publish import Publisher


class Report:
    """Reads the fleet's figures; `detector` and `describer` are set once they exist."""

    def __init__(self, publisher: Publisher, cameras: Callable[[], Mapping[str, Camera]]
                 ) -> None:
        self._publisher = publisher
        self._cameras = cameras
        self.detector: DetectorService | None = None
        self.describer: DescriberService | None = None
        self._last_stats_mono = time.monotonic()
        self._last_frames_in: dict[str, int] = {}

    def forget(self, camera: str) -> None:
        """A camera left (reload): its rates restart from zero if it comes back."""
        self._last_frames_in.pop(camera, None)

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
        if self.describer is not None:
            shared["describer"] = self.describer.snapshot()
        for name, camera in list(self._cameras().items()):
            pipe, cap = camera.pipeline, camera.capture
            frames, stage_ms = pipe.times.take()
            st = cap.stats
            last = self._last_frames_in.get(name, 0)
            self._last_frames_in[name] = st.frames_read
            payload = contract.stats(
                state=cap.state, interval_s=elapsed, frames=frames,
                frames_analysed=pipe.analysed, stage_ms=stage_ms,
                latency_ms=pub.latency[name].percentiles(), dropped=pipe.slot.dropped,
                frames_read=st.frames_read, fps_in=(st.frames_read - last) / elapsed,
                skipped=st.skipped, decode_errors=st.decode_errors,
                reconnects=st.reconnects, analysis_errors=pipe.failures.total, shared=shared)
            pub.publish_camera(name, Kind.STATS, payload, qos=pub.settings.mqtt.stats_qos)

    def figures(self) -> Figures:
        """Cumulative figures for the Prometheus endpoint (read at scrape time)."""
        cams = {}
        for name, camera in list(self._cameras().items()):
            st, pipe = camera.capture.stats, camera.pipeline
            frames, stage_ms = pipe.times.totals()
            cams[name] = CameraFigures(
                state=camera.capture.state, frames_in=st.frames_read, frames_analysed=frames,
                dropped=pipe.slot.dropped, skipped=st.skipped, decode_errors=st.decode_errors,
                reconnects=st.reconnects, stage_ms={"decode": st.decode_ms, **stage_ms},
                latency_ms=self._publisher.latency[name].percentiles(),
                analysis_errors=pipe.failures.total)
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
