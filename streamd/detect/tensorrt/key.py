"""The cache key: everything a serialized TensorRT engine depends on.

A serialized engine only runs on the TensorRT version and GPU model it was built with, and it
bakes in the precision, the input shape and the batch range. None of that can be read back
from the plan cheaply, so streamd keys every engine it builds on an `EngineKey`, spells the key
in the file name (plus a digest of all of it) so engines for several configs or GPUs can share
one cache directory, and lists the differences field by field when a cached engine is stale:
an operator reads "TensorRT version: engine 10.0.1, here 10.3.0" instead of a
deserialization error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINE_SUFFIX = ".engine"


@dataclass(frozen=True)
class GpuInfo:
    """The device an engine is built for: TensorRT plans are specific to the GPU model."""

    name: str
    compute_capability: str
    """"major.minor", e.g. "8.7" for Jetson Orin."""


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on. Two engines are interchangeable exactly when
    their keys are equal."""

    onnx_sha256: str
    tensorrt: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, int, int]
    """(C, H, W) of one image."""
    batch: tuple[int, int, int]
    """(min, opt, max) of the optimization profile's batch axis."""

    def digest(self) -> str:
        """Short hash of every field; ends the file name so that no two keys collide."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def file_name(self, model_stem: str) -> str:
        """`<model>.<precision>.<H>x<W>.b<min>-<opt>-<max>.sm<cc>.trt<version>.<digest>.engine`:
        readable in `ls`, unique per key.

        >>> key = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", (3, 320, 320), (1, 4, 8))
        >>> key.file_name("yolov8n")
        'yolov8n.fp16.320x320.b1-4-8.sm87.trt10.3.0.0356bcd66dfc.engine'
        """
        _, h, w = self.input_shape
        lo, opt, hi = self.batch
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", model_stem) or "model"
        cc = self.compute_capability.replace(".", "")
        version = re.sub(r"[^0-9.]+", "_", self.tensorrt)
        return (f"{stem}.{self.precision}.{h}x{w}.b{lo}-{opt}-{hi}.sm{cc}.trt{version}."
                f"{self.digest()}{ENGINE_SUFFIX}")

    def to_json(self) -> dict[str, Any]:
        return {"onnx_sha256": self.onnx_sha256, "tensorrt": self.tensorrt,
                "gpu_name": self.gpu_name, "compute_capability": self.compute_capability,
                "precision": self.precision, "input_shape": list(self.input_shape),
                "batch": list(self.batch)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineKey:
        """Inverse of `to_json`; KeyError/TypeError/ValueError on a malformed record."""
        shape = tuple(int(v) for v in data["input_shape"])
        batch = tuple(int(v) for v in data["batch"])
        if len(shape) != 3 or len(batch) != 3:
            raise ValueError("input_shape and batch must have 3 entries each")
        return cls(str(data["onnx_sha256"]), str(data["tensorrt"]), str(data["gpu_name"]),
                   str(data["compute_capability"]), str(data["precision"]),
                   (shape[0], shape[1], shape[2]), (batch[0], batch[1], batch[2]))


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def diff_keys(wanted: EngineKey, found: EngineKey) -> list[str]:
    """What makes `found` (an engine on disk) unusable where `wanted` is needed, one line per
    field, in the words an operator knows; [] when they are the same.

    >>> import dataclasses
    >>> a = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", (3, 320, 320), (1, 8, 8))
    >>> diff_keys(a, dataclasses.replace(a, tensorrt="10.0.1", precision="fp32"))
    ['TensorRT version: engine 10.0.1, here 10.3.0', 'precision: engine fp32, wanted fp16']
    """
    out = []
    if found.onnx_sha256 != wanted.onnx_sha256:
        out.append(f"ONNX model: engine built from sha256 {found.onnx_sha256[:12]}…, the "
                   f"model file is now {wanted.onnx_sha256[:12]}…")
    if found.tensorrt != wanted.tensorrt:
        out.append(f"TensorRT version: engine {found.tensorrt}, here {wanted.tensorrt}")
    if found.gpu_name != wanted.gpu_name:
        out.append(f"GPU: engine built on {found.gpu_name!r}, here {wanted.gpu_name!r}")
    if found.compute_capability != wanted.compute_capability:
        out.append(f"compute capability: engine sm {found.compute_capability}, here sm "
                   f"{wanted.compute_capability}")
    if found.precision != wanted.precision:
        out.append(f"precision: engine {found.precision}, wanted {wanted.precision}")
    if found.input_shape != wanted.input_shape:
        out.append(f"input shape: engine {_fmt_shape(found.input_shape)}, wanted "
                   f"{_fmt_shape(wanted.input_shape)}")
    if found.batch != wanted.batch:
        out.append(f"batch range (min/opt/max): engine {'/'.join(map(str, found.batch))}, "
                   f"wanted {'/'.join(map(str, wanted.batch))}")
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (models can be hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
