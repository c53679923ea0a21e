"""The Sparkplug B edge node against real mosquitto, checked by an independent decoder.

The node is driven the way the publisher drives it: its listener is called with contract-v1
payloads (camera, kind, payload). A test primary host (tests/helpers/sparkplug.py) decodes
every message with Google's protobuf runtime and a .proto of its own, and sends commands.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from streamd import cli
from streamd.contract import Kind
from streamd.mqtt import MQTTSettings
from streamd.sparkplug import codec
from streamd.sparkplug.node import EdgeNode, NodeInfo
from streamd.sparkplug.settings import SparkplugSettings
from tests.helpers.mqtt import Mosquitto
from tests.helpers.procs import die_with_parent, free_port
from tests.helpers.sparkplug import (
    BOOLEAN,
    PrimaryHost,
    assert_seq_continuous,
    decode,
    schema,
    value,
)

pytestmark = pytest.mark.integration

GROUP, NODE = "plant", "streamd-test"
LABELS = ("person", "car")
DEVICE_METRICS = {"State", "Stats/FPS Analysed", "Stats/Frames Dropped",
                  "Stats/Latency p99 ms", "Motion/Active", "Last Description",
                  "Last Detection Time", "Snapshot/Request"}


def detections(camera: str, frame_id: int, ts: float, labels: Sequence[str]) -> dict[str, Any]:
    """A contract-v1 detections payload as the publisher hands it to listeners."""
    return {"v": 1, "camera": camera, "frame_id": frame_id, "ts": round(ts, 6), "pts": None,
            "width": 640, "height": 480, "rois": [{"box": [10, 10, 200, 300], "motion": 2.5}],
            "objects": [{"id": i + 1, "label": lb, "score": 0.9, "box": [10, 10, 200, 300]}
                        for i, lb in enumerate(labels)],
            "seq": frame_id}


def status(camera: str, state: str) -> dict[str, Any]:
    return {"v": 1, "camera": camera, "state": state, "since": round(time.time(), 6),
            "reason": None}


def ms(ts: float) -> int:
    return round(round(ts, 6) * 1000)


@pytest.fixture
def node_factory(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Callable[..., EdgeNode]]:
    made: list[EdgeNode] = []

    def make(*, primary: str | None = None, cameras: Sequence[str] = ("cam1", "cam2"),
             snapshots: list[str] | None = None, idle_after_s: float = 60.0) -> EdgeNode:
        node = EdgeNode(
            SparkplugSettings(group_id=GROUP, primary_host_id=primary,
                              idle_after_s=idle_after_s),
            MQTTSettings(host=mosquitto.host, port=mosquitto.port, keepalive_s=5), None,
            edge_node_id=NODE, client_id=f"spb-test-{len(made)}",
            state_dir=tmp_path / "state", info=NodeInfo("9.9.9", "hog", "builtin"),
            labels=LABELS, cameras=cameras,
            request_snapshot=snapshots.append if snapshots is not None else None)
        made.append(node)
        return node.start()

    yield make
    for node in made:
        node.stop()


@pytest.fixture
def host(mosquitto: Mosquitto) -> Iterator[PrimaryHost]:
    with PrimaryHost(mosquitto.host, mosquitto.port, GROUP, NODE, host_id="scada") as h:
        yield h
        print(f"sparkplug messages seen: {h.counts()}")


# -- codec: the daemon's encoder against protobuf ------------------------------------------


@pytest.mark.parametrize(("datatype", "val", "field", "expected"), [
    (codec.DataType.INT32, 7, "int_value", 7),
    (codec.DataType.INT32, -2, "int_value", 2**32 - 2),  # Sparkplug: two's complement uint32
    (codec.DataType.UINT64, 2**63 + 5, "long_value", 2**63 + 5),
    (codec.DataType.DATETIME, 1_700_000_000_123, "long_value", 1_700_000_000_123),
    (codec.DataType.FLOAT, 12.5, "float_value", 12.5),
    (codec.DataType.DOUBLE, 0.1, "double_value", 0.1),
    (codec.DataType.BOOLEAN, True, "boolean_value", True),
    (codec.DataType.BOOLEAN, False, "boolean_value", False),
    (codec.DataType.STRING, "", "string_value", ""),
    (codec.DataType.STRING, "ein Fußgänger 🚶", "string_value", "ein Fußgänger 🚶"),
    (codec.DataType.STRING, None, None, None),
])
def test_codec_matches_protobuf(datatype: codec.DataType, val: Any, field: str | None,
                                expected: Any) -> None:
    metric = codec.Metric("a/b", datatype, val, alias=300, timestamp_ms=1_700_000_000_456,
                          is_historical=True)
    p = decode(codec.encode_payload([metric], 1_700_000_000_999, seq=255))
    assert (p.timestamp, p.seq, len(p.metrics)) == (1_700_000_000_999, 255, 1)
    m = p.metrics[0]
    assert (m.name, m.alias, m.timestamp, m.datatype) == ("a/b", 300, 1_700_000_000_456,
                                                          int(datatype))
    assert m.is_historical and m.is_null == (val is None)
    assert m.WhichOneof("value") == field
    if field is not None:
        assert getattr(m, field) == expected
    # and back: what protobuf writes, the daemon reads (commands come this way)
    back = codec.decode_payload(p.SerializeToString()).metrics[0]
    assert back.name == "a/b" and back.alias == 300
    if datatype in (codec.DataType.BOOLEAN, codec.DataType.STRING, codec.DataType.FLOAT):
        assert back.value == val


def test_ndeath_has_no_seq() -> None:
    p = decode(codec.encode_payload([codec.Metric("bdSeq", codec.DataType.UINT64, 3)], 1, None))
    assert not p.HasField("seq") and value(p.metrics[0]) == 3


# -- the node against mosquitto --------------------------------------------------------------


def test_births_then_data_by_exception_at_capture_time(
        node_factory: Callable[..., EdgeNode], host: PrimaryHost) -> None:
    node = node_factory()
    nbirth = host.wait("NBIRTH")[0]
    births = host.wait("DBIRTH", 2)
    metrics = nbirth.metrics()
    assert value(metrics["bdSeq"]) == 0 and value(metrics["Node Control/Rebirth"]) is False
    assert value(metrics["Properties/streamd Version"]) == "9.9.9"
    assert value(metrics["Properties/Detector Backend"]) == "hog"
    assert value(metrics["Properties/Camera Count"]) == 2
    for birth in births:
        declared = birth.metrics()
        assert set(declared) == DEVICE_METRICS | {"Objects/person", "Objects/car"}
        assert all(m.HasField("alias") and m.HasField("datatype") for m in declared.values())
    aliases = [m.alias for b in [nbirth, *births] for m in b.payload.metrics]
    assert len(aliases) == len(set(aliases)), "aliases are unique across the node"

    t0 = time.time()
    frames = [(1, ["person"]), (2, ["person"]), (3, ["person", "person", "car"]), (4, [])]
    for fid, labels in frames:
        node.listener("cam1", Kind.DETECTIONS, detections("cam1", fid, t0 + fid / 10, labels))
    node.listener("cam1", Kind.DESCRIPTIONS, {"v": 1, "camera": "cam1", "frame_id": 3,
                                              "ts": round(t0 + 0.3, 6), "object_id": 1,
                                              "text": "a person in a red coat", "seq": 1})
    node.listener("cam1", Kind.STATS, {"v": 1, "camera": "cam1", "ts": round(t0 + 1, 6),
                                       "state": "streaming", "fps_analysed": 9.5,
                                       "dropped": 3, "latency_ms": {"p99": 41.5}, "seq": 1})
    data = host.wait("DDATA", 5, device="cam1")
    for m in data:
        assert all(not x.HasField("name") and x.HasField("alias") for x in m.payload.metrics)
    named = [{host.name("cam1", x): (value(x), x.timestamp) for x in m.payload.metrics}
             for m in data]
    # frame 1: motion, one person, the detection time — all at frame 1's capture time
    assert named[0] == {"Motion/Active": (True, ms(t0 + 0.1)),
                        "Objects/person": (1, ms(t0 + 0.1)),
                        "Last Detection Time": (ms(t0 + 0.1), ms(t0 + 0.1))}
    # frame 2: only the detection time changed (by exception)
    assert named[1] == {"Last Detection Time": (ms(t0 + 0.2), ms(t0 + 0.2))}
    assert named[2] == {"Objects/person": (2, ms(t0 + 0.3)), "Objects/car": (1, ms(t0 + 0.3)),
                        "Last Detection Time": (ms(t0 + 0.3), ms(t0 + 0.3))}
    assert named[3] == {"Objects/person": (0, ms(t0 + 0.4)), "Objects/car": (0, ms(t0 + 0.4))}
    assert named[4] == {"Last Description": ("a person in a red coat", ms(t0 + 0.3))}
    stats = host.wait("DDATA", 6, device="cam1")[5]
    assert {host.name("cam1", x): value(x) for x in stats.payload.metrics} == {
        "Stats/FPS Analysed": 9.5, "Stats/Frames Dropped": 3, "Stats/Latency p99 ms": 41.5,
        "State": "streaming"}
    all_msgs = host.messages()
    first_data = min(m.index for m in all_msgs if m.type == "DDATA")
    assert all_msgs[0].type == "NBIRTH"
    assert max(m.index for m in all_msgs if m.type == "DBIRTH") < first_data
    assert_seq_continuous(all_msgs)


def test_seq_wraps_at_255(node_factory: Callable[..., EdgeNode], host: PrimaryHost) -> None:
    node = node_factory(cameras=("cam1",))
    host.wait("DBIRTH")
    t0 = time.time()
    for fid in range(1, 301):  # alternating counts: every frame is a DDATA
        node.listener("cam1", Kind.DETECTIONS,
                      detections("cam1", fid, t0 + fid / 100, ["person"] * (1 + fid % 2)))
    data = host.wait("DDATA", 300, timeout_s=20)
    msgs = host.messages()
    assert assert_seq_continuous(msgs) == 1
    assert [m.seq for m in msgs[:3]] == [0, 1, 2]  # NBIRTH, DBIRTH, first DDATA
    assert [m.metrics() for m in data][-1]  # the last frame arrived too
    stamps = [x.timestamp for m in data for x in m.payload.metrics]
    assert stamps == sorted(stamps)


def test_idle_camera_falls_back_to_no_motion(node_factory: Callable[..., EdgeNode],
                                             host: PrimaryHost) -> None:
    node = node_factory(cameras=("cam1",), idle_after_s=0.3)
    host.wait("DBIRTH")
    node.listener("cam1", Kind.DETECTIONS, detections("cam1", 1, time.time(), ["car"]))
    quiet = host.wait("DDATA", 2)[1]
    assert {host.name("cam1", x): value(x) for x in quiet.payload.metrics} == {
        "Motion/Active": False, "Objects/car": 0}


def test_rebirth_on_ncmd_new_label_and_snapshot_dcmd(
        node_factory: Callable[..., EdgeNode], host: PrimaryHost) -> None:
    snapshots: list[str] = []
    node = node_factory(snapshots=snapshots)
    first = host.wait("NBIRTH")[0]
    host.wait("DBIRTH", 2)
    mark = host.cursor()
    host.rebirth()
    again = host.wait("NBIRTH", start=mark)[0]
    host.wait("DBIRTH", 2, start=mark)
    assert again.seq == 0
    assert value(again.metrics()["bdSeq"]) == value(first.metrics()["bdSeq"])  # same session

    mark = host.cursor()
    t0 = time.time()
    node.listener("cam2", Kind.DETECTIONS, detections("cam2", 1, t0, ["dog"]))
    host.wait("NBIRTH", start=mark)
    births = host.wait("DBIRTH", 2, start=mark)
    assert all("Objects/dog" in b.metrics() for b in births)
    ddata = host.wait("DDATA", start=mark, device="cam2")[0]
    assert ddata.index > max(b.index for b in births), "the new label was declared first"
    got = {host.name("cam2", x): value(x) for x in ddata.payload.metrics}
    assert got["Objects/dog"] == 1

    host.dcmd("cam1", "Snapshot/Request", True)
    host.dcmd("cam2", "Snapshot/Request", False)  # false asks for nothing
    host.dcmd("cam2", "Snapshot/Request", True, by_alias=True)
    host.collector.wait_for(lambda _c: len(snapshots) >= 2, 5, "the snapshot callable")
    assert snapshots == ["cam1", "cam2"]
    mark = host.cursor()
    host.rebirth(by_alias=True)
    host.wait("DBIRTH", 2, start=mark)
    assert_seq_continuous(host.messages())


def test_ddeath_on_removal_and_end_ndeath_on_stop(
        node_factory: Callable[..., EdgeNode], host: PrimaryHost) -> None:
    node = node_factory()
    nbirth = host.wait("NBIRTH")[0]
    host.wait("DBIRTH", 2)
    node.listener("cam1", Kind.STATUS, status("cam1", "streaming"))
    node.remove_camera("cam2")
    node.listener("cam2", Kind.STATUS, status("cam2", "stopped"))  # late: ignored
    dd2 = host.wait("DDEATH", device="cam2")[0]
    count = host.wait("NDATA")[0]
    assert value(count.payload.metrics[0]) == 1
    node.listener("cam1", Kind.STATUS, status("cam1", "ended"))
    dd1 = host.wait("DDEATH", device="cam1")[0]
    states = [value(x) for m in host.messages("DDATA") for x in m.payload.metrics]
    assert states == ["streaming", "ended"]
    assert len(dd1.payload.metrics) == 0 and dd2.seq is not None
    # dead: its stats are kept for the next birth but not sent; streaming again: reborn
    node.listener("cam1", Kind.STATS, {"v": 1, "camera": "cam1", "ts": time.time(),
                                       "state": "ended", "fps_analysed": 0.0, "seq": 2})
    node.listener("cam1", Kind.STATUS, status("cam1", "starting"))
    reborn = host.wait("DBIRTH", start=dd1.index, device="cam1")[0]
    host.wait("DDATA", start=reborn.index)
    assert value(reborn.metrics()["Stats/FPS Analysed"]) == 0.0
    assert [m.type for m in host.messages(start=dd1.index + 1)] == ["DBIRTH", "DDATA"]
    node.stop()
    death = host.wait("NDEATH")[0]
    assert value(death.metrics()["bdSeq"]) == value(nbirth.metrics()["bdSeq"])
    assert len(host.messages("DDEATH")) == 2
    assert_seq_continuous(host.messages())


def test_primary_host_outage_stores_and_forwards_historical(
        node_factory: Callable[..., EdgeNode], host: PrimaryHost, mosquitto: Mosquitto) -> None:
    node = node_factory(primary="scada", cameras=("cam1",))
    time.sleep(1.0)
    assert host.messages() == [], "nothing before the primary host is online"
    host.state(True)
    first = host.wait("NBIRTH")[0]
    host.wait("DBIRTH")
    t0 = time.time()
    stamps = [t0 + i / 10 for i in range(30)]

    def feed(ids: range) -> None:
        for i in ids:
            node.listener("cam1", Kind.DETECTIONS, detections("cam1", i + 1, stamps[i],
                                                             ["person"] * (1 + i % 2)))

    feed(range(0, 10))
    host.wait("DDATA", 10)
    host.state(False)
    host.wait("NDEATH")  # Sparkplug 3.0: the node ends its session when the host goes away
    feed(range(10, 15))
    mosquitto.restart(down_s=0.5)  # and the broker goes away too
    host.collector.wait_subscribed()
    feed(range(15, 20))
    time.sleep(1.5)
    assert host.messages("DDATA", start=0)[-1].index < host.messages("NDEATH")[0].index
    mark = host.cursor()
    host.state(True)  # retained STATE was lost with the broker: the host says it again
    nbirth = host.wait("NBIRTH", start=mark, timeout_s=15)[0]
    assert value(nbirth.metrics()["bdSeq"]) != value(first.metrics()["bdSeq"])
    host.wait("DDATA", 10, start=mark)
    feed(range(20, 30))
    data = host.wait("DDATA", 20, start=mark)
    assert host.wait("DBIRTH", start=mark)[0].index < data[0].index
    detected = [(x.timestamp, x.is_historical) for m in host.messages("DDATA") for x in
                m.payload.metrics if host.name("cam1", x) == "Last Detection Time"]
    assert [t for t, _ in detected] == [ms(t) for t in stamps], "nothing lost, order kept"
    assert [h for _, h in detected] == [False] * 10 + [True] * 10 + [False] * 10
    assert_seq_continuous(host.messages())
    host.collector.wait_for(lambda _c: len(node.outbox) == 0, 5, "the node's outbox empty")


def test_same_credentials_as_mqtt(mosquitto_bin: str, tmp_path: Path) -> None:
    """`mqtt.username` and the password from `mqtt.password_file` log the node in too."""
    with Mosquitto(free_port(), tmp_path / "auth", users={"ops": "s3cret"}) as broker:
        node = EdgeNode(
            SparkplugSettings(group_id=GROUP),
            MQTTSettings(host=broker.host, port=broker.port, username="ops"),
            SecretStr("s3cret"), edge_node_id=NODE, client_id="spb-auth",
            state_dir=tmp_path / "state", info=NodeInfo("9.9.9", "none", ""), labels=(),
            cameras=("cam1",))
        with PrimaryHost(broker.host, broker.port, GROUP, NODE, username="ops",
                         password="s3cret") as h, node:
            assert h.wait("DBIRTH", timeout_s=10)[0].device == "cam1"


CHILD = """
import sys, time
from pathlib import Path
from streamd.mqtt import MQTTSettings
from streamd.sparkplug.node import EdgeNode, NodeInfo
from streamd.sparkplug.settings import SparkplugSettings
port, state = int(sys.argv[1]), Path(sys.argv[2])
EdgeNode(SparkplugSettings(group_id="plant"), MQTTSettings(port=port, keepalive_s=5), None,
         edge_node_id="streamd-test", client_id="spb-child", state_dir=state,
         info=NodeInfo("9.9.9", "hog", "builtin"), labels=["person"], cameras=["cam1"]).start()
time.sleep(120)
"""


def test_kill9_broker_delivers_ndeath_will_with_birth_bdseq(
        host: PrimaryHost, mosquitto: Mosquitto, tmp_path: Path) -> None:
    bdseqs = []
    for _ in range(2):  # a restarted node takes the next bdSeq (kept in the state dir)
        mark = host.cursor()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(mosquitto.port),
                                 str(tmp_path / "state")], preexec_fn=die_with_parent,
                                env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        try:
            nbirth = host.wait("NBIRTH", start=mark, timeout_s=20)[0]
            host.wait("DBIRTH", start=mark)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        death = host.wait("NDEATH", start=mark, timeout_s=15)[0]
        bdseqs.append(value(nbirth.metrics()["bdSeq"]))
        assert value(death.metrics()["bdSeq"]) == bdseqs[-1]
    assert bdseqs[1] == (bdseqs[0] + 1) % 256


def test_protobuf_schema_compiles_at_test_time() -> None:
    """The host's decoder is generated now from the test's own .proto (no generated code in
    the repository), so it cannot drift from a file nobody reads."""
    module = schema()
    assert module.Payload.DESCRIPTOR.fields_by_name["seq"].number == 3
    assert module.Payload.Metric.DESCRIPTOR.fields_by_name["boolean_value"].number == 14
    assert BOOLEAN == codec.DataType.BOOLEAN


@pytest.mark.parametrize(("section", "key", "why"), [
    ({"edge_node_id": "line-3"}, "sparkplug.group_id", "Field required"),
    ({"group_id": "plant+a"}, "sparkplug.group_id", "'+'"),
    ({"group_id": "plant", "edge_node_id": "node#1"}, "sparkplug.edge_node_id", "'#'"),
    ({"group_id": "plant", "primary_host_id": "scada/1"}, "sparkplug.primary_host_id", "'/'"),
    ({"group_id": "plant", "group": "x"}, "sparkplug.group", "unknown key"),
])
def test_check_rejects_bad_sparkplug_config(section: dict[str, str], key: str, why: str,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "streamd.yaml"
    config.write_text(yaml.safe_dump({
        "site": "plant-a", "detector": {"backend": "none"}, "sparkplug": section,
        "cameras": [{"name": "cam1", "url": "rtsp://127.0.0.1:1/x"}]}))
    assert cli.main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    line = next((ln for ln in err.splitlines() if f": {key}: " in ln), None)
    assert line is not None and why in line, err
