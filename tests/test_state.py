"""Counters never go backwards: across clean restarts (exact) and crashes (jump ahead)."""

from __future__ import annotations

from pathlib import Path

from streamd.state import RESERVE, StateStore


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
