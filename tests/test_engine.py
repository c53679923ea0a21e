"""TensorRT engine cache, builder options, Ultralytics headers, build progress, calibration
data, the tensorrt config, and the `engine build` / `export` commands — everything about
engines that runs without TensorRT or a GPU."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, save

from streamd.cli import main
from streamd.config import ConfigError, load, preflight, validate
from streamd.detect.tensorrt import TensorRTDetectorSettings
from streamd.detect.tensorrt.build import build_settings
from streamd.detect.tensorrt.cache import CacheLookup, lookup, timing_cache_path
from streamd.detect.tensorrt.calibration import (
    calibration_batches,
    calibration_cache_path,
    calibration_images,
)
from streamd.detect.tensorrt.errors import EngineError
from streamd.detect.tensorrt.key import EngineKey, diff_keys, file_sha256
from streamd.detect.tensorrt.onnx_meta import onnx_metadata
from streamd.detect.tensorrt.options import (
    builder_options,
    format_parser_error,
    parse_version,
    profile_shapes,
)
from streamd.detect.tensorrt.progress import BuildProgress
from streamd.detect.tensorrt.sidecar import Sidecar, read_sidecar, sidecar_path, write_sidecar
from streamd.detect.tensorrt.ultralytics import read_engine_file, split_ultralytics
from streamd.detect.yolo import letterbox_batch
from streamd.export import ExportError, verify_onnx

KEY = EngineKey("a" * 64, "10.3.0", "Orin", "8.7", "fp16", (3, 320, 320), (1, 4, 8))
PLAN = b"ftrt" + bytes(range(256)) * 4
"""Stands in for a serialized plan: TensorRT plans begin with the 'ftrt' magic."""


def sidecar(key: EngineKey = KEY, onnx_file: str = "yolov8n.onnx") -> Sidecar:
    return Sidecar(key, onnx_file, ("person", "car"), "2025-01-02T03:04:05Z", 61.5, "0.1.0")


def cache_engine(engine_dir: Path, key: EngineKey, onnx_file: str = "yolov8n.onnx",
                 name: str | None = None) -> Path:
    engine_dir.mkdir(parents=True, exist_ok=True)
    path = engine_dir / (name or key.file_name(Path(onnx_file).stem))
    path.write_bytes(PLAN)
    write_sidecar(path, sidecar(key, onnx_file))
    return path


# --- the cache key --------------------------------------------------------------------------

CHANGES: list[tuple[str, Any, str]] = [
    ("onnx_sha256", "b" * 64, "ONNX model: engine built from sha256 bbbbbbbbbbbb…"),
    ("tensorrt", "10.0.1", "TensorRT version: engine 10.0.1, here 10.3.0"),
    ("gpu_name", "NVIDIA A10", "GPU: engine built on 'NVIDIA A10', here 'Orin'"),
    ("compute_capability", "8.6", "compute capability: engine sm 8.6, here sm 8.7"),
    ("precision", "fp32", "precision: engine fp32, wanted fp16"),
    ("input_shape", (3, 640, 640), "input shape: engine 3x640x640, wanted 3x320x320"),
    ("batch", (1, 8, 8), "batch range (min/opt/max): engine 1/8/8, wanted 1/4/8"),
]


@pytest.mark.parametrize(("field", "value", "message"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_key_field_changes_the_file_and_is_named_in_the_diff(field: str, value: Any,
                                                                   message: str) -> None:
    other = dataclasses.replace(KEY, **{field: value})
    assert other.file_name("yolov8n") != KEY.file_name("yolov8n")
    diffs = diff_keys(KEY, other)
    assert len(diffs) == 1
    assert diffs[0].startswith(message)


def test_equal_keys_have_no_diff_and_the_same_file_name() -> None:
    same = EngineKey.from_json(json.loads(json.dumps(KEY.to_json())))
    assert same == KEY
    assert diff_keys(KEY, same) == []
    assert same.file_name("yolov8n") == KEY.file_name("yolov8n")


def test_several_differences_are_all_listed() -> None:
    other = dataclasses.replace(KEY, tensorrt="10.8.0", compute_capability="8.9",
                                gpu_name="RTX 4090", precision="int8")
    assert [d.split(":")[0] for d in diff_keys(KEY, other)] == [
        "TensorRT version", "GPU", "compute capability", "precision"]


def test_file_name_is_readable_and_safe() -> None:
    name = dataclasses.replace(KEY, tensorrt="10.3.0.30").file_name("my model/v2")
    assert name.startswith("my_model_v2.fp16.320x320.b1-4-8.sm87.trt10.3.0.30.")
    assert name.endswith(".engine") and "/" not in name


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"abc")
    assert file_sha256(path, chunk=2) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_timing_cache_is_per_gpu_and_tensorrt(tmp_path: Path) -> None:
    path = timing_cache_path(tmp_path, KEY)
    assert path == tmp_path / "timing.orin.sm87.trt10.3.0.cache"
    assert timing_cache_path(tmp_path, dataclasses.replace(KEY, precision="fp32")) == path
    assert timing_cache_path(tmp_path, dataclasses.replace(KEY, tensorrt="10.4.0")) != path


# --- the sidecar ----------------------------------------------------------------------------


def test_sidecar_round_trip(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    written = write_sidecar(engine, sidecar())
    assert written == sidecar_path(engine) == tmp_path / "m.json"
    assert read_sidecar(engine) == sidecar()
    data = json.loads(written.read_text())
    assert data["format"] == 1 and data["key"]["batch"] == [1, 4, 8]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write cleaned up


def test_sidecar_missing_is_none(tmp_path: Path) -> None:
    assert read_sidecar(tmp_path / "m.engine") is None


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "not a streamd engine record"),
    ("[1, 2]", "not a JSON object"),
    ('{"format": 99}', "format 99"),
    ('{"format": 1, "key": {}}', "not a streamd engine record"),
])
def test_bad_sidecars_are_errors(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(EngineError, match=words):
        read_sidecar(tmp_path / "m.engine")


# --- looking up the cache -------------------------------------------------------------------


def test_lookup_finds_the_exact_engine(tmp_path: Path) -> None:
    path = cache_engine(tmp_path, KEY)
    assert lookup(tmp_path, "yolov8n.onnx", KEY) == CacheLookup(path, True)


def test_lookup_in_a_missing_or_empty_directory(tmp_path: Path) -> None:
    for d in (tmp_path / "nope", tmp_path):
        found = lookup(d, "yolov8n.onnx", KEY)
        assert not found.found and found.closest is None
        assert found.path == d / KEY.file_name("yolov8n")


def test_lookup_names_the_closest_stale_engine(tmp_path: Path) -> None:
    far = dataclasses.replace(KEY, tensorrt="10.0.1", precision="fp32")
    near = dataclasses.replace(KEY, tensorrt="10.0.1")
    cache_engine(tmp_path, far)
    near_path = cache_engine(tmp_path, near)
    cache_engine(tmp_path, dataclasses.replace(KEY, onnx_sha256="c" * 64), "other.onnx")
    found = lookup(tmp_path, "yolov8n.onnx", KEY)
    assert not found.found
    assert found.closest == (near_path, ["TensorRT version: engine 10.0.1, here 10.3.0"])


def test_lookup_follows_a_renamed_model_by_its_hash(tmp_path: Path) -> None:
    old = cache_engine(tmp_path, dataclasses.replace(KEY, precision="fp32"), "old-name.onnx")
    found = lookup(tmp_path, "yolov8n.onnx", KEY)
    assert found.closest is not None and found.closest[0] == old


def test_lookup_treats_an_edited_sidecar_as_stale(tmp_path: Path) -> None:
    path = cache_engine(tmp_path, KEY)
    write_sidecar(path, sidecar(dataclasses.replace(KEY, precision="int8")))
    found = lookup(tmp_path, "yolov8n.onnx", KEY)
    assert not found.found
    assert found.closest == (path, ["precision: engine int8, wanted fp16"])


def test_lookup_ignores_an_engine_without_sidecar_and_foreign_json(tmp_path: Path) -> None:
    (tmp_path / KEY.file_name("yolov8n")).write_bytes(PLAN)  # a build that died midway
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "notes.engine").write_bytes(PLAN)
    found = lookup(tmp_path, "yolov8n.onnx", KEY)
    assert not found.found and found.closest is None


# --- Ultralytics engine files ---------------------------------------------------------------


def ultralytics_file(meta: dict[str, Any], plan: bytes = PLAN) -> bytes:
    blob = json.dumps(meta).encode()
    return len(blob).to_bytes(4, "little") + blob + plan


def test_ultralytics_header_is_read_and_stripped(tmp_path: Path) -> None:
    meta = {"description": "Ultralytics YOLOv8n model", "version": "8.3.40", "task": "detect",
            "batch": 4, "imgsz": [320, 320], "stride": 32,
            "names": {"0": "person", "1": "bicycle", "2": "car"}}
    path = tmp_path / "yolov8n.engine"
    path.write_bytes(ultralytics_file(meta))
    header, plan = read_engine_file(path)
    assert plan == PLAN
    assert header is not None
    assert header.names == ("person", "bicycle", "car")
    assert header.imgsz == (320, 320) and header.batch == 4
    assert header.raw["version"] == "8.3.40"


@pytest.mark.parametrize(("names", "imgsz", "expect_names", "expect_hw"), [
    (["a", "b"], 640, ("a", "b"), (640, 640)),
    ({"1": "b", "0": "a"}, [384, 640], ("a", "b"), (384, 640)),
    ({"0": "a", "2": "c"}, None, None, None),  # ids with a gap: not a label table
    ("person", "x", None, None),
])
def test_ultralytics_header_variants(names: Any, imgsz: Any, expect_names: Any,
                                     expect_hw: Any) -> None:
    header, plan = split_ultralytics(ultralytics_file({"names": names, "imgsz": imgsz}))
    assert header is not None and bytes(plan) == PLAN
    assert header.names == expect_names and header.imgsz == expect_hw


def test_a_bare_plan_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "plain.engine"
    path.write_bytes(PLAN)
    header, plan = read_engine_file(path)
    assert header is None and plan == PLAN


def test_a_small_length_word_followed_by_non_json_is_a_bare_plan() -> None:
    data = (16).to_bytes(4, "little") + b"\x00\x01binary-not-json" + PLAN
    header, plan = split_ultralytics(data)
    assert header is None and bytes(plan) == data


def test_too_short_to_be_an_engine() -> None:
    with pytest.raises(EngineError, match="3 bytes is not a TensorRT engine"):
        split_ultralytics(b"abc")


# --- builder options per TensorRT version ---------------------------------------------------


@pytest.mark.parametrize(("version", "precision", "typed", "flags", "cleared", "calib",
                          "notes"), [
    ("10.0.1", "fp32", False, (), ("TF32",), False, 0),
    ("10.0.1", "fp16", False, ("FP16",), (), False, 0),
    ("10.0.1", "int8", False, ("INT8", "FP16"), (), True, 0),
    ("10.3.0", "fp32", False, (), ("TF32",), False, 0),
    ("10.3.0", "fp16", False, ("FP16",), (), False, 0),
    ("10.3.0", "int8", False, ("INT8", "FP16"), (), True, 1),  # calibrators deprecated (10.1)
    ("10.8.0.43", "fp16", False, ("FP16",), (), False, 0),
    ("10.8.0.43", "int8", False, ("INT8", "FP16"), (), True, 1),
    ("10.12.0", "fp16", False, ("FP16",), (), False, 1),  # weak typing deprecated (10.12)
    ("10.12.0", "int8", False, ("INT8", "FP16"), (), True, 2),
    ("11.0.0", "fp32", True, (), (), False, 1),
])
def test_builder_options(version: str, precision: str, typed: bool, flags: tuple[str, ...],
                         cleared: tuple[str, ...], calib: bool, notes: int) -> None:
    opts = builder_options(version, precision)
    assert (opts.strongly_typed, opts.set_flags, opts.clear_flags, opts.calibrate) == (
        typed, flags, cleared, calib)
    assert len(opts.notes) == notes


@pytest.mark.parametrize(("version", "precision", "words"), [
    ("8.6.1", "fp32", "TensorRT 8.6.1 is too old: streamd needs TensorRT 10"),
    ("8.6.1", "fp16", "too old"),
    ("8.6.1", "int8", "too old"),
    ("11.0.0", "fp16", "strongly typed networks only.*ModelOpt AutoCast"),
    ("11.0.0", "int8", "strongly typed networks only.*Q/DQ"),
    ("12.0.0", "fp32", "newer than streamd supports"),
    ("10.3.0", "bf16", "expected fp32, fp16 or int8"),
    ("ten", "fp32", "cannot read TensorRT version"),
])
def test_builder_options_refused(version: str, precision: str, words: str) -> None:
    with pytest.raises(EngineError, match=words):
        builder_options(version, precision)


def test_parse_version() -> None:
    assert parse_version("10.3.0") == (10, 3)
    assert parse_version("10.12.0.36") == (10, 12)


# --- profile shapes and parser errors -------------------------------------------------------


@pytest.mark.parametrize(("dims", "batch", "expected"), [
    ([-1, 3, -1, -1], (1, 4, 8), [(1, 3, 320, 320), (4, 3, 320, 320), (8, 3, 320, 320)]),
    ([-1, 3, 320, 320], (2, 2, 2), [(2, 3, 320, 320)] * 3),
    ([4, 3, 320, 320], (4, 4, 4), [(4, 3, 320, 320)] * 3),
])
def test_profile_shapes(dims: list[int], batch: tuple[int, int, int],
                        expected: list[tuple[int, ...]]) -> None:
    assert list(profile_shapes(dims, 320, batch)) == expected


@pytest.mark.parametrize(("dims", "words"), [
    ([-1, 3, 640, 640], "takes 640x640 images; set detector.input_size"),
    ([1, 3, 320, 320], "fixed batch of 1; export it with a dynamic batch"),
    ([-1, 1, 320, 320], r"input is \[-1, 1, 320, 320\]"),
    ([-1, 3, 320], "expected|input is"),
])
def test_profile_shapes_refused(dims: list[int], words: str) -> None:
    with pytest.raises(EngineError, match=words):
        profile_shapes(dims, 320, (1, 4, 8))


class FakeParserError:
    def __init__(self, node: int, name: str | None) -> None:
        self._node, self._name = node, name
        if name is not None:
            self.node_name = lambda: name
            self.node_operator = lambda: "Resize"

    def code(self) -> Any:
        return SimpleNamespace(name="UNSUPPORTED_NODE")

    def desc(self) -> str:
        return "Assertion failed: scales must be constant "

    def node(self) -> int:
        return self._node


def test_format_parser_error() -> None:
    assert format_parser_error(FakeParserError(41, "/model.10/Resize")) == (
        "UNSUPPORTED_NODE: Assertion failed: scales must be constant "
        "(node 41, /model.10/Resize, Resize)")
    assert format_parser_error(FakeParserError(-1, None)) == (
        "UNSUPPORTED_NODE: Assertion failed: scales must be constant")


# --- progress -------------------------------------------------------------------------------


def test_build_progress_lines_carry_the_elapsed_time() -> None:
    now = [100.0]
    lines: list[str] = []
    progress = BuildProgress(lines.append, interval_s=5.0, clock=lambda: now[0])
    progress.phase_start("Building engine", None, 3)
    now[0] = 101.0
    progress.phase_start("Tactic selection", "Building engine", 200)
    progress.phase_start("Layer 7", "Tactic selection", 12)  # too deep: silent
    assert progress.step_complete("Tactic selection", 0)  # < 5 s since start: silent
    now[0] = 106.5
    assert progress.step_complete("Tactic selection", 99)
    now[0] = 107.0
    assert progress.step_complete("Tactic selection", 100)  # throttled
    progress.phase_finish("Layer 7")
    now[0] = 130.0
    progress.phase_finish("Tactic selection")
    progress.phase_finish("Building engine")
    assert lines == [
        "[    0.0 s] Building engine (3 steps)",
        "[    1.0 s]   Tactic selection (200 steps)",
        "[    6.5 s]   Tactic selection: step 100/200",
        "[   30.0 s]   Tactic selection done (29.0 s)",
        "[   30.0 s] Building engine done (30.0 s)",
    ]
    assert progress.elapsed_s() == 30.0


# --- INT8 calibration data ------------------------------------------------------------------


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"frame{i:02d}.png"
        assert cv2.imwrite(str(path), rng.integers(0, 255, (48 + 8 * i, 64, 3), np.uint8))
        paths.append(path)
    return paths


def test_calibration_images_are_sorted_and_filtered(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "calib", 3)
    (tmp_path / "calib" / "notes.txt").write_text("not an image")
    (tmp_path / "calib" / "sub").mkdir()
    assert calibration_images(tmp_path / "calib", 2) == paths


@pytest.mark.parametrize(("count", "batch", "words"), [
    (1, 2, "has 1 images .* at least 2"),
    (0, 1, "has 0 images"),
])
def test_calibration_images_too_few(tmp_path: Path, count: int, batch: int,
                                    words: str) -> None:
    write_images(tmp_path / "calib", count)
    with pytest.raises(EngineError, match=words):
        calibration_images(tmp_path / "calib", batch)


def test_calibration_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="is not a directory"):
        calibration_images(tmp_path / "nope", 1)


def test_calibration_batches_use_the_inference_letterbox(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "calib", 5)
    broken = tmp_path / "calib" / "frame99.png"
    broken.write_bytes(b"not a png")
    batches = list(calibration_batches([*paths[:2], broken, *paths[2:]], 64, 2))
    assert len(batches) == 2  # 5 readable images: two full batches, the fifth dropped
    expected = letterbox_batch([cv2.imread(str(p)) for p in paths[:4]], 64)[0]
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert batches[0].shape == (2, 3, 64, 64) and batches[0].dtype == np.float32


def test_calibration_cache_follows_the_images(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "calib", 3)
    first = calibration_cache_path(tmp_path, KEY, paths)
    assert first == calibration_cache_path(tmp_path, dataclasses.replace(KEY, tensorrt="10.8"),
                                           paths)  # independent of the GPU and TensorRT
    assert first != calibration_cache_path(tmp_path, KEY, paths[:2])


# --- ONNX metadata --------------------------------------------------------------------------


def tiny_onnx(path: Path, *, batch: int | str = "batch", out_dims: list[int | str] | None = None,
              metadata: dict[str, str] | None = None) -> Path:
    """A graph with the declared I/O of a YOLO export (the ops do not matter here)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])], "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT,
                                       out_dims or ["batch", 6, "anchors"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    save(model, str(path))
    return path


def test_onnx_metadata_read_without_onnx(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx", metadata={"names": "{0: 'a', 1: 'b'}", "stride": "32"})
    assert onnx_metadata(path) == {"names": "{0: 'a', 1: 'b'}", "stride": "32"}
    assert onnx_metadata(tiny_onnx(tmp_path / "bare.onnx")) == {}


@pytest.mark.parametrize("content", [b"", b"\xff\xff\xff", b"\x0a\x80"])
def test_onnx_metadata_of_a_broken_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(EngineError, match="not a readable ONNX model"):
        onnx_metadata(path)


# --- config ---------------------------------------------------------------------------------


def trt_config(**detector: Any) -> dict[str, Any]:
    return {"site": "s", "cameras": [{"name": "c", "url": "rtsp://x/1"}],
            "detector": {"backend": "tensorrt", "model": "engines/m.onnx", **detector}}


def test_tensorrt_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    det = validate(trt_config()).detector
    assert isinstance(det, TensorRTDetectorSettings)
    assert (det.precision, det.build, det.batch_range, det.input_size, det.device) == (
        "fp16", "auto", (1, 8, 8), 320, 0)
    assert det.resolved_engine_dir() == Path("engines")
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/streamd:/other")
    assert det.resolved_engine_dir() == Path("/var/cache/streamd")
    explicit = validate(trt_config(engine_dir="/srv/engines")).detector
    assert isinstance(explicit, TensorRTDetectorSettings)
    assert explicit.resolved_engine_dir() == Path("/srv/engines")


@pytest.mark.parametrize(("detector", "path", "words"), [
    ({"min_batch": 4, "max_batch": 2}, "detector", "min_batch <= opt_batch <= max_batch"),
    ({"opt_batch": 16}, "detector", "4/16/8|1/16/8"),
    ({"precision": "int8"}, "detector", "int8 needs calibration_dir"),
    ({"precision": "bf16"}, "detector.precision", "fp32"),
    ({"build": "sometimes"}, "detector.build", "auto"),
    ({"input_size": 300}, "detector.input_size", "multiple of 32"),
    ({"workspace_mb": 0}, "detector.workspace_mb", "greater than or equal"),
    ({"engine": "x.engine"}, "detector.engine", "unknown key"),
])
def test_tensorrt_settings_errors(detector: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(trt_config(**detector))
    problem = info.value.problems[0]
    assert problem.path == path
    assert any(w in problem.message for w in words.split("|"))


def test_int8_needs_no_calibration_for_a_ready_engine() -> None:
    det = validate(trt_config(model="engines/m.engine", precision="int8")).detector
    assert isinstance(det, TensorRTDetectorSettings)


def test_preflight_checks_tensorrt_files(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cfg.write_text(json.dumps(trt_config(model=str(tmp_path / "m.onnx"), precision="int8",
                                             calibration_dir=str(tmp_path / "calib"),
                                             engine_dir=str(locked / "engines"))))
        problems = {p.path: p.message for p in preflight(load(cfg))}
    finally:
        locked.chmod(0o700)
    assert "does not exist" in problems["detector.model"]
    assert "is not a directory" in problems["detector.calibration_dir"]
    if os.geteuid() != 0:  # root writes anywhere
        assert "not writable" in problems["detector.engine_dir"]
        assert "CacheDirectory=streamd" in problems["detector.engine_dir"]


def test_preflight_accepts_a_creatable_engine_dir(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(trt_config(model=str(model),
                                         engine_dir=str(tmp_path / "new" / "engines"))))
    assert preflight(load(cfg)) == []


def test_build_settings_merge_config_and_flags(tmp_path: Path) -> None:
    base = validate(trt_config(precision="fp32", max_batch=4, confidence=0.5)).detector
    settings = build_settings(base, {"precision": "fp16", "max_batch": None, "input_size": 640})
    assert (settings.precision, settings.max_batch, settings.input_size,
            settings.confidence) == ("fp16", 4, 640, 0.5)
    bare = build_settings(None, {"model": tmp_path / "m.onnx"})
    assert bare.model == tmp_path / "m.onnx" and bare.precision == "fp16"


@pytest.mark.parametrize(("base", "overrides", "words"), [
    (None, {}, "no model: give --onnx"),
    (None, {"model": Path("m.onnx"), "min_batch": 9}, "min_batch <= opt_batch"),
    ("onnxruntime", {}, "detector.backend is 'onnxruntime'"),
])
def test_build_settings_errors(base: str | None, overrides: dict[str, Any],
                               words: str) -> None:
    settings = None
    if base is not None:
        settings = validate({"site": "s", "cameras": [{"name": "c", "url": "rtsp://x/1"}],
                             "detector": {"backend": base, "model": "m.onnx"}}).detector
    with pytest.raises(ValueError, match=words):
        build_settings(settings, overrides)


# --- commands without TensorRT / Ultralytics ------------------------------------------------


def test_engine_build_without_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where installed
    model = tiny_onnx(tmp_path / "m.onnx")
    assert main(["engine", "build", "--onnx", str(model), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not available" in err and "pip install streamd[trt]" in err


def test_engine_build_from_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = tiny_onnx(tmp_path / "m.onnx")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(trt_config(model=str(model), engine_dir=str(tmp_path / "e"))))
    assert main(["engine", "build", "-c", str(cfg), "--max-batch", "4"]) == 1
    assert "pip install streamd[trt]" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "words"), [
    (["engine", "build"], "no model: give --onnx"),
    (["engine", "build", "--onnx", "m.onnx", "--min-batch", "9"], "min_batch <= opt_batch"),
])
def test_engine_build_bad_arguments(argv: list[str], words: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_engine_build_needs_a_tensorrt_config(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_onnx(tmp_path / "m.onnx")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"site": "s", "cameras": [{"name": "c", "url": "rtsp://x/1"}],
                               "detector": {"backend": "onnxruntime", "model": str(model)}}))
    assert main(["engine", "build", "-c", str(cfg)]) == 2
    assert "needs backend: tensorrt" in capsys.readouterr().err


def test_export_without_ultralytics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    weights = tmp_path / "yolov8n.pt"
    weights.write_bytes(b"weights")
    argv = ["export", "--weights", str(weights), "--out", str(tmp_path / "y.onnx"),
            "--imgsz", "320"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Ultralytics is not installed" in err and "pip install streamd[export]" in err


@pytest.mark.parametrize(("weights", "imgsz", "words"), [
    ("missing.pt", 640, "does not exist"),
    ("w.pt", 300, "multiple of 32"),
])
def test_export_bad_arguments(tmp_path: Path, weights: str, imgsz: int, words: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.pt").write_bytes(b"weights")
    argv = ["export", "--weights", str(tmp_path / weights), "--out",
            str(tmp_path / "y.onnx"), "--imgsz", str(imgsz)]
    assert main(argv) == 1
    assert words in capsys.readouterr().err


# --- verifying an exported model ------------------------------------------------------------


def test_verify_onnx_accepts_a_yolo_export(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx", metadata={"names": "{0: 'a', 1: 'b'}"})
    info = verify_onnx(path)
    assert info.names == ("a", "b")
    assert info.input_shape == ("batch", 3, "h", "w")


def test_verify_onnx_adds_missing_names(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    assert verify_onnx(path, ["a", "b"]).names == ("a", "b")
    assert onnx_metadata(path)["names"] == "{0: 'a', 1: 'b'}"


@pytest.mark.parametrize(("kw", "names", "words"), [
    ({"batch": 1}, None, "batch axis is fixed at 1"),
    ({"out_dims": ["batch", 300, 6]}, None, "not end-to-end"),
    ({}, None, "no `names` metadata"),
    ({"metadata": {"names": "{0: 'a'}"}}, None, "1 classes, names has|has 2 classes"),
])
def test_verify_onnx_refuses(tmp_path: Path, kw: dict[str, Any], names: list[str] | None,
                             words: str) -> None:
    path = tiny_onnx(tmp_path / "m.onnx", **kw)
    with pytest.raises(ExportError, match=words):
        verify_onnx(path, names)
