"""The double buffer: live sources drop (and count), files wait, close wakes everyone."""

from __future__ import annotations

import threading
import time

import pytest

from streamd.frames import FrameSlot, SlotClosed
from tests.factories import frame


def test_frame_is_immutable_and_knows_its_size() -> None:
    f = frame(wh=(64, 48))
    assert f.wh == (64, 48)
    with pytest.raises(AttributeError):
        f.frame_id = 2  # type: ignore[misc]


def test_take_on_empty_slot_times_out() -> None:
    slot = FrameSlot()
    t0 = time.monotonic()
    assert slot.take(timeout_s=0.05) is None
    assert time.monotonic() - t0 >= 0.04


@pytest.mark.parametrize(("puts", "dropped"), [(0, 0), (1, 0), (2, 1), (5, 4)])
def test_latest_wins_and_overwrites_are_counted(puts: int, dropped: int) -> None:
    slot = FrameSlot()
    for i in range(1, puts + 1):
        slot.put(frame(i))
    got = slot.take(timeout_s=0)
    assert (got.frame_id if got else None) == (puts or None)
    assert slot.dropped == dropped


def test_lossless_put_waits_for_the_consumer() -> None:
    slot = FrameSlot()
    seen: list[int] = []

    def consume() -> None:
        while (f := slot.take(timeout_s=1.0)) is not None:
            seen.append(f.frame_id)
            time.sleep(0.002)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(1, 51):
        slot.put(frame(i), wait=True)
    slot.close()
    t.join(5)
    assert seen == list(range(1, 51))
    assert slot.dropped == 0


def test_close_releases_a_waiting_producer() -> None:
    slot = FrameSlot()
    slot.put(frame(1))
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            slot.put(frame(2), wait=True)
        except SlotClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.05)
    slot.close()
    t.join(2)
    assert not t.is_alive() and len(errors) == 1


def test_close_drains_the_last_frame_then_returns_none() -> None:
    slot = FrameSlot()
    slot.put(frame(7))
    slot.close()
    first = slot.take(timeout_s=1)
    assert first is not None and first.frame_id == 7
    assert slot.take(timeout_s=1) is None
