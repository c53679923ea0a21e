"""`streamd export`: Ultralytics `.pt` weights -> an ONNX model ready for `streamd engine
build` and the onnxruntime backend.

The export runs Ultralytics' own ONNX exporter with a dynamic batch axis (so one engine
profile can cover min..max batch) and checks the result the way the detectors will use it:
one input [N, 3, H, W] with a symbolic N, one output [N, 4+C, A] (YOLOv8/YOLO11 head), and
the class names in the `names` metadata (added from the weights if the exporter left them
out). Ultralytics and torch are large, optional (`pip install streamd[export]`) and imported
only here; they belong on the machine that exports, not on the edge box.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.detect.yolo import parse_names

log = logging.getLogger(__name__)

EXPORT_EXTRA = "pip install streamd[export]"
DEFAULT_OPSET = 17
"""What TensorRT 8.6+/10.x and ONNX Runtime >= 1.14 parse, and the random fixture uses."""


class ExportError(Exception):
    """The export cannot run or produced a model streamd cannot use; the message says why."""


@dataclass(frozen=True)
class ExportInfo:
    """What `verify_onnx` found in an exported model."""

    path: Path
    names: tuple[str, ...]
    input_shape: tuple[int | str, ...]
    """[N, 3, H, W]; symbolic dimensions are their names."""
    output_shape: tuple[int | str, ...]


def _dims(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_param or "?" if not d.HasField("dim_value") else int(d.dim_value)
                 for d in dims)


def verify_onnx(path: Path, names: Sequence[str] | None = None) -> ExportInfo:
    """Check that `path` is a model the detectors take (dynamic batch, YOLOv8/YOLO11 output,
    class names); write `names` into its metadata when it has none. Needs the `onnx`
    package (part of the export extra)."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(f"the onnx package is missing ({exc}): {EXPORT_EXTRA}") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ExportError(f"{path} is not an ONNX model: {exc}") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise ExportError(f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs; "
                          "a YOLO detector has one input")
    shape_in, shape_out = _dims(inputs[0]), _dims(graph.output[0])
    if len(shape_in) != 4 or shape_in[1] != 3:
        raise ExportError(f"{path}: input {list(shape_in)}, expected [N, 3, H, W]")
    if isinstance(shape_in[0], int):
        raise ExportError(f"{path}: the batch axis is fixed at {shape_in[0]}; export with a "
                          "dynamic batch (dynamic=True) so an engine can batch crops")
    if len(shape_out) != 3 or (isinstance(shape_out[1], int) and isinstance(shape_out[2], int)
                               and shape_out[1] > shape_out[2]):
        raise ExportError(f"{path}: output {list(shape_out)}; streamd decodes the YOLOv8/YOLO11 "
                          "head [N, 4+C, anchors], not end-to-end (NMS-free) or YOLOv5 layouts")
    props = {p.key: p.value for p in model.metadata_props}
    found: tuple[str, ...] | None = None
    if "names" in props:
        try:
            found = tuple(parse_names(props["names"]))
        except ValueError as exc:
            raise ExportError(f"{path}: {exc}") from None
    elif names:
        found = tuple(names)
        entry = model.metadata_props.add()
        entry.key, entry.value = "names", str(dict(enumerate(found)))
        onnx.save(model, str(path))
        log.info("%s: added names metadata (%d classes)", path, len(found))
    if not found:
        raise ExportError(f"{path} has no `names` metadata; set detector.labels when using it")
    if isinstance(shape_out[1], int) and shape_out[1] != 4 + len(found):
        raise ExportError(f"{path}: output has {shape_out[1] - 4} classes, names has "
                          f"{len(found)}")
    return ExportInfo(path, found, shape_in, shape_out)


def export_onnx(weights: Path, out: Path, imgsz: int, *, opset: int = DEFAULT_OPSET,
                report: Callable[[str], None] = log.info) -> ExportInfo:
    """Export Ultralytics detection weights to `out` (ONNX, dynamic batch, names) and verify
    the result. `imgsz` is the square input size the model is traced at; H and W stay
    dynamic in the file, the engine build fixes them to `detector.input_size`."""
    if not weights.is_file():
        raise ExportError(f"{weights} does not exist")
    if imgsz % 32 or not 32 <= imgsz <= 2048:
        raise ExportError(f"--imgsz {imgsz}: must be a multiple of 32 in 32..2048")
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ExportError(f"Ultralytics is not installed ({exc}): {EXPORT_EXTRA} (pulls torch; "
                          "run it on a workstation, not the edge box)") from None
    report(f"loading {weights}")
    model = YOLO(str(weights))
    if getattr(model, "task", "detect") != "detect":
        raise ExportError(f"{weights} is a {model.task} model; streamd needs a detect model")
    names = model.names
    labels = ([names[i] for i in sorted(names)] if isinstance(names, dict) else list(names))
    report(f"exporting {weights} to ONNX (opset {opset}, imgsz {imgsz}, dynamic batch)")
    produced = Path(model.export(format="onnx", imgsz=imgsz, dynamic=True, opset=opset,
                                 simplify=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    if produced.resolve() != out.resolve():
        shutil.move(produced, out)
    info = verify_onnx(out, labels)
    report(f"wrote {out}: input {list(info.input_shape)}, output {list(info.output_shape)}, "
           f"{len(info.names)} classes")
    return info
