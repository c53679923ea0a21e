"""How to ask each TensorRT version for a precision and a batch range, and how to read its
ONNX parser's errors. Plain Python: tested on any machine."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamd.detect.tensorrt.errors import EngineError

MIN_TENSORRT = (10, 0)
"""Name-based I/O and `execute_async_v3` with the batch in the tensor shape: TensorRT 10."""


@dataclass(frozen=True)
class BuilderOptions:
    """How to ask a given TensorRT for a given precision."""

    strongly_typed: bool
    """Create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED."""
    set_flags: tuple[str, ...]
    """BuilderFlag members to set."""
    clear_flags: tuple[str, ...]
    """BuilderFlag members to clear (TF32, on by default, would make fp32 inexact)."""
    calibrate: bool
    """Attach an INT8 entropy calibrator fed from `detector.calibration_dir`."""
    notes: tuple[str, ...] = ()
    """Deprecations worth a warning in the build log."""


def parse_version(version: str) -> tuple[int, int]:
    """'10.3.0.30' -> (10, 3).

    >>> parse_version("10.3.0.30")
    (10, 3)
    """
    m = re.match(r"^\s*(\d+)\.(\d+)", version)
    if m is None:
        raise EngineError(f"cannot read TensorRT version {version!r}")
    return int(m.group(1)), int(m.group(2))


def builder_options(tensorrt_version: str, precision: str) -> BuilderOptions:
    """The builder settings that give `precision` on `tensorrt_version`, or an EngineError
    that says what to do instead.

    - 10.x builds weakly typed networks: fp32 with TF32 off (so it matches ONNX Runtime),
      fp16 with BuilderFlag.FP16, int8 with BuilderFlag.INT8 + FP16 (layers without an int8
      kernel fall back to fp16, not fp32) and an entropy calibrator. Calibrators are
      deprecated from 10.1 and the weak-typing flags from 10.12; they still work there.
    - 11.x removed those flags and calibrators: every network is strongly typed and the
      precision is the one the ONNX file carries, so only fp32 (the ONNX types as they are)
      is buildable; fp16/int8 need a converted model (ModelOpt AutoCast or Q/DQ).
    - older than 10.0 or newer than 11: refused.

    >>> builder_options("10.3.0", "int8").set_flags
    ('INT8', 'FP16')
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise EngineError(f"precision {precision!r}: expected fp32, fp16 or int8")
    major, minor = parse_version(tensorrt_version)
    if (major, minor) < MIN_TENSORRT:
        raise EngineError(
            f"TensorRT {tensorrt_version} is too old: streamd needs TensorRT 10 (name-based "
            "I/O, execute_async_v3). JetPack 6 ships 10.3; on x86 `pip install streamd[trt]` "
            "installs 10.x")
    if major == 11:
        if precision != "fp32":
            raise EngineError(
                f"TensorRT {tensorrt_version} builds strongly typed networks only: the FP16 and "
                "INT8 builder flags and INT8 calibrators were removed in TensorRT 11, so "
                f"precision {precision} cannot be chosen at build time. Convert the ONNX model "
                "instead (fp16: NVIDIA ModelOpt AutoCast; int8: Q/DQ quantization with ModelOpt) "
                "and build it with precision: fp32, which keeps the model's own types; or use "
                "TensorRT 10.x")
        return BuilderOptions(True, (), (), False, (
            "TensorRT 11 builds strongly typed: the engine runs in the ONNX model's own types",))
    if major > 11:
        raise EngineError(f"TensorRT {tensorrt_version} is newer than streamd supports "
                          "(10.x, and 11.x for fp32/strongly typed models)")
    notes: list[str] = []
    if precision == "fp32":
        return BuilderOptions(False, (), ("TF32",), False)
    if minor >= 12:
        notes.append(f"TensorRT {tensorrt_version} deprecates weakly typed {precision} builds "
                     "(BuilderFlag.FP16/INT8); TensorRT 11 removes them")
    if precision == "fp16":
        return BuilderOptions(False, ("FP16",), (), False, tuple(notes))
    if minor >= 1:
        notes.append(f"TensorRT {tensorrt_version} deprecates INT8 calibration (removed in "
                     "TensorRT 11, which needs Q/DQ models); it still works here")
    return BuilderOptions(False, ("INT8", "FP16"), (), True, tuple(notes))


def profile_shapes(network_input: Sequence[int], input_size: int, batch: tuple[int, int, int]
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of the optimization profile for a network input of shape
    `network_input` (-1 = dynamic), or an EngineError when the model cannot take them.

    >>> profile_shapes([-1, 3, -1, -1], 320, (1, 4, 8))
    ((1, 3, 320, 320), (4, 3, 320, 320), (8, 3, 320, 320))
    """
    dims = list(network_input)
    if len(dims) != 4 or dims[1] not in (3, -1):
        raise EngineError(f"the model's input is {dims}; a YOLO detector takes [N, 3, H, W]")
    fixed_hw = [d for d in dims[2:] if d != -1]
    if fixed_hw and fixed_hw != [input_size] * len(fixed_hw):
        raise EngineError(f"the model takes {dims[2]}x{dims[3]} images; set "
                          f"detector.input_size to match (it is {input_size})")
    if dims[0] != -1 and batch != (dims[0],) * 3:
        raise EngineError(
            f"the model has a fixed batch of {dims[0]}; export it with a dynamic batch axis "
            f"(`streamd export`, or yolo export dynamic=True), or set min_batch, opt_batch and "
            f"max_batch to {dims[0]}")
    return tuple((b, 3, input_size, input_size) for b in batch)  # type: ignore[return-value]


def format_parser_error(error: Any) -> str:
    """One line for a TensorRT ONNX parser error (`OnnxParser.get_error(i)`): description,
    node index, and node name/operator where this TensorRT version reports them."""
    parts = [str(error.desc()).strip()]
    where = []
    node = int(error.node())
    if node >= 0:
        where.append(f"node {node}")
    for attr in ("node_name", "node_operator"):
        getter = getattr(error, attr, None)
        value = str(getter()).strip() if callable(getter) else ""
        if value:
            where.append(value)
    if where:
        parts.append(f"({', '.join(where)})")
    code = getattr(error.code(), "name", str(error.code()))
    return f"{code}: {' '.join(parts)}"
