"""The MQTT contract v1 in one place: kinds and their drop order, states, payload builders."""

from __future__ import annotations

import json

import numpy as np

from streamd import contract
from streamd.contract import DROP_ORDER, CameraState, Kind
from streamd.detections import Detections
from streamd.motion import Rois
from streamd.outbox import Outbox
from tests.factories import frame


def test_every_kind_has_a_drop_rank_and_status_is_never_dropped() -> None:
    assert DROP_ORDER == (Kind.SNAPSHOT, Kind.STATS, Kind.DETECTIONS, Kind.DESCRIPTIONS)
    assert Kind.STATUS.drop_rank is None
    assert set(DROP_ORDER) | {Kind.STATUS} == set(Kind)


def test_the_outbox_drops_by_the_contract_order() -> None:
    box = Outbox(":memory:", 5, 10**6)
    for kind in (Kind.STATUS, *reversed(DROP_ORDER)):
        box.put("t", kind.value.encode(), 1, False, kind, "cam", 0)
    for _ in range(len(DROP_ORDER)):
        box.put("t", b"d", 1, False, Kind.DETECTIONS, "cam", 0)
    # snapshot, then stats, then detections (old and new) go; descriptions and status stay
    assert dict(box.dropped) == {"snapshot": 1, "stats": 1, "detections": 2}
    assert [r.kind for r in box.after(0, 10)][:2] == ["status", "descriptions"]
    box.close()


def test_state_values_are_the_documented_ones() -> None:
    assert [s.value for s in CameraState] == ["starting", "streaming", "reconnecting",
                                              "ended", "stopped"]


def test_detections_payload() -> None:
    f = frame(frame_id=42, wh=(320, 240))
    rois = Rois(np.array([[1, 2, 30, 40]]), np.array([1.234]), np.array([[0.5, 0.0]]))
    dets = Detections(np.array([[10.4, 20.6, 50.0, 90.0]]), np.array([0.87654]),
                      np.array([0]), np.array([3]), labels=("person",))
    p = contract.detections(f, rois, dets)
    assert p == {"frame_id": 42, "ts": round(f.ts, 6), "pts": f.pts, "width": 320,
                 "height": 240, "rois": [{"box": [1, 2, 30, 40], "motion": 1.23}],
                 "objects": [{"id": 3, "label": "person", "score": 0.877,
                              "box": [10, 21, 50, 90]}]}
    empty = contract.detections(f, Rois.empty(), Detections.empty())
    assert empty["rois"] == [] and empty["objects"] == []


def test_envelope_status_and_encoding() -> None:
    body = contract.stamp("cam", {"frame_id": np.int64(5), "xs": np.arange(2)}, 9)
    assert json.loads(contract.encode(body)) == {"v": 1, "camera": "cam", "frame_id": 5,
                                                  "xs": [0, 1], "seq": 9}
    st = contract.status("cam", CameraState.RECONNECTING, "rtsp://a:secret@h/x down")
    assert st["state"] == "reconnecting" and "secret" not in st["reason"]
    assert contract.status("cam", CameraState.STREAMING, None)["reason"] is None
    assert contract.camera_topic("p", "cam", Kind.STATS) == "p/cam/stats"
