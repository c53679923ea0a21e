"""The describer's input cache: perceptual hash, LRU, and how the service uses it.

A re-encoded copy of a crop (JPEG round trip, as a camera's next keyframe of a still scene)
must hit; a different crop must miss; a hit costs no model call and no rate token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamd.describe import DescribeRequest, Description
from streamd.describe.cache import DescriptionCache
from streamd.describe.inputs import crop_for, dhash, hamming
from streamd.describe.service import DescriberService
from streamd.describe.template import TemplateDescriberSettings
from tests.helpers.video import render_moving_shapes

BOXES = [(100, 60, 180, 300), (300, 200, 360, 330), (500, 100, 620, 420), (20, 380, 140, 560),
         (650, 0, 768, 200)]
"""Crops of vtest.avi (768x576): people, pavement, the building's edge."""


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def jpeg_round_trip(image: np.ndarray, quality: int = 75) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR), np.uint8)


@pytest.fixture(scope="module")
def vtest_frames(sample_video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(sample_video))
    frames = []
    try:
        for _ in range(120):
            ok, image = cap.read()
            assert ok, f"cannot read {sample_video}"
            frames.append(image)
    finally:
        cap.release()
    return frames


def _request(object_id: int, box: tuple[int, int, int, int], frame_id: int = 1,
             label: str = "person", camera: str = "cam") -> DescribeRequest:
    return DescribeRequest(camera=camera, frame_id=frame_id, ts=float(frame_id),
                           object_id=object_id, label=label, score=0.9, box=box,
                           frame_wh=(768, 576))


class CountingDescriber:
    """A backend that numbers its answers, so a reused one is recognisable."""

    model = "counting"
    input_size = 256
    square_input = False

    def __init__(self) -> None:
        self.calls = 0

    def describe(self, request: DescribeRequest) -> str:
        self.calls += 1
        return f"answer {self.calls}"

    def close(self) -> None:
        """Nothing to release."""


def _service(**kw: Any) -> tuple[DescriberService, CountingDescriber, list[Description]]:
    results: list[Description] = []
    backend = CountingDescriber()
    kw.setdefault("max_per_second", 1000)
    svc = DescriberService(backend, TemplateDescriberSettings(backend="template", **kw),
                           results.append)
    return svc, backend, results


def test_dhash_survives_jpeg_and_tells_crops_apart(vtest_frames: list[np.ndarray]) -> None:
    frame = vtest_frames[60]
    hashes = []
    for box in BOXES:
        crop = crop_for(frame, box, 0.15, 512)
        h = dhash(crop)
        assert hamming(h, dhash(jpeg_round_trip(crop))) <= 6, box
        hashes.append(h)
    far = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(far) >= 12, f"different crops must be far apart: {sorted(far)}"


def test_cache_lru_context_and_distance() -> None:
    cache = DescriptionCache(size=2, max_distance=3)
    ctx = ("cam", "person", "centre", "p")
    cache.put(ctx, 0b0000, "zero")
    cache.put(ctx, 0xFF00, "ff00")
    assert cache.get(ctx, 0b0111) == "zero"                    # 3 bits away
    assert cache.get(ctx, 0b1111) is None                      # 4 bits away
    assert cache.get(ctx, 0xFF01) == "ff00"                    # nearest wins
    assert cache.get(("cam", "car", "centre", "p"), 0) is None  # another label
    assert cache.get(("cam", "person", "left", "p"), 0) is None  # another zone
    assert cache.get(("cam2", "person", "centre", "p"), 0) is None  # another camera
    cache.get(ctx, 0)                                          # "zero" is now most recent
    cache.put(ctx, 0x00FF, "00ff")                             # evicts "ff00"
    assert len(cache) == 2 and cache.get(ctx, 0xFF00) is None and cache.get(ctx, 0) == "zero"
    exact = DescriptionCache(size=4, max_distance=0)
    exact.put(ctx, 1, "one")
    assert exact.get(ctx, 1) == "one" and exact.get(ctx, 3) is None
    off = DescriptionCache(size=0, max_distance=6)
    off.put(ctx, 1, "one")
    assert off.get(ctx, 1) is None


def test_service_reuses_a_reencoded_crop_and_asks_again_for_a_different_one(
        vtest_frames: list[np.ndarray]) -> None:
    svc, backend, results = _service(max_per_second=1000)
    frame = vtest_frames[60]
    box = BOXES[0]
    svc.start()
    try:
        assert svc.offer(_request(1, box, frame_id=60), frame)
        wait_until(lambda: len(results) == 1)
        # a new track (object 2) on a re-encoded copy of the same frame: same picture
        assert svc.offer(_request(2, box, frame_id=61), jpeg_round_trip(frame))
        # another object with a different picture in the same zone
        other = vtest_frames[60].copy()
        other[box[1]:box[3], box[0]:box[2]] = 255 - other[box[1]:box[3], box[0]:box[2]]
        assert svc.offer(_request(3, box, frame_id=62), other)
    finally:
        svc.stop()
    assert [(d.request.object_id, d.text, d.cached) for d in results] == [
        (1, "answer 1", False), (2, "answer 1", True), (3, "answer 2", False)]
    assert backend.calls == 2
    snap = svc.snapshot()
    assert (snap["cache_hits"], snap["cache_hit_rate"]) == (1, round(1 / 3, 3))
    assert results[1].latency_ms < results[0].latency_ms + 50


def test_cache_hits_cost_no_rate_token(vtest_frames: list[np.ndarray]) -> None:
    svc, backend, _ = _service(max_per_second=1.0)  # one model call, then limited
    frame = vtest_frames[30]
    box = BOXES[2]
    assert svc.offer(_request(1, box), frame)
    # the model has not answered yet (not started): nothing cached, so object 2 is limited
    assert not svc.offer(_request(2, box), frame)
    svc.start()
    try:
        wait_until(lambda: svc.stats.described == 1)
        hits = sum(svc.offer(_request(oid, box, frame_id=oid), frame) for oid in range(2, 12))
    finally:
        svc.stop()
    assert hits == 10, "cached answers do not wait for a token"
    assert backend.calls == 1 and svc.stats.rate_limited == 1
    assert svc.stats.cache_hits == 10


def test_cache_disabled_means_every_due_object_asks_the_model() -> None:
    images, _ = render_moving_shapes(frames=2, wh=(320, 240))
    svc, backend, results = _service(cache_size=0)
    svc.start()
    try:
        for oid in range(1, 5):
            svc.offer(DescribeRequest(camera="c", frame_id=oid, ts=1.0, object_id=oid,
                                      label="box", score=1.0, box=(10, 10, 100, 100),
                                      frame_wh=(320, 240)), images[0])
    finally:
        svc.stop()
    assert backend.calls == 4 and not any(d.cached for d in results)
    assert svc.snapshot()["cache_hit_rate"] == 0.0
