"""TFLite backend: SSD-style detectors with the detection post-processing in the graph, run by
LiteRT (`ai-edge-litert`, the successor of `tflite-runtime`) on the CPU with XNNPACK.

The default model is MobileNet-SSD v2 COCO, uint8-quantised (Google Coral's test model, the
one Frigate runs on CPUs; `engines/fetch_ssd.sh` fetches it). Such a model takes one RGB
uint8 image [1, H, W, 3] and returns four tensors: boxes [1, N, 4] (ymin, xmin, ymax, xmax,
normalised), class ids [1, N], scores [1, N] and the count [1]. Its class ids are the COCO
category ids minus one, with the gaps COCO has (no 11, 25, ...), so labels come from the
model's label file, never from a position in a dense list.

Every image is letterboxed into the model input (aspect kept, grey padding), not stretched:
measured on vtest.avi (README, Models), letterboxing finds as many objects as stretching on
whole 4:3 frames and more on elongated crops, with higher scores. The model has a fixed batch
of one, so a batch of crops runs one `invoke` per crop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field

from streamd.detect.base import DetectorError, ModelDetectorSettings, class_ids
from streamd.detect.timing import PhaseTimes
from streamd.detections import Detections, FloatArray, IntArray
from streamd.frames import Image
from streamd.geometry import nms
from streamd.settings import Problem

log = logging.getLogger(__name__)

KEY = "tflite"
DEFAULT_MODEL = Path("engines/mobilenet_ssd_v2_coco_quant_postprocess.tflite")
DEFAULT_LABELS = Path("engines/coco_labels.txt")
FETCH_COMMAND = "engines/fetch_ssd.sh"
"""What puts the default model and labels in place (`scripts/setup.sh` runs it)."""
PAD_VALUE = 128
"""Letterbox grey: the uint8 value the model's input quantisation maps to 0.0."""
_LABEL_LINE = re.compile(r"^\s*(\d+)[\s:]+(\S.*?)\s*$")
_UNUSED = frozenset({"n/a", "???"})


class TFLiteDetectorSettings(ModelDetectorSettings):
    """An SSD-style `.tflite` model with TFLite_Detection_PostProcess in the graph."""

    backend: Literal["tflite"]
    model: Path = Field(
        DEFAULT_MODEL, description="TFLite model: uint8 input [1, H, W, 3] RGB, outputs "
        f"boxes, classes, scores, count (TFLite_Detection_PostProcess). `{FETCH_COMMAND}` "
        "fetches the default MobileNet-SSD v2 COCO.")
    labels_file: Path = Field(
        DEFAULT_LABELS, description="Label map: `<id> <name>` per line (the Coral/TF "
        "format; ids may have gaps), or one name per line (line index = id).")
    confidence: float = Field(0.5, ge=0.0, le=1.0, description="Minimum score kept.")
    iou: float = Field(
        0.5, gt=0.0, le=1.0, description="IoU above which class-aware NMS suppresses, on top "
        "of the model's own NMS.")
    threads: int = Field(
        1, ge=1, le=64, description="CPU threads of one inference (XNNPACK); 1 leaves the "
        "other cores to decoding and motion.")

    def preflight(self, file: str, key: str) -> list[Problem]:
        """The model and label files exist; the message says how to fetch the default ones."""
        hint = f": fetch it with `{FETCH_COMMAND}` (scripts/setup.sh runs it)"
        return [Problem(file, f"{key}.{name}", f"{path} does not exist"
                        + (hint if path.name in (DEFAULT_MODEL.name, DEFAULT_LABELS.name)
                           else ""))
                for name, path in (("model", self.model), ("labels_file", self.labels_file))
                if not path.is_file()]


def read_labels(path: Path) -> dict[int, str]:
    """Class id -> name from a label map (`0  person` lines, ids marked `n/a` left out; or
    bare names by line index).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("0  person\\n2  car\\n")
    >>> read_labels(Path(f.name)); os.unlink(f.name)
    {0: 'person', 2: 'car'}
    """
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectorError(f"detector.labels_file: cannot read {path}: {exc}") from None
    matches = [_LABEL_LINE.match(ln) for ln in lines]
    if lines and all(matches):  # Coral's own copy marks COCO's unused ids `n/a`
        return {int(m[1]): m[2] for m in matches if m and m[2] not in _UNUSED}
    if any(matches):
        raise DetectorError(f"detector.labels_file: {path} mixes `<id> <name>` lines with "
                            "bare names")
    return {i: ln.strip() for i, ln in enumerate(lines)}


def _role(name: str) -> str | None:
    """What an output's name says it holds: TFLite_Detection_PostProcess names its outputs
    `...`, `...:1` (classes), `...:2` (scores), `...:3` (count); other exporters may say it
    in words, or only number their outputs (TF2's `StatefulPartitionedCall:N`: None)."""
    op = name.startswith("tflite_detection_postprocess")
    if (op and name.endswith(":1")) or "class" in name:
        return "classes"
    if (op and name.endswith(":2")) or "score" in name:
        return "scores"
    return None


def _outputs(details: list[dict[str, Any]], values: list[npt.NDArray[Any]], path: Path
             ) -> tuple[int, int, int, int]:
    """Indexes (into `details`) of boxes, classes, scores and count, found by shape, then
    by name, then by value (class ids are whole numbers, scores are not)."""
    shapes = [tuple(int(d) for d in v.shape) for v in values]
    boxes = [i for i, s in enumerate(shapes) if len(s) == 3 and s[0] == 1 and s[2] == 4]
    count = [i for i, s in enumerate(shapes) if int(np.prod(s)) == 1]
    rest = [i for i, s in enumerate(shapes) if len(s) == 2 and s[0] == 1]
    if len(details) != 4 or len(boxes) != 1 or len(count) != 1 or len(rest) != 2 \
            or shapes[rest[0]] != shapes[rest[1]] or shapes[rest[0]][1] != shapes[boxes[0]][1]:
        raise DetectorError(
            f"detector.model: {path} outputs {[list(s) for s in shapes]}; expected boxes "
            "[1, N, 4], classes [1, N], scores [1, N], count [1] (an SSD exported with "
            "TFLite_Detection_PostProcess)")
    roles = [_role(str(details[i]["name"]).lower()) for i in rest]
    if roles == ["scores", "classes"]:
        rest.reverse()
    elif roles != ["classes", "scores"]:
        whole = [bool(np.all(values[i] == np.round(values[i]))) for i in rest]
        if whole.count(True) != 1:
            raise DetectorError(f"detector.model: {path}: cannot tell class ids from scores "
                                f"among outputs {[details[i]['name'] for i in rest]}")
        if not whole[0]:
            rest.reverse()
    return boxes[0], rest[0], rest[1], count[0]


class TFLiteDetector:
    """A TFLite SSD behind the `Detector` interface.

    Everything that can be wrong with the model file is checked when the detector is created,
    including one warm-up inference, so a bad file stops startup with the reason.
    """

    def __init__(self, settings: TFLiteDetectorSettings) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise DetectorError(f"the tflite backend needs LiteRT ({exc}): pip install "
                                "ai-edge-litert") from None
        self.phases = PhaseTimes()
        path = settings.model
        if not path.is_file():
            raise DetectorError(f"detector.model: {path} does not exist (fetch it with "
                                f"`{FETCH_COMMAND}`)")
        table = read_labels(settings.labels_file)
        try:
            self._interp: Any = Interpreter(model_path=str(path), num_threads=settings.threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DetectorError(f"detector.model: {path} is not a loadable TFLite model: "
                                f"{exc}") from None
        inputs = self._interp.get_input_details()
        shape = [int(d) for d in inputs[0]["shape"]] if len(inputs) == 1 else []
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 \
                or inputs[0]["dtype"] is not np.uint8:
            got = [(list(d["shape"]), np.dtype(d["dtype"]).name) for d in inputs]
            raise DetectorError(f"detector.model: {path} takes {got}; expected one uint8 "
                                "input [1, H, W, 3] (RGB)")
        self._input = int(inputs[0]["index"])
        self._hw = (shape[1], shape[2])
        self.input_size = max(self._hw)
        self.max_batch = 8
        """Crops per `detect` call the service should gather; each is its own `invoke`."""
        self._conf, self._iou = settings.confidence, settings.iou
        self.labels = tuple(table[k] for k in sorted(table))
        lookup = np.full(max(table) + 1 if table else 0, -1, np.int64)
        lookup[sorted(table)] = np.arange(len(table))
        self._lookup = lookup
        """Model class id -> index into `labels`; -1 for ids the label map lacks."""
        self._class_ids = class_ids(self.labels, settings.classes)
        details = self._interp.get_output_details()
        values = self._invoke(np.full((*self._hw, 3), PAD_VALUE, np.uint8), details, path)
        order = _outputs(details, values, path)
        self._outputs = [int(details[i]["index"]) for i in order]
        log.info("tflite detector: %s, %d labels, input %dx%d, %d thread(s)", path,
                 len(self.labels), self._hw[1], self._hw[0], settings.threads)

    def _invoke(self, rgb: Image, details: list[dict[str, Any]], path: Path
                ) -> list[npt.NDArray[Any]]:
        """The warm-up run: a model that fails on its own input size fails here."""
        try:
            self._interp.set_tensor(self._input, rgb[None])
            self._interp.invoke()
            return [self._interp.get_tensor(int(d["index"])) for d in details]
        except (ValueError, RuntimeError) as exc:
            raise DetectorError(f"detector.model: {path} fails on a blank image: {exc}"
                                ) from None

    def _letterbox(self, image: Image) -> tuple[Image, float, tuple[int, int]]:
        """BGR (h, w, 3) -> RGB (H, W, 3) model input, scale and (pad_x, pad_y)."""
        h, w = image.shape[:2]
        mh, mw = self._hw
        scale = min(mw / w, mh / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        px, py = (mw - nw) // 2, (mh - nh) // 2
        canvas = np.full((mh, mw, 3), PAD_VALUE, np.uint8)
        canvas[py:py + nh, px:px + nw] = resized[:, :, ::-1]
        return canvas, scale, (px, py)

    def _decode(self, raw: list[npt.NDArray[Any]], scale: float, pad: tuple[int, int],
                wh: tuple[int, int]) -> Detections:
        boxes, classes, scores = raw[0][0], raw[1][0], raw[2][0]
        n = min(int(raw[3].reshape(-1)[0]), len(scores))
        score = np.asarray(scores[:n], np.float32)
        model_id = np.asarray(classes[:n]).round().astype(np.int64)
        known = (model_id >= 0) & (model_id < len(self._lookup))
        cls = np.full(n, -1, np.int64)
        cls[known] = self._lookup[model_id[known]]
        keep = (score >= self._conf) & (cls >= 0)
        if self._class_ids is not None:
            keep &= np.isin(cls, self._class_ids)
        if not keep.any():
            return Detections.empty(self.labels)
        mh, mw = self._hw
        yx = np.asarray(boxes[:n][keep], np.float32) * np.array([mh, mw, mh, mw], np.float32)
        w, h = wh
        xyxy: FloatArray = np.stack([yx[:, 1] - pad[0], yx[:, 0] - pad[1],
                                     yx[:, 3] - pad[0], yx[:, 2] - pad[1]], axis=1) / scale
        np.clip(xyxy, 0, np.array([w, h, w, h], np.float32), out=xyxy)
        score, kept_cls = score[keep], cls[keep]
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        xyxy, score, kept_cls = xyxy[ok], score[ok], kept_cls[ok]
        best: IntArray = np.asarray(nms(xyxy, score, self._iou, kept_cls), np.int64)
        return Detections(xyxy[best], score[best], kept_cls[best], labels=self.labels)

    def detect(self, images: Sequence[Image]) -> list[Detections]:
        interp = self._interp
        if interp is None:
            raise DetectorError("tflite detector used after close()")
        results: list[Detections] = []
        for image in images:
            h, w = image.shape[:2]
            if w == 0 or h == 0:
                results.append(Detections.empty(self.labels))
                continue
            with self.phases.phase("preprocess"):
                tensor, scale, pad = self._letterbox(image)
            with self.phases.phase("inference"):
                interp.set_tensor(self._input, tensor[None])
                interp.invoke()
                raw = [interp.get_tensor(i) for i in self._outputs]
            with self.phases.phase("postprocess"):
                results.append(self._decode(raw, scale, pad, (w, h)))
        return results

    def close(self) -> None:
        self._interp = None
