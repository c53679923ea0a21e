"""The shedding governor: one fleet-wide share of frames, lowered while motion takes most
of each frame interval (or frames wait past the latency target, or drop), raised again once
it does not, and spread evenly per camera."""

from __future__ import annotations

from streamd.shed import MIN_FACTOR, ShedGovernor


def feed(gov: ShedGovernor, now: list[float], busy: float, seconds: int,
         dropped: list[int] | None = None, lag_ms: float = 50) -> None:
    """Ten analysed frames a second from one camera whose motion took `busy` of the frame
    interval, each `lag_ms` after capture."""
    for _ in range(seconds * 10):
        now[0] += 0.1
        if dropped is not None:
            dropped[0] += 1
        gov.observe("a", busy, lag_ms, dropped[0] if dropped is not None else 0)


def test_sheds_evenly_while_motion_cannot_keep_up_and_recovers() -> None:
    now = [0.0]
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0])
    feed(gov, now, busy=0.2, seconds=3)
    assert gov.factor == 1.0 and all(gov.admit("a") for _ in range(10))
    feed(gov, now, busy=0.8, seconds=4)
    assert 0.4 < gov.factor < 0.7  # 0.85 per second while motion is too busy
    pattern = [gov.admit("b") for _ in range(20)]
    assert abs(sum(pattern) - 20 * gov.factor) <= 1
    assert not any(pattern[i] and pattern[i + 1] and pattern[i + 2] for i in range(18)), \
        f"spread evenly, not in bursts: {pattern}"
    feed(gov, now, busy=0.8, seconds=30)
    assert gov.factor == MIN_FACTOR, "never below the floor"
    feed(gov, now, busy=0.1, seconds=30)
    assert gov.factor == 1.0


def test_dropped_frames_count_as_falling_behind() -> None:
    now = [0.0]
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0])
    feed(gov, now, busy=0.2, seconds=3, dropped=[0])  # as many dropped as analysed
    assert gov.factor < 1.0


def test_detector_time_above_the_floors_goes_before_any_frame() -> None:
    now = [0.0]
    gives = [True, True, False]
    relaxed: list[bool] = []
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0],
                       yield_detector=lambda: gives.pop(0) if gives else False,
                       relax_detector=lambda: relaxed.append(True))
    feed(gov, now, busy=0.8, seconds=2)
    assert gov.factor == 1.0, "the detector gave time back: no frame shed yet"
    feed(gov, now, busy=0.8, seconds=2)
    assert gov.factor < 1.0, "nothing left to give: frames are shed"
    feed(gov, now, busy=0.1, seconds=30)
    assert gov.factor == 1.0 and relaxed, "frames first, then detector time, come back"


def test_frames_waiting_past_the_target_count_as_falling_behind() -> None:
    now = [0.0]
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0])
    feed(gov, now, busy=0.2, seconds=3, lag_ms=400)
    assert gov.factor < 1.0
