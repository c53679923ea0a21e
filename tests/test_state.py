"""Counters never go backwards: across clean restarts (exact) and crashes (jump ahead)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streamd.state import RESERVE, Counter, StateStore


def test_clean_restart_continues_exactly(tmp_path: Path) -> None:
    c = StateStore(tmp_path).counter("seq/cam/detections")
    assert [c.next() for _ in range(3)] == [1, 2, 3]
    c.commit()
    c2 = StateStore(tmp_path).counter("seq/cam/detections")
    assert c2.next() == 4


def test_crash_restart_jumps_forward_never_back(tmp_path: Path) -> None:
    c = StateStore(tmp_path).counter("frame_id/cam")
    last = [c.next() for _ in range(RESERVE + 5)][-1]
    # no commit: the process "crashed"
    c2 = StateStore(tmp_path).counter("frame_id/cam")
    assert c2.next() > last


def test_counters_are_independent(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    a, b = store.counter("a"), store.counter("b")
    a.next()
    a.next()
    assert b.next() == 1
    a.commit()
    b.commit()
    store2 = StateStore(tmp_path)
    assert (store2.mark("a"), store2.mark("b")) == (2, 1)


def test_damaged_state_file_starts_from_zero(tmp_path: Path) -> None:
    (tmp_path / "counters.json").write_text("{not json")
    assert StateStore(tmp_path).counter("x").next() == 1


def test_concurrent_set_marks_never_fail_and_the_file_keeps_the_newest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bug: each writer used one fixed temp file and renamed it outside the lock, so two
    threads collided (ENOENT on rename) and an older snapshot could be renamed last; after a
    crash a counter then resumed below values it had already handed out."""
    store = StateStore(tmp_path)
    threads, rounds = 6, 25
    start = threading.Barrier(threads)

    def hammer(t: int) -> None:
        start.wait()
        for i in range(1, rounds + 1):
            store.set_marks({f"c{t}": i * RESERVE})
            # what this thread relied on is on disk the moment set_marks returns
            assert json.loads(store.path.read_text())[f"c{t}"] >= i * RESERVE

    with caplog.at_level(logging.ERROR, logger="streamd.state"), \
            ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(hammer, t) for t in range(threads)]:
            f.result()
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    on_disk = json.loads(store.path.read_text())
    assert on_disk == {f"c{t}": rounds * RESERVE for t in range(threads)}
    assert not list(tmp_path.glob("*.tmp")), "temp files left behind"


def test_concurrent_counters_resume_above_everything_handed_out(tmp_path: Path) -> None:
    """Several counters reserving at once (cameras' capture threads, the publisher), then a
    crash (no commit): every counter restarts above its last value."""
    store = StateStore(tmp_path)
    counters = [store.counter(f"n{i}") for i in range(6)]
    start = threading.Barrier(len(counters))

    def run(c: Counter) -> int:
        start.wait()
        return [c.next() for _ in range(3 * RESERVE + 7)][-1]

    with ThreadPoolExecutor(len(counters)) as pool:
        last = dict(zip([c.name for c in counters], pool.map(run, counters), strict=True))
    reopened = StateStore(tmp_path)
    for name, value in last.items():
        assert reopened.counter(name).next() > value, name


def test_leftover_temp_file_from_a_killed_writer_is_removed(tmp_path: Path) -> None:
    StateStore(tmp_path).set_marks({"a": 5})
    (tmp_path / "counters.abc123.tmp").write_text("{\"a\": 1")
    store = StateStore(tmp_path)
    assert store.mark("a") == 5
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_reservation_is_retried_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reservation whose write failed (disk full, directory gone) must not count as made:
    the next value retries it, so once the disk works again a crash still resumes above."""
    state = tmp_path / "state"
    c = StateStore(state).counter("frame_id/cam")
    c.next()
    shutil.rmtree(state)  # every write now fails (also as root, unlike a read-only mode)
    with caplog.at_level(logging.WARNING, logger="streamd.state"):
        for _ in range(RESERVE + 10):
            c.next()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, "a failing disk must be reported once, not once per frame"
        state.mkdir()
        last = c.next()
    assert "written again" in caplog.text
    assert StateStore(state).counter("frame_id/cam").next() > last
