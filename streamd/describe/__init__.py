"""Describers turn one detected object into words, off the video path.

Backends register here by their YAML `backend:` key, as detectors do: each backend module
holds its `KEY`, its settings model and its class, which takes those settings; the
`DescriberSettings` union below is what the `describer:` section validates against. Heavy
imports (torch, transformers) happen when a backend is created, so importing this package
costs nothing for backends that are not configured. `DescriberService` (in `service.py`)
owns scheduling, rate limits, the queue and the cache, so a backend only answers
`describe(request) -> str`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import Field, SecretStr

from streamd.describe import clip, openai, template, transformers
from streamd.describe.base import (
    Describer,
    DescribeRequest,
    DescriberError,
    Description,
    NoDescriberSettings,
)

__all__ = ["BACKENDS", "DescribeRequest", "Describer", "DescriberError", "DescriberSettings",
           "Description", "create_describer"]

DescriberSettings = Annotated[
    template.TemplateDescriberSettings | transformers.TransformersDescriberSettings
    | openai.OpenAIDescriberSettings | clip.CLIPDescriberSettings | NoDescriberSettings,
    Field(discriminator="backend")]
"""The `describer:` section: one settings model per backend, chosen by `backend:`."""

BACKENDS: dict[str, Callable[..., Describer]] = {
    template.KEY: template.TemplateDescriber,
    transformers.KEY: transformers.TransformersDescriber,
    openai.KEY: openai.OpenAIDescriber,
    clip.KEY: clip.CLIPDescriber,
}
"""YAML `backend:` -> the class that builds that describer from its settings."""


def create_describer(settings: DescriberSettings, api_key: SecretStr | None = None
                     ) -> Describer | None:
    """The configured describer, or None for `backend: none`.

    `api_key` (read with the config, see `Config.describer_api_key`) goes to the backends
    whose settings name a secret (`secret()`). Any failure to build the describer becomes a
    `DescriberError` naming the backend and the reason, so startup stops with one clear line.
    """
    if isinstance(settings, NoDescriberSettings):
        return None
    factory = BACKENDS.get(settings.backend)
    if factory is None:
        raise DescriberError(f"describer.backend: {settings.backend!r} is not available here "
                             f"(known: {', '.join(sorted(BACKENDS))})")
    try:
        if settings.secret() is not None:
            return factory(settings, api_key)
        return factory(settings)
    except DescriberError:
        raise
    except Exception as exc:
        raise DescriberError(f"{settings.backend} describer failed to start: {exc}") from exc
