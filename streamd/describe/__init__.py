"""Describers turn one detected object into words, off the video path.

Backends register here by their YAML `backend:` key, as detectors do: each backend module
holds its `KEY` and its class, which takes that backend's settings. Heavy imports (torch,
transformers) happen when a backend is created, so importing this package costs nothing for
backends that are not configured. `DescriberService` (in `service.py`) owns scheduling, rate
limits, the queue and the cache, so a backend only answers `describe(request) -> str`.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from streamd.config import DescriberSettings, NoDescriberSettings
from streamd.describe import clip, openai, template, transformers
from streamd.describe.base import Describer, DescribeRequest, DescriberError, Description

__all__ = ["BACKENDS", "DescribeRequest", "Describer", "DescriberError", "Description",
           "create_describer"]

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

    `api_key` (read with the config, see `Config.describer_api_key`) goes to the one backend
    that sends it, `openai`. Any failure to build the describer becomes a `DescriberError`
    naming the backend and the reason, so startup stops with one clear line.
    """
    if isinstance(settings, NoDescriberSettings):
        return None
    factory = BACKENDS.get(settings.backend)
    if factory is None:
        raise DescriberError(f"describer.backend: {settings.backend!r} is not available here "
                             f"(known: {', '.join(sorted(BACKENDS))})")
    try:
        if settings.backend == openai.KEY:
            return factory(settings, api_key)
        return factory(settings)
    except DescriberError:
        raise
    except Exception as exc:
        raise DescriberError(f"{settings.backend} describer failed to start: {exc}") from exc
