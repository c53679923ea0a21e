"""ONNX Runtime backend: YOLOv8/YOLO11-style ONNX models on CPU (or CUDA when the installed
onnxruntime has it).

Everything that can be wrong with a model file is checked when the detector is created,
including one warm-up inference, so a bad file stops startup with the reason instead of
failing on the first frame that moves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from streamd.detect.base import (
    DetectorError,
    ModelDetectorSettings,
    class_ids,
    model_file_problems,
)
from streamd.detect.timing import PhaseTimes
from streamd.detect.yolo import decode, letterbox_batch, parse_names, resolve_labels
from streamd.detections import Detections
from streamd.frames import Image
from streamd.settings import Problem

log = logging.getLogger(__name__)

KEY = "onnxruntime"
STRIDES = (8, 16, 32)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class ONNXRuntimeDetectorSettings(ModelDetectorSettings):
    """`backend: onnxruntime`: a YOLO ONNX model on CPU (or CUDA when onnxruntime has it)."""

    backend: Literal["onnxruntime"]
    model: Path = Field(description="YOLOv8/YOLO11-style ONNX file, output [N, 4+C, A].")
    input_size: int = Field(320, ge=32, le=2048, multiple_of=32, description="Square side "
                            "(px) each crop is letterboxed to; a model with a fixed input "
                            "size needs exactly its size.")
    labels: list[str] | None = Field(
        None, description="Class names; default: the model's `names` metadata, else COCO.")
    threads: int = Field(0, ge=0, le=64, description="intra-op threads; 0 = ONNX Runtime's choice.")
    max_batch: int = Field(8, ge=1, le=256, description="Crops per inference call at most.")

    def preflight(self, file: str, key: str) -> list[Problem]:
        return model_file_problems(self.model, file, key)


def anchor_count(size: int) -> int:
    """A for a square input of side `size`: one anchor per cell of the P3, P4, P5 grids."""
    return sum((size // s) ** 2 for s in STRIDES)


class ONNXRuntimeDetector:
    """A YOLO ONNX model behind the `Detector` interface.

    Batches of up to `max_batch` images go through one `session.run`; a model exported with
    a fixed batch size gets chunks of exactly that size (the last one zero-padded).
    """

    def __init__(self, settings: ONNXRuntimeDetectorSettings) -> None:
        import onnxruntime as ort

        self.phases = PhaseTimes()
        path = settings.model
        if not path.is_file():
            raise DetectorError(f"detector.model: {path} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.threads
        opts.log_severity_level = 3  # ORT's warnings go to stderr, not our log
        # Idle worker threads spin-wait by default: on a 2-core edge box that burns a core
        # between calls and starves motion and decoding; block instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in available]
        try:
            self._session: Any = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # ORT raises its own pybind classes for a bad file
            raise DetectorError(f"detector.model: {path} is not a loadable ONNX model: "
                                f"{exc}") from None
        self.input_size = settings.input_size
        self.max_batch = settings.max_batch
        self._conf, self._iou = settings.confidence, settings.iou
        self._input, self._dtype, self._run_batch = self._check_input(path)
        self._output = self._session.get_outputs()[0].name
        classes = self._check_output(path)
        self.labels = self._labels(settings, classes)
        self._class_ids = class_ids(self.labels, settings.classes)
        log.info("onnxruntime detector: %s, %d classes, input %d, batch %s, providers %s",
                 path, classes, self.input_size, self._run_batch or "dynamic",
                 self._session.get_providers())

    def _check_input(self, path: Path) -> tuple[str, type[np.floating[Any]], int]:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise DetectorError(f"detector.model: {path} has {len(inputs)} inputs; a YOLO "
                                "detector has one, images [N, 3, H, W]")
        inp = inputs[0]
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise DetectorError(f"detector.model: input {inp.name} is {shape}; expected "
                                "[N, 3, H, W]")
        if inp.type not in _DTYPES:
            raise DetectorError(f"detector.model: input {inp.name} is {inp.type}; expected "
                                "float or float16")
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and fixed != [self.input_size] * 2:
            raise DetectorError(f"detector.model: {path} takes {shape[2]}x{shape[3]} images; "
                                f"set detector.input_size to match (it is {self.input_size})")
        batch = shape[0] if isinstance(shape[0], int) else 0
        return inp.name, _DTYPES[inp.type], batch

    def _check_output(self, path: Path) -> int:
        """Run one blank image: checks the layout and warms the session up."""
        n = self._run_batch or 1
        blank = np.zeros((n, 3, self.input_size, self.input_size), self._dtype)
        try:
            out = self._session.run([self._output], {self._input: blank})[0]
        except Exception as exc:
            raise DetectorError(f"detector.model: {path} fails on a {self.input_size}x"
                                f"{self.input_size} input: {exc}") from None
        expected_a = anchor_count(self.input_size)
        if out.ndim != 3 or out.shape[0] != n or out.shape[2] != expected_a or out.shape[1] < 5:
            raise DetectorError(
                f"detector.model: {path} outputs {list(out.shape)}; expected [N, 4+C, "
                f"{expected_a}] (YOLOv8/YOLO11 layout at input_size {self.input_size}); "
                "YOLOv5/v7-style [N, A, 5+C] outputs are not supported")
        return int(out.shape[1]) - 4

    def _labels(self, settings: ONNXRuntimeDetectorSettings, classes: int) -> tuple[str, ...]:
        meta = self._session.get_modelmeta().custom_metadata_map.get("names")
        names = None
        if meta is not None and settings.labels is None:
            try:
                names = parse_names(meta)
            except ValueError as exc:
                raise DetectorError(f"detector.model: {exc}; set detector.labels") from None
        return resolve_labels(settings.labels, names, classes, f"detector.model {settings.model}")

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        if self._session is None:
            raise DetectorError("onnxruntime detector used after close()")
        step = self._run_batch or self.max_batch
        results: list[Detections] = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            with self.phases.phase("preprocess"):
                tensor, boxes = letterbox_batch(chunk, self.input_size)
                if self._run_batch and len(chunk) < self._run_batch:
                    tensor = np.concatenate([tensor, np.zeros(
                        (self._run_batch - len(chunk), *tensor.shape[1:]), np.float32)])
                feed = {self._input: tensor.astype(self._dtype, copy=False)}
            with self.phases.phase("inference"):
                out = self._session.run([self._output], feed)
            with self.phases.phase("postprocess"):
                results += decode(np.asarray(out[0][:len(chunk)], np.float32), self._conf,
                                  self._iou, self._class_ids, boxes, labels=self.labels)
        return results

    def close(self) -> None:
        self._session = None
