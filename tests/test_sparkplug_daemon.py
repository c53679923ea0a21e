"""`streamd run` with a `sparkplug:` section, as an operator runs it, against real mosquitto.

One daemon goes through the life a SCADA host sees: births, data at capture time (checked
against the contract-v1 detections of the same frames), a SIGHUP that removes a camera, a
rebirth on request, and a kill -9 whose NDEATH the broker delivers. The host decodes with
Google's protobuf (tests/helpers/sparkplug.py), independently of the daemon's encoder.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import Daemon, daemon_config
from tests.helpers.sparkplug import PrimaryHost, assert_seq_continuous, value

pytestmark = pytest.mark.integration

GROUP, NODE = "plant", "line-3"
FRAME_METRICS = ("Motion/Active", "Objects/", "Last Detection Time")


def test_daemon_as_edge_node(mosquitto: Mosquitto, collector: Callable[..., Collector],
                             daemon: Callable[..., Daemon], sample_video: Path,
                             tmp_path: Path) -> None:
    contract = collector("streamd/test/+/detections")
    with PrimaryHost(mosquitto.host, mosquitto.port, GROUP, NODE) as host:
        cameras: list[dict[str, Any]] = [
            {"name": name, "url": str(sample_video), "realtime": True, "loop": True, "fps": 3}
            for name in ("cam1", "cam2")]
        config = daemon_config(mosquitto.port, cameras, tmp_path / "state",
                               detector={"backend": "hog"})
        config["sparkplug"] = {"group_id": GROUP, "edge_node_id": NODE, "idle_after_s": 60}
        d = daemon(config)

        nbirth = host.wait("NBIRTH", timeout_s=60)[0]
        births = host.wait("DBIRTH", 2)
        assert {b.device for b in births} == {"cam1", "cam2"}
        assert value(nbirth.metrics()["Properties/Detector Backend"]) == "hog"
        assert all("Objects/person" in b.metrics() for b in births)  # HOG's one label

        def detected(_c: Collector) -> list[Any] | None:
            got = [m for m in host.messages("DDATA") if m.device == "cam1" and any(
                host.name("cam1", x) == "Last Detection Time" for x in m.payload.metrics)]
            return got if len(got) >= 2 else None

        host.collector.wait_for(detected, 60, "DDATA with a detection time")
        stamped: set[int] = set()
        for m in host.messages("DDATA"):
            for x in m.payload.metrics:
                name = host.name(m.device, x)
                if m.device == "cam1" and name.startswith(FRAME_METRICS):
                    stamped.add(x.timestamp)
                if name == "Last Detection Time":
                    assert value(x) == x.timestamp

        def frames(c: Collector) -> set[int] | None:  # the contract side may lag a little
            ts_ms = {round(m.json["ts"] * 1000) for m in c.messages("/cam1/detections")}
            return ts_ms if stamped <= ts_ms else None

        contract.wait_for(frames, 10, f"detections with ts {sorted(stamped)} (ms)")
        checked = len(stamped)
        assert checked >= 2

        mark = host.cursor()
        config["cameras"] = cameras[:1]
        d.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        d.send_signal(signal.SIGHUP)
        host.wait("DDEATH", start=mark, device="cam2", timeout_s=20)
        count = host.wait("NDATA", start=mark)[0]
        assert value(count.payload.metrics[0]) == 1

        mark = host.cursor()
        host.rebirth()
        reborn = host.wait("NBIRTH", start=mark)[0]
        host.wait("DBIRTH", start=mark, device="cam1")
        host.collector.wait_for(lambda _c: host.messages("DDATA", start=reborn.index), 20,
                                "data after the rebirth")
        assert {b.device for b in host.messages("DBIRTH", start=mark)} == {"cam1"}
        assert value(reborn.metrics()["bdSeq"]) == value(nbirth.metrics()["bdSeq"])

        d.kill()  # SIGKILL: no goodbye, the broker publishes the will
        death = host.wait("NDEATH", timeout_s=15)[0]
        assert value(death.metrics()["bdSeq"]) == value(nbirth.metrics()["bdSeq"])
        msgs = host.messages()
        assert_seq_continuous(msgs)
        print(f"sparkplug messages seen: {host.counts()}")
