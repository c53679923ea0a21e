"""The adaptive split of detector capacity between cameras (pure logic, no threads)."""

from __future__ import annotations

import pytest

from streamd.detect.adaptive import Demand, DetectorLoad, RateBoard, share_rates

MOVING = Demand(fps=10, images_per_run=1, active=True)
STILL = Demand(fps=10, images_per_run=1, active=False)
YOUNG = Demand(fps=10, images_per_run=1, active=True, young_tracks=True)
HEAVY = Demand(fps=10, images_per_run=4, active=True)


@pytest.mark.parametrize(("capacity", "demands", "expected"), [
    (100, {}, {}),
    (0, {"a": MOVING}, {"a": 0.0}),
    (100, {"a": STILL}, {"a": 0.0}),
    (100, {"a": MOVING, "b": STILL}, {"a": 10.0, "b": 0.0}),
    # enough for everyone: every frame, never above the camera's own fps
    (1000, {"a": MOVING, "b": HEAVY}, {"a": 10.0, "b": 10.0}),
    # floors fit, the rest is shared max-min fair in images per second
    (12, {"a": MOVING, "b": MOVING}, {"a": 6.0, "b": 6.0}),
    # not even the floors fit: scaled evenly, same rate for each camera
    (2, {"a": MOVING, "b": HEAVY}, {"a": 0.4, "b": 0.4}),
    # young tracks get the spare capacity first
    (12, {"a": MOVING, "b": YOUNG}, {"a": 2.0, "b": 10.0}),
    # a heavy camera costs 4 images per run: fair in images, not runs
    (18, {"a": MOVING, "b": HEAVY}, {"a": 6.0, "b": 3.0}),
    # a camera analysing 1 fps cannot use a 2 Hz floor
    (100, {"a": Demand(1, 1, True)}, {"a": 1.0}),
])
def test_share_rates(capacity: float, demands: dict[str, Demand],
                     expected: dict[str, float]) -> None:
    assert share_rates(capacity, demands, 2.0) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 3, 8, 16])
def test_share_never_exceeds_capacity(n: int) -> None:
    demands = {f"c{i}": Demand(10, 1 + i % 3, True, young_tracks=i % 2 == 0) for i in range(n)}
    for capacity in (1.0, 7.5, 40.0, 500.0):
        rates = share_rates(capacity, demands, 2.0)
        used = sum(rates[k] * demands[k].images_per_run for k in demands)
        assert used <= capacity + 1e-2
        assert all(0 <= rates[k] <= demands[k].fps + 1e-9 for k in demands)


def test_load_measures_cost_and_backs_off_when_the_queue_waits() -> None:
    load = DetectorLoad(latency_target_ms=250)
    load.observe_call(images=4, ms=80)  # 20 ms per image
    assert load.ms_per_image == pytest.approx(20)
    before = load.capacity_ips()
    for _ in range(5):
        load.observe_wait(200)  # far past a quarter of the target
    assert load.capacity_ips() < 0.7 * before
    low = load.utilisation
    for _ in range(50):
        load.observe_wait(1)
    assert load.utilisation > low


def test_board_recomputes_and_forgets_stale_cameras() -> None:
    now = [0.0]
    load = DetectorLoad(latency_target_ms=250, initial_ms_per_image=100)  # 7 images/s
    board = RateBoard(load, min_rate_hz=2.0, clock=lambda: now[0])
    assert board.report("a", MOVING) == pytest.approx(7.0)
    now[0] = 1.0
    board.report("b", MOVING)
    assert board.rates() == pytest.approx({"a": 3.5, "b": 3.5})
    now[0] = 4.0  # "a" stopped reporting: "b" gets it all
    assert board.report("b", MOVING) == pytest.approx(7.0)
    board.remove("b")
    assert board.rates() == {}
