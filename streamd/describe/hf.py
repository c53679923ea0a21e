"""What the local-model backends (`transformers`, `clip`) share: importing torch and
transformers only when such a backend is configured, with an error that says how to get
them; picking device and dtype; loading strictly from a directory, never from a hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import Field

from streamd.describe.base import DescriberError, DescriberSettingsBase
from streamd.settings import Problem

INSTALL_HINT = "pip install 'streamd[vl]' (torch, transformers, pillow)"


class LocalModelSettings(DescriberSettingsBase):
    """Where a local Hugging Face model is and how it runs; mixed into the settings of the
    backends that load one (`transformers`, `clip`), so their preflight checks it."""

    model: Path = Field(description="Hugging Face model directory (config.json, weights, "
                        "processor files); loaded offline, never downloaded.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="`auto`: cuda when torch sees a GPU, else cpu.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="`auto`: float16 on cuda, float32 on cpu.")

    def preflight(self, file: str, key: str) -> list[Problem]:
        """The model directory is one, and torch and transformers are installed."""
        problems: list[Problem] = []
        if not self.model.is_dir():
            problems.append(Problem(file, f"{key}.model", f"{self.model} does not exist: "
                                    "put a Hugging Face model directory there (README, "
                                    "Describers)"))
        elif not (self.model / "config.json").is_file():
            problems.append(Problem(file, f"{key}.model", f"{self.model} has no "
                                    "config.json: not a Hugging Face model directory"))
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(Problem(file, f"{key}.backend", f"{self.backend} needs "
                                    f"{' and '.join(missing)}: pip install 'streamd[vl]'"))
        return problems


def import_vl(backend: str) -> tuple[ModuleType, ModuleType]:
    """(torch, transformers), imported now: they take seconds and a gigabyte, so streamd pays
    for them only when a backend that needs them is configured."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise DescriberError(f"describer.backend {backend} needs torch and transformers, "
                             f"which are not installed ({exc.name}): {INSTALL_HINT}") from None
    transformers.logging.disable_progress_bar()  # noise in a daemon's journal
    return torch, transformers


def model_dir(path: Path) -> Path:
    """The model directory, or a DescriberError saying what is missing."""
    if not path.is_dir():
        raise DescriberError(f"describer.model: {path} does not exist: put a Hugging Face "
                             "model directory there (see README, Describers)")
    if not (path / "config.json").is_file():
        raise DescriberError(f"describer.model: {path} has no config.json: not a Hugging "
                             "Face model directory")
    return path


def device_and_dtype(torch: Any, device: str, dtype: str) -> tuple[Any, Any]:
    """`auto` device is cuda when torch sees a GPU; `auto` dtype is float16 there (half the
    memory and bandwidth, what Jetson's GPU is fast at) and float32 on a CPU, where half
    precision is slow or unsupported."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise DescriberError(f"describer.device: {device} asked for, but torch sees no CUDA "
                             f"GPU (torch {torch.__version__})")
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, dtype)


def processor_size(processor: Any, default: int) -> int:
    """The side (px) the processor resizes images to, from whichever of the usual keys it
    uses (`max_image_size` first: Idefics3/SmolVLM's tile); `default` when it names none.
    Values outside 32..4096 are pixel counts (Qwen2-VL's min/max pixels), not sides."""
    image_processor = getattr(processor, "image_processor", processor)
    for attr in ("max_image_size", "size", "crop_size"):
        spec: Any = getattr(image_processor, attr, None)
        if not hasattr(spec, "get"):
            continue
        for key in ("longest_edge", "shortest_edge", "height"):
            value = spec.get(key)
            if isinstance(value, int) and 32 <= value <= 4096:
                return value
    return default


def to_device(batch: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """Move a processor's output to the model: floating tensors (pixels) also to the model's
    dtype, integer ones (token ids, masks) unchanged."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if hasattr(value, "to"):
            value = value.to(device, dtype=dtype) if value.is_floating_point() \
                else value.to(device)
        out[key] = value
    return out
