"""Counters that must never go backwards, across daemon restarts and crashes.

Subscribers join messages on (camera, frame_id) and watch `seq` for gaps, so both are
persisted in the state directory. Writing on every increment would cost a disk write per
frame; instead each counter *reserves* a block ahead and persists the end of the block.
A clean shutdown persists exact values (so `seq` stays contiguous across a restart); after a
crash the daemon resumes from the reserved end, so ids jump forward, never back.

That promise holds only if the file on disk never holds an older snapshot than one a counter
already relied on. Several threads reserve at once (every camera's capture thread, the
publisher), so writes are serialised and numbered: a snapshot older than the one last
written is never written over it (see `StateStore.set_marks`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE = 1000
"""Counter values handed out per persisted write."""

_TMP_PREFIX = "counters."
_TMP_SUFFIX = ".tmp"


class StateStore:
    """A JSON file of named high-water marks, written atomically and durably (unique temp
    file, fsync, rename, fsync of the directory). One daemon per state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "counters.json"
        # _lock guards _marks and _generation, for dict operations only, never across I/O;
        # _write_lock serialises writers, so the last rename is always of the newest snapshot.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._marks: dict[str, int] = {}
        self._generation = 0  # bumped by every update
        self._written = 0  # the generation on disk: updates up to it are durable
        self._failing = False  # the last write failed (logged once, until one succeeds)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temp_files()
            if self.path.exists():
                raw = json.loads(self.path.read_text())
                self._marks = {str(k): int(v) for k, v in raw.items()}
        except (OSError, ValueError) as exc:
            # A daemon that cannot start because of a damaged counter file needs a human;
            # one that starts from zero only breaks ordering guarantees, so say it loudly.
            log.error("state file %s unreadable (%s); counters restart from 0", self.path, exc)
            self._marks = {}

    def _remove_stale_temp_files(self) -> None:
        """A process killed between creating its temp file and the rename leaves one behind;
        it never held the only copy of anything (the rename did not happen)."""
        for stale in self.directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)

    def mark(self, name: str) -> int:
        with self._lock:
            return self._marks.get(name, 0)

    def set_marks(self, marks: dict[str, int]) -> bool:
        """Record `marks`; True once a snapshot holding them is on disk, False if the write
        failed (logged when writes start failing and when they work again).

        Callers hand out values up to a mark only after this returns, so the file must never
        go back to a snapshot taken before: writers queue on `_write_lock`, each takes its
        snapshot only once it holds it, and one whose update a later writer already wrote
        returns without writing (concurrent reservations cost one write, not one each).
        """
        with self._lock:
            self._marks.update(marks)
            self._generation += 1
        with self._write_lock:
            with self._lock:
                generation = self._generation
                snapshot = dict(self._marks)
            if generation <= self._written:
                return True
            try:
                self._write(snapshot)
            except OSError as exc:
                if not self._failing:
                    log.error("cannot write state file %s: %s (retrying; a crash before it "
                              "works again may repeat frame_id/seq values)", self.path, exc)
                self._failing = True
                return False
            if self._failing:
                log.warning("state file %s written again", self.path)
                self._failing = False
            self._written = generation
            return True

    def _write(self, snapshot: dict[str, int]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(snapshot, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable only once the directory entry is: without this, a power cut
        # can bring back the previous file after the counters already relied on the new one.
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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
            # A failed write leaves the reservation where it was, so the next value retries
            # it: the daemon keeps running on a full disk and is covered again once it works.
            if self._value > self._reserved and \
                    self._store.set_marks({self.name: self._value + RESERVE}):
                self._reserved = self._value + RESERVE
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
