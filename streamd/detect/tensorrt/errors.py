"""The error every part of the engine cache and build raises."""

from __future__ import annotations

from streamd.detect.base import DetectorError


class EngineError(DetectorError):
    """An engine cannot be built, found or loaded; the message says why and what to do."""
