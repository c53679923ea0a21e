"""The tflite backend on real frames with the real model: MobileNet-SSD v2 COCO (uint8) that
`engines/fetch_ssd.sh` puts in engines/ (scripts/setup.sh runs it), run by LiteRT.

What a subscriber would notice is checked on vtest.avi: people and the parked cars are found,
boxes are in frame pixels whether the model saw the whole frame or a crop, a blank frame gives
nothing, and a bad model file stops the daemon before it announces anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest
import yaml

from streamd.detect import DetectorService, create_detector, plan_regions
from streamd.detect.base import DetectorError
from streamd.detect.tflite import (
    DEFAULT_LABELS,
    DEFAULT_MODEL,
    FETCH_COMMAND,
    TFLiteDetector,
    TFLiteDetectorSettings,
    read_labels,
)
from streamd.detections import Detections
from streamd.frames import Frame, Image
from streamd.geometry import iou
from tests.helpers.contract import PREFIX, check_detection, wait_offline
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.procs import Daemon, daemon_config, run_cli
from tests.helpers.video import frame_at

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / DEFAULT_MODEL
LABELS = ROOT / DEFAULT_LABELS


@pytest.fixture(scope="module")
def ssd() -> dict[str, Any]:
    """Settings for the real model, or a failure that says how to fetch it."""
    if not (MODEL.is_file() and LABELS.is_file()):
        pytest.fail(f"{MODEL} missing: run {FETCH_COMMAND} (or ./scripts/setup.sh)",
                    pytrace=False)
    return {"backend": "tflite", "model": str(MODEL), "labels_file": str(LABELS)}


@pytest.fixture(scope="module")
def detector(ssd: dict[str, Any]) -> TFLiteDetector:
    return TFLiteDetector(TFLiteDetectorSettings(**ssd))


@pytest.fixture(scope="module")
def frame100(sample_video: Path) -> Image:
    return frame_at(sample_video, 100)


@pytest.fixture(scope="module")
def found100(detector: TFLiteDetector, frame100: Image) -> Detections:
    (dets,) = detector.detect([frame100])
    return dets


def of_label(dets: Detections, label: str) -> Detections:
    return dets[np.array([dets.label(i) == label for i in range(len(dets))], bool)]


def test_finds_people_in_vtest(found100: Detections, frame100: Image) -> None:
    h, w = frame100.shape[:2]
    people = of_label(found100, "person")
    assert (people.confidence >= 0.5).sum() >= 5, people.confidence
    assert (found100.confidence >= 0.5).all(), "confidence 0.5 is the default threshold"
    assert (found100.xyxy >= 0).all() and (found100.xyxy[:, [0, 2]] <= w).all() \
        and (found100.xyxy[:, [1, 3]] <= h).all(), found100.xyxy
    wh = people.xyxy[:, 2:] - people.xyxy[:, :2]
    assert (wh[:, 1] > wh[:, 0]).all(), f"a walking person is taller than wide: {wh}"
    assert (wh[:, 1] > 20).all() and (wh[:, 1] < h / 2).all(), wh


def test_finds_the_parked_car_on_the_right_edge(found100: Detections,
                                                frame100: Image) -> None:
    h, w = frame100.shape[:2]
    cars = of_label(found100, "car")
    right = cars.xyxy[(cars.xyxy[:, 2] >= w - 8) & (cars.xyxy[:, 0] > 0.85 * w)]
    assert len(right) == 1, cars.xyxy
    assert right[0][3] < h / 3, "the cars are parked at the top right of vtest"


@pytest.mark.parametrize(("value", "wh"), [(0, (768, 576)), (128, (768, 576)),
                                           (255, (300, 300)), (60, (40, 90))])
def test_blank_images_give_nothing(detector: TFLiteDetector, value: int,
                                   wh: tuple[int, int]) -> None:
    (dets,) = detector.detect([np.full((wh[1], wh[0], 3), value, np.uint8)])
    assert len(dets) == 0 and dets.labels == detector.labels


def test_a_crop_finds_what_the_whole_frame_finds(detector: TFLiteDetector, frame100: Image,
                                                 found100: Detections) -> None:
    """Each confident person, seen through the crop the service plans around it, comes back
    in frame pixels where the whole-frame pass put it."""
    h, w = frame100.shape[:2]
    people = of_label(found100, "person")
    people = people[people.confidence >= 0.8]
    assert len(people) >= 2, people.confidence
    with DetectorService(detector) as service:
        for box in people.xyxy:
            regions = plan_regions(box[None], (w, h), detector.input_size)
            assert (regions[0, 2] - regions[0, 0]) < w / 2, "a crop, not the frame"
            got = service.submit(Frame("cam", 1, time.time(), frame100), regions).result(30)
            got = of_label(got, "person")
            assert len(got), f"nothing found in the crop {regions[0]} around {box}"
            assert iou(box[None], got.xyxy).max() >= 0.5, (box, got.xyxy)


def test_a_batch_matches_single_images(detector: TFLiteDetector, frame100: Image) -> None:
    images = [frame100, frame100[100:400, 300:700], frame100[:, ::-1].copy()]
    together = detector.detect(images)
    for image, batched in zip(images, together, strict=True):
        (alone,) = detector.detect([image])
        np.testing.assert_allclose(batched.xyxy, alone.xyxy)
        np.testing.assert_array_equal(batched.class_id, alone.class_id)


def test_class_filter(ssd: dict[str, Any], frame100: Image) -> None:
    det = create_detector(TFLiteDetectorSettings(**ssd, classes=["car"]))
    assert det is not None
    (dets,) = det.detect([frame100])
    assert len(dets) >= 1 and {dets.label(i) for i in range(len(dets))} == {"car"}
    with pytest.raises(DetectorError, match="'persn' not among"):
        TFLiteDetector(TFLiteDetectorSettings(**ssd, classes=["persn"]))


@pytest.mark.parametrize(("text", "expected"), [
    ("0  person\n2  car\n\n89  toothbrush", {0: "person", 2: "car", 89: "toothbrush"}),
    ("person\nbicycle\n", {0: "person", 1: "bicycle"}),
    ("7: traffic light\n", {7: "traffic light"}),
    ("0\tperson\n1\tn/a\n2\tcar\n", {0: "person", 2: "car"}),
    ("", {}),
])
def test_read_labels(tmp_path: Path, text: str, expected: dict[int, str]) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    assert read_labels(path) == expected


def test_labels_with_gaps_map_model_ids(ssd: dict[str, Any], found100: Detections) -> None:
    table = read_labels(LABELS)
    assert table[0] == "person" and table[2] == "car" and 11 not in table
    assert found100.labels == tuple(table[k] for k in sorted(table))
    labels = {found100.label(i) for i in range(len(found100))}
    assert {"person", "car"} <= labels, labels


def tiny_model(path: Path, shape: list[int], uint8: bool) -> Path:
    """A valid TFLite file with one input and no operators (output = input), written with
    LiteRT's own flatbuffer schema: loadable, but not an SSD."""
    from ai_edge_litert import schema_py_generated as schema

    tensor = schema.TensorT()
    tensor.shape, tensor.buffer, tensor.name = shape, 0, b"image"
    tensor.type = schema.TensorType.UINT8 if uint8 else schema.TensorType.FLOAT32
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor], [0], [0], []
    model = schema.ModelT()
    model.version, model.buffers, model.subgraphs = 3, [schema.BufferT()], [graph]
    model.operatorCodes = []
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def bad_models(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.tflite"
    text.write_text("this is not a model")
    return {
        "not TFLite": text,
        "float input": tiny_model(tmp_path / "float.tflite", [1, 64, 64, 3], uint8=False),
        "not an SSD": tiny_model(tmp_path / "plain.tflite", [1, 300, 300, 3], uint8=True),
        "missing": tmp_path / "nowhere.tflite",
    }


@pytest.mark.parametrize(("case", "message"), [
    ("not TFLite", "is not a loadable TFLite model"),
    ("float input", r"expected one uint8 input \[1, H, W, 3\]"),
    ("not an SSD", r"outputs \[\[1, 300, 300, 3\]\]; expected boxes"),
    ("missing", "does not exist"),
])
def test_bad_model_files(tmp_path: Path, ssd: dict[str, Any], case: str, message: str) -> None:
    path = bad_models(tmp_path)[case]
    with pytest.raises(DetectorError, match=message) as info:
        create_detector(TFLiteDetectorSettings(**{**ssd, "model": str(path)}))
    assert str(path) in str(info.value)


def test_check_names_the_missing_model_and_the_fetch_command(tmp_path: Path) -> None:
    """The default detector is this backend: a config without `detector:` in a directory
    without engines/ fails `streamd check` with the key and the command that fetches it."""
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"site": "s", "cameras": [{"name": "c", "url": str(video)}]}))
    res = run_cli(["check", "-c", str(cfg)], cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    line = next(ln for ln in out.splitlines() if "detector.model:" in ln)
    assert str(DEFAULT_MODEL) in line and FETCH_COMMAND in line, line
    assert any("detector.labels_file:" in ln for ln in out.splitlines()), out


# -- the daemon end to end -----------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.timeout(120)
def test_daemon_publishes_people_and_cars(
        tmp_path: Path, ssd: dict[str, Any], sample_video: Path, mosquitto: Mosquitto,
        collector: Callable[..., Collector], daemon: Callable[..., Daemon]) -> None:
    sub = collector(f"{PREFIX}/#")
    cfg = daemon_config(mosquitto.port, [{"name": "vtest", "url": str(sample_video)}],
                        tmp_path / "state", detector={**ssd, "full_frame_every": 5})
    d = daemon(cfg, "--max-frames", "20")
    assert d.wait(100) == 0, d.logs()
    wait_offline(sub)
    dets = [check_detection(m, "vtest") for m in sub.messages(f"{PREFIX}/vtest/detections")]
    objects = [o for p in dets for o in p["objects"]]
    labels = [o["label"] for o in objects]
    assert labels.count("person") >= 20 and "car" in labels, sorted(set(labels))
    assert all(o["score"] >= 0.5 for o in objects)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_bad_model_stops_run_before_anything_starts(
        tmp_path: Path, ssd: dict[str, Any], sample_video: Path, mosquitto: Mosquitto,
        collector: Callable[..., Collector], daemon: Callable[..., Daemon]) -> None:
    sub = collector("#")
    bad = tiny_model(tmp_path / "wrong-input.tflite", [1, 64, 64, 3], uint8=False)
    cfg = daemon_config(mosquitto.port, [{"name": "vtest", "url": str(sample_video)}],
                        tmp_path / "state", detector={**ssd, "model": str(bad)})
    d = daemon(cfg)
    assert d.wait(30) == 1, d.logs()
    assert "cannot start" in d.output and "wrong-input.tflite" in d.output \
        and "uint8 input" in d.output, d.logs()
    assert "Traceback" not in d.output
    time.sleep(0.5)  # a stray connection would show by now
    assert not sub.messages(), sub.summary()
    assert mosquitto.log_text().count("New client connected") == 1, \
        f"only the test's subscriber may connect:\n{mosquitto.log_text()}"
