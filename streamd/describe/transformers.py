"""`transformers` backend: a local Hugging Face image-text-to-text model (SmolVLM, Idefics3,
LLaVA, Florence-2, Qwen2.5-VL, ...) loaded from a directory, never from a hub.

`AutoProcessor` + `AutoModelForImageTextToText` cover every such architecture with one code
path: the prompt goes through the processor's chat template when it has one (chat models)
and as plain text otherwise (Florence-2's task tokens), generation is greedy and bounded by
`max_new_tokens`, and only the new tokens are decoded. The model answers one warm-up
question at start, so a directory that cannot describe stops startup instead of failing on
the first object.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from streamd.describe.base import DescribeRequest, DescriberError, PromptedDescriberSettings
from streamd.describe.hf import (
    LocalModelSettings,
    device_and_dtype,
    import_vl,
    model_dir,
    processor_size,
    to_device,
)
from streamd.describe.inputs import render_prompt
from streamd.frames import Image

log = logging.getLogger(__name__)

KEY = "transformers"
DEFAULT_SIZE = 512
"""Crop side when the processor names none."""


class TransformersDescriberSettings(PromptedDescriberSettings, LocalModelSettings):
    """`backend: transformers`: a local image-text-to-text model (e.g. SmolVLM)."""

    backend: Literal["transformers"]
    image_size: int | None = Field(
        None, ge=32, le=4096, description="Longest crop side handed to the processor; "
        "default: what the model's processor says it works at.")
    trust_remote_code: bool = Field(
        False, description="Run Python shipped in the model directory (some models need it). "
        "Only for directories you trust.")
    processor_options: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="Extra keyword arguments for the processor call, "
        "e.g. {do_image_splitting: false} so SmolVLM sees a crop as one tile.")


class TransformersDescriber:
    """An image-text-to-text model behind the `Describer` interface."""

    square_input = False

    def __init__(self, settings: TransformersDescriberSettings) -> None:
        torch, transformers = import_vl(KEY)
        path = model_dir(settings.model)
        self._torch = torch
        self._device, self._dtype = device_and_dtype(torch, settings.device, settings.dtype)
        self._max_new_tokens = settings.max_new_tokens
        self._options = dict(settings.processor_options)
        try:
            self._processor: Any = transformers.AutoProcessor.from_pretrained(
                path, local_files_only=True, trust_remote_code=settings.trust_remote_code)
            model = transformers.AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, dtype=self._dtype,
                trust_remote_code=settings.trust_remote_code)
        except Exception as exc:  # OSError, ValueError, KeyError: whatever the loader raises
            raise DescriberError(f"describer.model: {path} cannot be loaded as an "
                                 f"image-text-to-text model: {exc}") from None
        self._model: Any = model.to(self._device).eval()
        self._chat = bool(getattr(self._processor, "chat_template", None))
        self.model = path.name
        self.input_size = settings.image_size or processor_size(self._processor, DEFAULT_SIZE)
        # The operator's own default prompt: a raw-prompt model must accept it as written.
        warm_prompt = render_prompt(settings.prompt, "person", "warm-up", "centre")
        try:
            self._generate(np.full((self.input_size, self.input_size, 3), 127, np.uint8),
                           warm_prompt, max_new_tokens=1)
        except Exception as exc:
            raise DescriberError(f"describer.model: {path} failed its warm-up generation: "
                                 f"{exc}") from exc
        log.info("transformers describer: %s (%s), device %s, dtype %s, crops <= %d px, %s "
                 "prompt", path, type(self._model).__name__, self._device,
                 str(self._dtype).removeprefix("torch."), self.input_size,
                 "chat-template" if self._chat else "plain")

    def describe(self, request: DescribeRequest) -> str:
        if request.crop is None:
            raise ValueError("request has no crop (DescriberService adds it)")
        return self._generate(request.crop, request.prompt, self._max_new_tokens)

    def _generate(self, crop: Image, prompt: str, max_new_tokens: int) -> str:
        model = self._model  # one read: close() may drop it meanwhile
        if model is None:
            raise DescriberError("transformers describer used after close()")
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        if self._chat:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": prompt}]}]
            text = self._processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            text = prompt
        batch = self._processor(images=[rgb], text=[text], return_tensors="pt",
                                **self._options)
        inputs = to_device(batch, self._device, self._dtype)
        with self._torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        prompt_ids = inputs["input_ids"]
        n = prompt_ids.shape[1]
        # Decoder-only models echo the prompt before the answer; encoder-decoder ones
        # (Florence-2) return only the answer.
        if out.shape[1] >= n and self._torch.equal(out[0, :n], prompt_ids[0]):
            out = out[:, n:]
        answer: str = self._processor.batch_decode(out, skip_special_tokens=True)[0]
        return answer.strip()

    def close(self) -> None:
        """Drop the model (and its GPU memory once no call uses it). Never waits for a
        generation in progress, so a stuck model cannot hold up shutdown. Safe to call
        twice."""
        if self._model is None:
            return
        self._model = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
