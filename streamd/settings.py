"""What every settings model shares: strictness, names, template checks, problems.

Each stage and backend owns its settings model in its own module (Frigate-style: the key,
the model and the class live together) and subclasses `StrictModel`; `streamd.config`
assembles them into the root `Settings`. This module imports nothing from streamd, so any
stage can import it without a cycle.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Site and camera names become MQTT topic levels: no `/`, `+`, `#` or spaces."""


class StrictModel(BaseModel):
    """Base of every settings model: an unknown key is an error (a typo must not silently
    fall back to a default) and a validated tree cannot be changed behind the loader's back."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (`file`, `path`, `line`) and why."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<root>'}: {self.message}"


def check_placeholders(template: str, allowed: frozenset[str]) -> str:
    """Reject a template naming an unknown placeholder, so `{lable}` is a config error rather
    than a KeyError in a worker thread on the first object. Returns `template` unchanged."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)} "
                         f"in {template!r}; allowed: "
                         f"{', '.join('{' + n + '}' for n in sorted(allowed))}")
    return template
