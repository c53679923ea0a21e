"""The durable outbox: order, survival across reopen, bounds and the drop policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.outbox import Outbox


def fill(box: Outbox, kinds: str, sent_up_to: int = 0) -> list[int]:
    """One message per letter: s=status, d=detections, x=descriptions, t=stats."""
    names = {"s": "status", "d": "detections", "x": "descriptions", "t": "stats"}
    return [box.put(f"t/{i}", f"{k}{i}".encode(), 1, k == "s", names[k], "cam", sent_up_to)
            for i, k in enumerate(kinds)]


def test_rows_come_back_in_order_and_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 1000, 10**6)
    ids = fill(box, "sdddx")
    assert ids == sorted(ids)
    box.remove(ids[0])
    box.close()
    box = Outbox(tmp_path / "o.sqlite", 1000, 10**6)
    rows = box.after(0, 10)
    assert [r.id for r in rows] == ids[1:]
    assert [r.payload for r in rows] == [b"d1", b"d2", b"d3", b"x4"]
    assert len(box) == 4 and box.last_id() == ids[-1]
    assert [r.id for r in box.after(ids[2], 10)] == ids[3:]
    box.close()
    box.close()  # idempotent
    with pytest.raises(RuntimeError):
        box.after(0, 1)


@pytest.mark.parametrize(("kinds", "extra", "dropped", "left"), [
    ("", "d", {}, "d"),
    ("sddd", "d", {"detections": 1}, "sddd"),
    ("sdtd", "d", {"stats": 1}, "sddd"),
    ("sxdx", "d", {"detections": 1}, "sxxd"),
    ("sxsx", "d", {"descriptions": 1}, "ssxd"),
    ("ssss", "d", {}, "ssssd"),  # status is never dropped: the bound gives way
])
def test_count_bound_drop_policy(tmp_path: Path, kinds: str, extra: str,
                                 dropped: dict[str, int], left: str) -> None:
    box = Outbox(tmp_path / "o.sqlite", 4, 10**6)
    fill(box, kinds)
    fill(box, extra)
    assert dict(box.dropped) == dropped
    assert "".join(r.payload.decode()[0] for r in box.after(0, 100)) == left


def test_byte_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 1000, 10)
    fill(box, "ddddd")  # 2 bytes each
    fill(box, "d")
    assert sum(len(r.payload) for r in box.after(0, 100)) <= 10
    assert box.dropped["detections"] == 1


def test_rows_already_with_paho_are_not_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 3, 10**6)
    ids = fill(box, "ddd")
    fill(box, "d", sent_up_to=ids[1])  # the first two are in flight
    assert [r.payload for r in box.after(0, 10)] == [b"d0", b"d1", b"d0"]
