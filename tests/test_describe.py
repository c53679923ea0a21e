"""Template text, the token bucket, and the describer service's scheduling and queue."""

from __future__ import annotations

import threading
import time

import pytest

from streamd.config import TemplateDescriberSettings
from streamd.describe import DescribeRequest, create_describer
from streamd.describe.service import DescriberService, TokenBucket
from streamd.describe.template import TemplateDescriber


def request(object_id: int = 1, label: str = "person", frame_id: int = 1,
            flow: tuple[float, float] | None = (3.0, 0.0), camera: str = "cam"
            ) -> DescribeRequest:
    return DescribeRequest(camera=camera, frame_id=frame_id, ts=1.0 + frame_id,
                           object_id=object_id, label=label, score=0.87,
                           box=(10, 10, 40, 90), frame_wh=(300, 300), flow_xy=flow)


@pytest.mark.parametrize(("flow", "words"), [
    ((3.0, 0.0), "moving right at 3.0 px/frame"),
    ((0.0, -2.0), "moving up at 2.0"),
    ((0.1, 0.1), "stationary"),
    (None, "stationary"),
])
def test_template_text(flow: tuple[float, float] | None, words: str) -> None:
    text = TemplateDescriber().describe(request(flow=flow))
    assert text.startswith("person (87%) in the top-left of cam")
    assert words in text


def test_none_backend_is_none() -> None:
    from streamd.config import NoDescriberSettings
    assert create_describer(NoDescriberSettings(backend="none")) is None


def test_token_bucket_limits_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    t = 100.0
    bucket._last = t
    assert [bucket.take(t) for _ in range(3)] == [True, True, False]
    assert bucket.take(t + 0.5)  # one token refilled
    assert not bucket.take(t + 0.5)


def settings(**kw: float) -> TemplateDescriberSettings:
    return TemplateDescriberSettings(backend="template", **kw)  # type: ignore[arg-type]


def test_each_object_is_described_once_until_relabelled_or_stale() -> None:
    results: list[tuple[DescribeRequest, str]] = []
    done = threading.Event()

    def on_result(req: DescribeRequest, text: str, latency_ms: float) -> None:
        assert latency_ms >= 0
        results.append((req, text))
        done.set()

    svc = DescriberService(TemplateDescriber(), settings(max_per_second=1000, refresh_s=0.2),
                           on_result).start()
    try:
        assert svc.offer(request(1, frame_id=1))
        assert not svc.offer(request(1, frame_id=2))       # same object, same label
        assert svc.offer(request(2, frame_id=2))           # a new object
        assert svc.offer(request(1, label="car", frame_id=3))  # relabelled
        time.sleep(0.25)
        assert svc.offer(request(1, label="car", frame_id=9))  # stale: refresh
    finally:
        svc.stop()
    assert [(r.object_id, r.frame_id) for r, _ in results] == [(1, 1), (2, 2), (1, 3), (1, 9)]
    assert all(r.ts == 1.0 + r.frame_id for r, _ in results)


def test_rate_limit_and_bounded_queue_drop_oldest() -> None:
    gate = threading.Event()
    answered: list[int] = []

    class Slow(TemplateDescriber):
        def describe(self, request: DescribeRequest) -> str:
            gate.wait(5)
            return super().describe(request)

    svc = DescriberService(Slow(), settings(max_per_second=1000, queue_size=2),
                           lambda r, t, ms: answered.append(r.object_id)).start()
    try:
        for oid in range(1, 7):
            svc.offer(request(oid))
            time.sleep(0.01)
        gate.set()
    finally:
        svc.stop()
    # the worker holds one request while blocked; the queue keeps the two newest
    assert svc.stats.dropped == 3
    assert answered == [1, 5, 6]

    limited = DescriberService(TemplateDescriber(), settings(max_per_second=1),
                               lambda r, t, ms: None)
    accepted = sum(limited.offer(request(oid)) for oid in range(10))
    assert accepted == 1 and limited.stats.rate_limited == 9


def test_a_failing_backend_does_not_stop_the_service() -> None:
    answered: list[int] = []

    class Flaky(TemplateDescriber):
        def describe(self, request: DescribeRequest) -> str:
            if request.object_id == 1:
                raise RuntimeError("model exploded")
            return "ok"

    svc = DescriberService(Flaky(), settings(max_per_second=1000),
                           lambda r, t, ms: answered.append(r.object_id)).start()
    svc.offer(request(1))
    svc.offer(request(2))
    svc.stop()
    assert answered == [2] and svc.stats.failed == 1
