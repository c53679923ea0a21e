"""Counters that must never go backwards, across daemon restarts and crashes.

Subscribers join messages on (camera, frame_id) and watch `seq` for gaps, so both are
persisted in the state directory. Writing on every increment would cost a disk write per
frame; instead each counter *reserves* a block ahead and persists the end of the block.
A clean shutdown persists exact values (so `seq` stays contiguous across a restart); after a
crash the daemon resumes from the reserved end, so ids jump forward, never back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE = 1000
"""Counter values handed out per persisted write."""


class StateStore:
    """A JSON file of named high-water marks, written atomically (write, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "counters.json"
        self._lock = threading.Lock()
        self._marks: dict[str, int] = {}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                raw = json.loads(self.path.read_text())
                self._marks = {str(k): int(v) for k, v in raw.items()}
        except (OSError, ValueError) as exc:
            # A daemon that cannot start because of a damaged counter file needs a human;
            # one that starts from zero only breaks ordering guarantees, so say it loudly.
            log.error("state file %s unreadable (%s); counters restart from 0", self.path, exc)
            self._marks = {}

    def mark(self, name: str) -> int:
        with self._lock:
            return self._marks.get(name, 0)

    def set_marks(self, marks: dict[str, int]) -> None:
        with self._lock:
            self._marks.update(marks)
            snapshot = dict(self._marks)
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(snapshot, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot write state file %s: %s", self.path, exc)

    def counter(self, name: str) -> Counter:
        return Counter(self, name)


class Counter:
    """A monotonic counter whose next value is always above anything handed out before.

    `next()` is cheap and thread-safe; it touches the disk once per `RESERVE` values.
    """

    def __init__(self, store: StateStore, name: str) -> None:
        self._store = store
        self.name = name
        self._lock = threading.Lock()
        self._value = store.mark(name)
        self._reserved = self._value

    def next(self) -> int:
        with self._lock:
            self._value += 1
            if self._value > self._reserved:
                self._reserved = self._value + RESERVE
                self._store.set_marks({self.name: self._reserved})
            return self._value

    @property
    def value(self) -> int:
        """The last value handed out (0 if none)."""
        return self._value

    def commit(self) -> None:
        """Persist the exact value (clean shutdown), releasing the unused reservation."""
        with self._lock:
            self._reserved = self._value
            self._store.set_marks({self.name: self._value})
