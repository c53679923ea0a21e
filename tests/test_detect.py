"""Detector backends on real models and a real video, crop planning, and the shared service."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from streamd.detect import (
    Detector,
    DetectorError,
    DetectorService,
    ServiceStopped,
    create_detector,
    plan_regions,
)
from streamd.detect.base import NoDetectorSettings
from streamd.detect.hog import HOGDetectorSettings
from streamd.detect.onnxruntime import ONNXRuntimeDetectorSettings
from streamd.detect.yolo import COCO80
from streamd.detections import Detections
from streamd.frames import Frame, Image
from tests.helpers.video import frame_at

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_yolo_onnx",
                                                  ROOT / "engines" / "build_yolo_onnx.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def yolo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = load_builder().build(tmp_path_factory.mktemp("engines") / "yolov8n.onnx")
    return path


def onnx_settings(model: Path, **kw: Any) -> ONNXRuntimeDetectorSettings:
    return ONNXRuntimeDetectorSettings(backend="onnxruntime", model=model, **kw)


@pytest.fixture(scope="module")
def vtest_frame(sample_video: Path) -> Image:
    return frame_at(sample_video, 100)


def frame(image: Image, camera: str = "cam", frame_id: int = 1) -> Frame:
    return Frame(camera, frame_id, time.time(), image)


# --- the random YOLO model and the ONNX Runtime backend -------------------------------------


@pytest.mark.parametrize(("batch", "size"), [(1, 320), (3, 320), (1, 640)])
def test_built_model_has_ultralytics_layout(yolo_model: Path, batch: int, size: int) -> None:
    session = ort.InferenceSession(str(yolo_model), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).random((batch, 3, size, size), np.float32)
    (out,) = session.run(None, {"images": images})
    anchors = (size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2
    assert out.shape == (batch, 84, anchors)
    assert np.isfinite(out).all()
    scores = out[:, 4:]
    assert scores.min() >= 0 and scores.max() <= 1  # sigmoid already applied
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["task"] == "detect" and meta["stride"] == "32"
    assert meta["names"].startswith("{0: 'person', 1: 'bicycle', 2: 'car'")


def test_built_model_is_yolov8n_sized(yolo_model: Path) -> None:
    import onnx

    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(yolo_model)).graph.initializer)
    assert 3.0e6 < weights < 3.3e6


def test_onnxruntime_reads_names_and_detects(yolo_model: Path, vtest_frame: Image) -> None:
    det = create_detector(onnx_settings(yolo_model, confidence=0.05))
    assert det is not None
    assert det.labels == COCO80 and det.input_size == 320
    (dets,) = det.detect([vtest_frame])
    assert len(dets) > 0  # a random model, but one whose scores vary with the image
    h, w = vtest_frame.shape[:2]
    assert (dets.xyxy >= 0).all() and (dets.xyxy[:, [0, 2]] <= w).all()
    assert (dets.xyxy[:, [1, 3]] <= h).all()
    assert (dets.confidence > 0.05).all()
    assert dets.labels == COCO80 and (dets.class_id < 80).all()
    det.close()
    with pytest.raises(DetectorError, match="after close"):
        det.detect([vtest_frame])


def test_onnxruntime_batch_matches_single_images(yolo_model: Path, vtest_frame: Image) -> None:
    det = create_detector(onnx_settings(yolo_model, confidence=0.05, max_batch=2))
    assert det is not None
    images = [vtest_frame, vtest_frame[100:400, 200:500], vtest_frame[:, ::-1].copy()]
    batched = det.detect(images)  # 3 images, max_batch 2: split in two runs
    assert len(batched) == 3
    for image, together in zip(images, batched, strict=True):
        (alone,) = det.detect([image])
        assert len(alone) == len(together) > 0
        np.testing.assert_allclose(alone.xyxy, together.xyxy, atol=1e-3)
        np.testing.assert_allclose(alone.confidence, together.confidence, atol=1e-3)
        np.testing.assert_array_equal(alone.class_id, together.class_id)
    assert det.detect([]) == []


def test_onnxruntime_class_filter_and_label_override(yolo_model: Path,
                                                    vtest_frame: Image) -> None:
    det = create_detector(onnx_settings(yolo_model, confidence=0.01, classes=["person", "car"]))
    assert det is not None
    (dets,) = det.detect([vtest_frame])
    assert set(dets.class_id.tolist()) <= {0, 2}
    labels = [f"thing{i}" for i in range(80)]
    det = create_detector(onnx_settings(yolo_model, labels=labels))
    assert det is not None and det.labels == tuple(labels)


@pytest.mark.parametrize(("kw", "message"), [
    ({"classes": ["persn"]}, r"detector.classes: 'persn' not among the model's labels"),
    ({"labels": ["a", "b"]}, "detector.labels has 2 names; the model has 80 classes"),
])
def test_onnxruntime_config_errors(yolo_model: Path, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(DetectorError, match=message):
        create_detector(onnx_settings(yolo_model, **kw))


def test_onnxruntime_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match=r"detector.model: .*nope.onnx does not exist"):
        create_detector(onnx_settings(tmp_path / "nope.onnx"))


def test_onnxruntime_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf\n")
    with pytest.raises(DetectorError, match="is not a loadable ONNX model"):
        create_detector(onnx_settings(path))


def test_onnxruntime_rejects_a_non_yolo_output(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["output0"])], "pool",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 3, 1, 1])])
    path = tmp_path / "pool.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(DetectorError, match=r"outputs \[1, 3, 1, 1\]; expected \[N, 4\+C"):
        create_detector(onnx_settings(path))


def test_create_detector_none() -> None:
    assert create_detector(NoDetectorSettings(backend="none")) is None


# --- HOG ------------------------------------------------------------------------------------


def test_hog_finds_people_in_vtest(vtest_frame: Image) -> None:
    det = create_detector(HOGDetectorSettings(backend="hog"))
    assert det is not None and det.labels == ("person",)
    (dets,) = det.detect([vtest_frame])
    assert len(dets) >= 1
    assert {dets.label(i) for i in range(len(dets))} == {"person"}
    h, w = vtest_frame.shape[:2]
    x1, y1, x2, y2 = dets.xyxy.T
    assert ((x1 >= 0) & (x1 < x2) & (x2 <= w) & (y1 >= 0) & (y1 < y2) & (y2 <= h)).all()
    assert (y2 - y1 > x2 - x1).all()  # people stand upright


def test_hog_on_a_crop_reports_crop_pixels(vtest_frame: Image) -> None:
    det = create_detector(HOGDetectorSettings(backend="hog"))
    assert det is not None
    (full,) = det.detect([vtest_frame])
    x1, y1, x2, y2 = full.xyxy[0]
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    ox, oy = max(cx - 100, 0), max(cy - 150, 0)
    crop = vtest_frame[oy:oy + 300, ox:ox + 200]
    tiny = vtest_frame[:40, :30]  # smaller than the window: upscaled, not an error
    found, nothing = det.detect([crop, tiny])
    assert len(nothing) == 0
    assert len(found) >= 1
    best = found.xyxy[found.confidence.argmax()] + [ox, oy, ox, oy]
    assert abs((best[0] + best[2]) / 2 - cx) < 25 and abs((best[1] + best[3]) / 2 - cy) < 40


def test_hog_rejects_classes_it_does_not_know() -> None:
    with pytest.raises(DetectorError, match="'car' not among"):
        create_detector(HOGDetectorSettings(backend="hog", classes=["car"]))


# --- crop planning --------------------------------------------------------------------------


def _inside(inner: np.ndarray, outer: np.ndarray) -> bool:
    return bool((inner[:2] >= outer[:2]).all() and (inner[2:] <= outer[2:]).all())


@pytest.mark.parametrize(("rois", "frame_wh", "expected"), [
    ([], (768, 576), []),
    ([[100, 100, 140, 200]], (768, 576), [[40, 70, 200, 230]]),  # small ROI: 160 square
    ([[0, 0, 20, 20]], (768, 576), [[0, 0, 160, 160]]),  # corner: shifted inside
    ([[750, 560, 768, 576]], (768, 576), [[608, 416, 768, 576]]),  # far corner
    ([[100, 100, 500, 200]], (768, 576), [[100, 0, 500, 400]]),  # larger than input: square
    ([[10, 10, 50, 40]], (120, 90), [[0, 0, 120, 90]]),  # frame smaller than the region
    ([[100, 100, 140, 200], [110, 120, 150, 210]], (768, 576), [[37, 70, 213, 245]]),  # merged
    ([[0, 0, 40, 40], [600, 400, 640, 440]], (768, 576), [[0, 0, 160, 160],
                                                          [540, 340, 700, 500]]),
    ([[5, 5, 5, 50], [900, 900, 950, 950]], (768, 576), []),  # no area / outside the frame
])
def test_plan_regions(rois: list[list[int]], frame_wh: tuple[int, int],
                      expected: list[list[int]]) -> None:
    regions = plan_regions(np.array(rois, np.float32), frame_wh, 320)
    assert regions.dtype == np.int64 and regions.shape == (len(expected), 4)
    np.testing.assert_array_equal(regions, np.array(expected, np.int64).reshape(-1, 4))


def test_plan_regions_caps_the_count_and_keeps_every_roi() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [1900, 1060], (20, 2))
    rois = np.concatenate([xy, xy + rng.uniform(10, 60, (20, 2))], axis=1)
    regions = plan_regions(rois, (1920, 1080), 320, max_regions=4)
    assert 1 <= len(regions) <= 4
    assert (regions[:, :2] >= 0).all() and (regions[:, 2:] <= [1920, 1080]).all()
    for roi in np.clip(rois, 0, [1920, 1080, 1920, 1080]):  # some stick out of the frame
        assert any(_inside(roi, r) for r in regions), roi


# --- the shared service ---------------------------------------------------------------------


class WhiteBlobDetector:
    """Test double of `Detector`: finds the bounding box of pure-white pixels in each image,
    so the right answer in frame pixels is known wherever the crop was cut."""

    labels: tuple[str, ...] = ("blob",)
    input_size = 320

    def __init__(self, max_batch: int = 8, fail: bool = False,
                 gate: threading.Event | None = None) -> None:
        self.max_batch = max_batch
        self.calls: list[int] = []
        self.fail = fail
        self.gate = gate

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(len(images))
        if self.fail:
            raise ValueError("accelerator on fire")
        out = []
        for image in images:
            ys, xs = np.nonzero((image == 255).all(axis=2))
            if len(xs) == 0:
                out.append(Detections.empty(self.labels))
                continue
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
            out.append(Detections(np.array(box, np.float32), np.array([0.9]), np.array([0]),
                                  labels=self.labels))
        return out

    def close(self) -> None:
        pass


def blob_image(box: tuple[int, int, int, int], wh: tuple[int, int] = (640, 480)) -> Image:
    image = np.zeros((wh[1], wh[0], 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


def test_fake_detector_satisfies_the_protocol() -> None:
    det: Detector = WhiteBlobDetector()
    assert det.max_batch == 8


def test_service_batches_two_cameras_into_one_call() -> None:
    det = WhiteBlobDetector(max_batch=3)
    gate = threading.Barrier(2)
    futures: dict[str, Future[Detections]] = {}

    def camera(name: str, regions: list[list[int]]) -> None:
        f = frame(blob_image((300, 200, 340, 280)), camera=name)
        gate.wait()
        futures[name] = service.submit(f, np.array(regions))

    # A long wait: only a full batch (3 crops) may end it early, which proves both cameras'
    # requests went into the one detector call.
    with DetectorService(det, batch_wait_ms=2000) as service:
        threads = [threading.Thread(target=camera, args=("a", [[0, 0, 640, 480]])),
                   threading.Thread(target=camera, args=("b", [[250, 150, 410, 310],
                                                               [0, 0, 100, 100]]))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a, b = futures["a"].result(5), futures["b"].result(5)
        assert time.monotonic() - t0 < 1.5
    assert det.calls == [3]
    assert service.batches == 1 and service.last_batch_size == 3 and service.crops == 3
    assert service.infer_ms_ema > 0
    for dets in (a, b):  # boxes back in frame pixels, whichever crop found them
        np.testing.assert_allclose(dets.xyxy, [[300, 200, 340, 280]])
        assert dets.labels == ("blob",)


def test_service_merges_duplicates_from_overlapping_regions() -> None:
    det = WhiteBlobDetector()
    with DetectorService(det) as service:
        regions = np.array([[200, 100, 400, 300], [250, 150, 450, 350], [0, 300, 100, 480]])
        dets = service.submit(frame(blob_image((300, 200, 340, 280))), regions).result(5)
    assert det.calls == [3]
    assert len(dets) == 1
    np.testing.assert_allclose(dets.xyxy, [[300, 200, 340, 280]])


def test_service_splits_big_requests_by_max_batch() -> None:
    det = WhiteBlobDetector(max_batch=2)
    service = DetectorService(det, batch_wait_ms=0)
    regions = np.array([[0, 0, 100, 100]] * 5)
    future = service.submit(frame(blob_image((10, 10, 20, 20))), regions)
    with service:  # queued before start: all five crops in one round, three calls
        assert len(future.result(5)) == 1
    assert det.calls == [2, 2, 1] and service.batches == 3 and service.last_batch_size == 1


def test_service_whole_frame_and_empty_regions() -> None:
    det = WhiteBlobDetector()
    with DetectorService(det) as service:
        whole = service.submit(frame(blob_image((5, 6, 7, 8)))).result(5)
        none = service.submit(frame(blob_image((5, 6, 7, 8))), np.empty((0, 4))).result(5)
    np.testing.assert_allclose(whole.xyxy, [[5, 6, 7, 8]])
    assert len(none) == 0 and none.labels == ("blob",)
    assert det.calls == [1]


def test_service_detector_errors_resolve_futures_and_the_worker_goes_on() -> None:
    det = WhiteBlobDetector(fail=True)
    with DetectorService(det) as service:
        with pytest.raises(ValueError, match="on fire"):
            service.submit(frame(blob_image((5, 6, 7, 8)))).result(5)
        det.fail = False
        assert len(service.submit(frame(blob_image((5, 6, 7, 8)))).result(5)) == 1
    assert service.failures.counts() == {"ValueError": 1}


def test_service_stop_fails_pending_requests() -> None:
    gate = threading.Event()
    det = WhiteBlobDetector(gate=gate)
    service = DetectorService(det, batch_wait_ms=0).start()
    running = service.submit(frame(blob_image((5, 6, 7, 8)), frame_id=1))
    while not running.running():  # the worker took the first request into the detector
        time.sleep(0.001)
    pending = service.submit(frame(blob_image((5, 6, 7, 8)), frame_id=2))
    threading.Timer(0.05, gate.set).start()
    service.stop()
    with pytest.raises(ServiceStopped, match="before frame 2 of 'cam' was analysed"):
        pending.result(5)
    assert len(running.result(5)) == 1  # the batch in the detector finished normally
    service.stop()  # idempotent
    with pytest.raises(ServiceStopped):
        service.submit(frame(blob_image((5, 6, 7, 8))))


def test_service_stop_without_start() -> None:
    service = DetectorService(WhiteBlobDetector())
    future = service.submit(frame(blob_image((5, 6, 7, 8))))
    service.stop()
    assert isinstance(future.exception(1), ServiceStopped)


def test_service_with_hog_on_motion_regions(vtest_frame: Image) -> None:
    det = create_detector(HOGDetectorSettings(backend="hog"))
    assert det is not None
    (full,) = det.detect([vtest_frame])
    h, w = vtest_frame.shape[:2]
    regions = plan_regions(full.xyxy, (w, h), det.input_size)
    with DetectorService(det) as service:
        dets = service.submit(frame(vtest_frame), regions).result(10)
    assert len(dets) >= 1
    assert (dets.xyxy[:, 2] <= w).all() and (dets.xyxy[:, 3] <= h).all()
