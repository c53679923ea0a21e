"""The shedding governor: one fleet-wide share of frames, lowered while frames wait past
half the latency target, raised again once they do not, and spread evenly per camera."""

from __future__ import annotations

from streamd.shed import MIN_FACTOR, ShedGovernor


def feed(gov: ShedGovernor, now: list[float], lag_ms: float, seconds: int,
         dropped: list[int] | None = None) -> None:
    """Ten analysed frames a second from one camera, each `lag_ms` after capture."""
    for _ in range(seconds * 10):
        now[0] += 0.1
        if dropped is not None:
            dropped[0] += 1
        gov.observe("a", lag_ms, dropped[0] if dropped is not None else 0)


def test_sheds_evenly_while_frames_wait_and_recovers() -> None:
    now = [0.0]
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0])
    feed(gov, now, lag_ms=50, seconds=3)
    assert gov.factor == 1.0 and all(gov.admit("a") for _ in range(10))
    feed(gov, now, lag_ms=400, seconds=4)
    assert 0.4 < gov.factor < 0.7  # 0.85 per second past target / 2
    pattern = [gov.admit("b") for _ in range(20)]
    assert abs(sum(pattern) - 20 * gov.factor) <= 1
    assert not any(pattern[i] and pattern[i + 1] and pattern[i + 2] for i in range(18)), \
        f"spread evenly, not in bursts: {pattern}"
    feed(gov, now, lag_ms=400, seconds=30)
    assert gov.factor == MIN_FACTOR, "never below the floor"
    feed(gov, now, lag_ms=20, seconds=30)
    assert gov.factor == 1.0


def test_dropped_frames_count_as_falling_behind() -> None:
    now = [0.0]
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0])
    feed(gov, now, lag_ms=50, seconds=3, dropped=[0])  # as many dropped as analysed
    assert gov.factor < 1.0


def test_detector_time_above_the_floors_goes_before_any_frame() -> None:
    now = [0.0]
    gives = [True, True, False]
    relaxed: list[bool] = []
    gov = ShedGovernor(latency_target_ms=250, clock=lambda: now[0],
                       yield_detector=lambda: gives.pop(0) if gives else False,
                       relax_detector=lambda: relaxed.append(True))
    feed(gov, now, lag_ms=400, seconds=2)
    assert gov.factor == 1.0, "the detector gave time back: no frame shed yet"
    feed(gov, now, lag_ms=400, seconds=2)
    assert gov.factor < 1.0, "nothing left to give: frames are shed"
    feed(gov, now, lag_ms=20, seconds=30)
    assert gov.factor == 1.0 and relaxed, "frames first, then detector time, come back"
