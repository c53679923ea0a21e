"""The `tensorrt` detector's settings: its YAML key, its model, how and where its engine is
built and cached, and the checks that need the file system."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from streamd.detect.base import ModelDetectorSettings, model_file_problems
from streamd.settings import Problem

KEY = "tensorrt"
PREBUILT_SUFFIXES = (".engine", ".plan", ".trt")
"""A `detector.model` with one of these suffixes is a ready engine, loaded as it is."""


class TensorRTDetectorSettings(ModelDetectorSettings):
    """A TensorRT engine compiled from a YOLO ONNX model for this box's GPU (see
    engines/README.md). Engines are cached in `engine_dir` and keyed on the ONNX hash, the
    TensorRT version, the GPU, the precision, the input size and the batch range."""

    backend: Literal["tensorrt"]
    model: Path = Field(description="YOLOv8/YOLO11 ONNX file to build the engine from, or a "
                        "ready .engine/.plan (streamd's, or an Ultralytics export) loaded as is.")
    engine_dir: Path | None = Field(
        None, description="Engine cache (engines, JSON sidecars, timing and calibration "
        "caches); must be writable by the daemon. Default $CACHE_DIRECTORY (systemd "
        "CacheDirectory=), else ./engines.")
    build: Literal["auto", "never"] = Field(
        "auto", description="No matching engine cached: build it at startup (minutes on a "
        "Jetson), or refuse to start saying what differs.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16", description="int8 needs calibration_dir (TensorRT 10.x only).")
    calibration_dir: Path | None = Field(
        None, description="Images (jpg/png/bmp/webp) for int8 calibration, ideally a few "
        "hundred frames from the cameras.")
    min_batch: int = Field(1, ge=1, le=256, description="Smallest batch of the engine profile.")
    opt_batch: int | None = Field(
        None, ge=1, le=256, description="Batch TensorRT tunes kernels for; default max_batch.")
    max_batch: int = Field(8, ge=1, le=256, description="Crops per inference call at most.")
    input_size: int = Field(320, ge=32, le=2048, multiple_of=32,
                            description="Square side (px) of the engine's input.")
    workspace_mb: int = Field(1024, ge=16, le=1 << 20,
                              description="Builder scratch memory limit (MiB).")
    labels: list[str] | None = Field(
        None, description="Class names; default: the ONNX `names` metadata (or the "
        "Ultralytics engine header), else COCO.")
    device: int = Field(0, ge=0, le=63, description="CUDA device index.")

    @model_validator(mode="after")
    def _batches_and_calibration(self) -> TensorRTDetectorSettings:
        lo, opt, hi = self.batch_range
        if not lo <= opt <= hi:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {lo}/{opt}/{hi}")
        if self.precision == "int8" and self.calibration_dir is None and not self.prebuilt:
            raise ValueError("precision int8 needs calibration_dir (a folder of images)")
        return self

    @property
    def prebuilt(self) -> bool:
        """`model` is a ready engine (loaded as it is), not an ONNX file to build from."""
        return self.model.suffix.lower() in PREBUILT_SUFFIXES

    @property
    def batch_range(self) -> tuple[int, int, int]:
        """(min, opt, max) of the engine's batch axis."""
        opt = self.max_batch if self.opt_batch is None else self.opt_batch
        return self.min_batch, opt, self.max_batch

    def resolved_engine_dir(self) -> Path:
        """`engine_dir`, else systemd's CacheDirectory, else ./engines."""
        if self.engine_dir is not None:
            return self.engine_dir
        env = os.environ.get("CACHE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path("engines")

    def preflight(self, file: str, key: str) -> list[Problem]:
        """Model and calibration folder exist; the engine cache can be written when the
        daemon may have to build (the usual failure under systemd's ProtectSystem=strict)."""
        problems = model_file_problems(self.model, file, key)
        if self.precision == "int8" and self.calibration_dir is not None \
                and not self.prebuilt and not self.calibration_dir.is_dir():
            problems.append(Problem(file, f"{key}.calibration_dir",
                                    f"{self.calibration_dir} is not a directory"))
        if self.build == "auto" and not self.prebuilt:
            engine_dir = self.resolved_engine_dir()
            existing = next((p for p in (engine_dir, *engine_dir.absolute().parents)
                             if p.exists()), None)
            if existing is not None and not (existing.is_dir()
                                             and os.access(existing, os.W_OK | os.X_OK)):
                problems.append(Problem(
                    file, f"{key}.engine_dir", f"{engine_dir} is not writable by this user, "
                    "so no engine can be built there (under systemd: CacheDirectory=streamd "
                    "and leave engine_dir unset, or build it beforehand and set build: never)"))
        return problems
