"""`clip` backend: zero-shot tagging of each crop against a configured vocabulary.

A CLIP-family model (CLIP, SigLIP: anything with `get_text_features`/`get_image_features`)
from a directory. The vocabulary's text embeddings are computed once at start; a description
is then one image-encoder pass and a (1, D) x (D, T) product, milliseconds on a Jetson GPU,
which makes it cheap enough to run on every object. The text is the best tags with their
probabilities, e.g. `person: red jacket (62%), backpack (21%)`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from streamd.describe.base import DescriberBaseSettings, DescribeRequest, DescriberError
from streamd.describe.hf import (
    LocalModelSettings,
    device_and_dtype,
    import_vl,
    model_dir,
    processor_size,
    to_device,
)
from streamd.settings import check_placeholders

log = logging.getLogger(__name__)

KEY = "clip"
DEFAULT_SIZE = 224


class CLIPDescriberSettings(DescriberBaseSettings, LocalModelSettings):
    """`backend: clip`: tags from a fixed vocabulary, scored zero-shot by a local CLIP."""

    backend: Literal["clip"]
    vocabulary: list[str] = Field(
        min_length=2, description="Tags each crop is scored against (zero-shot).")
    vocabularies: dict[str, list[str]] = Field(
        default_factory=dict, description="Tags per label (overrides `vocabulary`).")
    text_template: str = Field(
        "a photo of {tag}", description="How a tag is phrased for the text encoder; "
        "placeholders {tag}, {label}.")
    top_k: int = Field(3, ge=1, le=50, description="Tags per description at most.")
    min_score: float = Field(
        0.1, ge=0.0, le=1.0, description="Tags below this probability are left out (the best "
        "one is always kept).")

    @field_validator("text_template")
    @classmethod
    def _text_template(cls, v: str) -> str:
        return check_placeholders(v, frozenset({"tag", "label"}))

    @field_validator("vocabularies")
    @classmethod
    def _vocabularies(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for label, tags in v.items():
            if len(tags) < 2:
                raise ValueError(f"{label}: needs at least 2 tags to choose between")
        return v


def _features(out: Any) -> Any:
    """transformers 4.x returns the projected embeddings as a tensor, 5.x as the
    `pooler_output` of a model output."""
    return out if hasattr(out, "norm") else out.pooler_output


class CLIPDescriber:
    """Scores each crop against the tags of its label's vocabulary."""

    square_input = True

    def __init__(self, settings: CLIPDescriberSettings) -> None:
        torch, transformers = import_vl(KEY)
        path = model_dir(settings.model)
        self._torch = torch
        self._device, self._dtype = device_and_dtype(torch, settings.device, settings.dtype)
        self._top_k, self._min_score = settings.top_k, settings.min_score
        try:
            self._processor: Any = transformers.AutoProcessor.from_pretrained(
                path, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                           dtype=self._dtype)
        except Exception as exc:
            raise DescriberError(f"describer.model: {path} cannot be loaded as a CLIP-style "
                                 f"model: {exc}") from None
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise DescriberError(f"describer.model: {path} is a {type(model).__name__}, "
                                 "not a CLIP-style model (no text and image encoders)")
        self._model: Any = model.to(self._device).eval()
        self.model = f"clip:{path.name}"
        self.input_size = processor_size(self._processor, DEFAULT_SIZE)
        scale = getattr(model, "logit_scale", None)
        self._scale = float(scale.detach().exp()) if scale is not None else 100.0
        self._tags: dict[str | None, tuple[list[str], Any]] = {}
        """label (None: the default vocabulary) → (tags, normalised text embeddings (T, D))."""
        try:
            self._tags[None] = self._embed(settings.vocabulary, settings.text_template, "")
            for label, tags in settings.vocabularies.items():
                self._tags[label] = self._embed(tags, settings.text_template, label)
            self._image_features(model, np.full((self.input_size, self.input_size, 3), 127,
                                                np.uint8))
        except Exception as exc:
            raise DescriberError(f"describer.model: {path} failed to embed the vocabulary: "
                                 f"{exc}") from exc
        log.info("clip describer: %s (%s), device %s, %d tags (+%d label vocabularies), "
                 "crops %d px", path, type(model).__name__, self._device,
                 len(settings.vocabulary), len(settings.vocabularies), self.input_size)

    def _embed(self, tags: list[str], template: str, label: str) -> tuple[list[str], Any]:
        texts = [template.format(tag=tag, label=label) for tag in tags]
        batch = self._processor(text=texts, return_tensors="pt", padding=True)
        with self._torch.inference_mode():
            feats = _features(self._model.get_text_features(
                **to_device(batch, self._device, self._dtype)))
        return list(tags), feats / feats.norm(dim=-1, keepdim=True)

    def _image_features(self, model: Any, crop_rgb: np.ndarray) -> Any:
        batch = self._processor(images=[crop_rgb], return_tensors="pt")
        with self._torch.inference_mode():
            feats = _features(model.get_image_features(
                **to_device(batch, self._device, self._dtype)))
        return feats / feats.norm(dim=-1, keepdim=True)

    def scores(self, request: DescribeRequest) -> list[tuple[str, float]]:
        """Every tag of the request's vocabulary with its probability, best first."""
        if request.crop is None:
            raise ValueError("request has no crop (DescriberService adds it)")
        model, tags_by_label = self._model, self._tags  # close() may drop them meanwhile
        if model is None or not tags_by_label:
            raise DescriberError("clip describer used after close()")
        tags, text = tags_by_label.get(request.label, tags_by_label[None])
        image = self._image_features(model, cv2.cvtColor(request.crop, cv2.COLOR_BGR2RGB))
        probs = ((image @ text.T) * self._scale).softmax(dim=-1)[0].float().cpu().numpy()
        order = np.argsort(-probs)
        return [(tags[i], float(probs[i])) for i in order]

    def describe(self, request: DescribeRequest) -> str:
        ranked = self.scores(request)
        kept = [ranked[0]] + [(t, p) for t, p in ranked[1:self._top_k] if p >= self._min_score]
        return f"{request.label}: " + ", ".join(f"{t} ({p:.0%})" for t, p in kept)

    def close(self) -> None:
        """Drop the model and the embeddings, without waiting for a call in progress.
        Safe to call twice."""
        if self._model is None:
            return
        self._model = None
        self._tags = {}
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
