"""Template text, describer settings, crops and prompts, and the describer service's
scheduling, rate limits, queue and shutdown (with fake backends: no model needed)."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamd.config import ConfigError, load, preflight, validate
from streamd.describe import BACKENDS, DescribeRequest, Description, create_describer
from streamd.describe.base import NoDescriberSettings
from streamd.describe.inputs import crop_for, pad_box
from streamd.describe.openai import OpenAIDescriberSettings
from streamd.describe.service import DescriberService, TokenBucket
from streamd.describe.template import TemplateDescriber, TemplateDescriberSettings

FRAME_WH = (300, 300)


def frame_image(seed: int = 0, wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    """A random BGR frame: every crop of it is a different picture."""
    w, h = wh
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def request(object_id: int = 1, label: str = "person", frame_id: int = 1,
            flow: tuple[float, float] | None = (3.0, 0.0), camera: str = "cam",
            box: tuple[int, int, int, int] = (10, 10, 40, 90)) -> DescribeRequest:
    return DescribeRequest(camera=camera, frame_id=frame_id, ts=1.0 + frame_id,
                           object_id=object_id, label=label, score=0.87, box=box,
                           frame_wh=FRAME_WH, flow_xy=flow)


def settings(**kw: Any) -> TemplateDescriberSettings:
    kw.setdefault("cache_size", 0)  # these tests are about scheduling; the cache has its own
    return TemplateDescriberSettings(backend="template", **kw)


class Recorder:
    """on_result callback that keeps every Description and can wait for a count."""

    def __init__(self) -> None:
        self.results: list[Description] = []
        self._cond = threading.Condition()

    def __call__(self, d: Description) -> None:
        with self._cond:
            self.results.append(d)
            self._cond.notify_all()

    def wait(self, n: int, timeout_s: float = 5.0) -> list[Description]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results) >= n, timeout_s), \
                f"{len(self.results)} of {n} results after {timeout_s} s"
            return list(self.results)


# -- template backend -------------------------------------------------------------------------

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


def test_none_backend_is_none_and_every_backend_is_registered() -> None:
    assert create_describer(NoDescriberSettings(backend="none")) is None
    assert set(BACKENDS) == {"template", "transformers", "openai", "clip"}


# -- settings ---------------------------------------------------------------------------------

def _describer_problems(describer: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate({"site": "s", "cameras": [{"name": "c", "url": "x.mp4"}],
                  "describer": describer})
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize(("describer", "path", "words"), [
    ({"backend": "template", "max_per_secnd": 3}, "describer.max_per_secnd", "unknown key"),
    ({"backend": "transformers"}, "describer.model", "Field required"),
    ({"backend": "transformers", "model": "m", "prompt": "what is the {lable}?"},
     "describer.prompt", "unknown placeholder(s) {lable}"),
    ({"backend": "openai", "url": "http://h/v1", "model": "m",
      "prompts": {"car": "colour of the {label} at {gate}"}}, "describer.prompts",
     "{gate}"),
    ({"backend": "openai", "url": "ftp://h/v1", "model": "m"}, "describer.url",
     "should match pattern"),
    ({"backend": "clip", "model": "m", "vocabulary": ["only one"]}, "describer.vocabulary",
     "at least 2"),
    ({"backend": "clip", "model": "m", "vocabulary": ["a", "b"], "text_template": "{x}"},
     "describer.text_template", "{x}"),
    ({"backend": "template", "queue_size": 0}, "describer.queue_size", "greater than"),
    ({"backend": "transformers", "model": "m", "device": "gpu"}, "describer.device",
     "should match pattern"),
])
def test_describer_settings_errors_name_the_key(describer: dict[str, Any], path: str,
                                                 words: str) -> None:
    problems = _describer_problems(describer)
    assert any(f": {path}: " in p and words in p for p in problems), problems


def test_describer_defaults() -> None:
    s = settings(cache_size=256)
    assert (s.max_per_second, s.camera_max_per_second, s.refresh_s, s.queue_size) == \
        (5.0, None, 30.0, 64)
    assert (s.cache_size, s.cache_max_distance, s.crop_pad, s.on_zone_change) == \
        (256, 6, 0.15, True)
    o = OpenAIDescriberSettings(backend="openai", url="http://127.0.0.1:11434/v1", model="m")
    assert "{label}" in o.prompt and o.max_new_tokens == 48 and o.timeout_s == 30.0


def _write_config(tmp_path: Path, describer: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"site: s\ncameras: [{{name: c, url: x.mp4}}]\ndescriber: {describer}\n")
    return cfg


def test_api_key_from_file_env_and_credentials_dir(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMD_DESCRIBER_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    base = "{backend: openai, url: 'http://127.0.0.1:1/v1', model: m"
    assert load(_write_config(tmp_path, base + "}")).describer_api_key is None
    monkeypatch.setenv("STREAMD_DESCRIBER_API_KEY", "from-env")
    key = load(_write_config(tmp_path, base + "}")).describer_api_key
    assert key is not None and key.get_secret_value() == "from-env"
    assert "from-env" not in repr(key)

    (tmp_path / "key").write_text("from-file\n")
    cfg = _write_config(tmp_path, base + f", api_key_file: {tmp_path / 'key'}}}")
    key = load(cfg).describer_api_key
    assert key is not None and key.get_secret_value() == "from-file"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "vl.key").write_text("from-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    key = load(_write_config(tmp_path, base + ", api_key_file: vl.key}")).describer_api_key
    assert key is not None and key.get_secret_value() == "from-credentials"

    with pytest.raises(ConfigError, match=r"describer.api_key_file: nope.key does not exist"):
        load(_write_config(tmp_path, base + ", api_key_file: nope.key}"))


def test_check_says_the_model_directory_is_missing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.mp4").write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"site: s\ncameras: [{{name: c, url: {tmp_path / 'x.mp4'}}}]\n"
                   f"describer: {{backend: transformers, model: {tmp_path / 'models/smolvlm'}}}\n")
    problems = [str(p) for p in preflight(load(cfg))]
    assert any("describer.model" in p and "does not exist" in p and "README" in p
               for p in problems), problems
    (tmp_path / "models/smolvlm").mkdir(parents=True)
    problems = [str(p) for p in preflight(load(cfg))]
    assert any("no config.json" in p for p in problems), problems
    (tmp_path / "models/smolvlm/config.json").write_text("{}")
    assert preflight(load(cfg)) == []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    problems = [str(p) for p in preflight(load(cfg))]
    assert problems == [f"{cfg}: describer.backend: transformers needs torch: "
                        "pip install 'streamd[vl]'"], problems


# -- crops ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("box", "pad", "square", "want"), [
    ((100, 100, 120, 140), 0.0, False, (100, 100, 120, 140)),
    ((100, 100, 120, 140), 0.5, False, (90, 80, 130, 160)),
    ((100, 100, 120, 140), 0.0, True, (90, 100, 130, 140)),
    ((0, 0, 10, 10), 1.0, False, (0, 0, 20, 20)),          # clipped at the frame's corner
    ((290, 290, 300, 300), 1.0, False, (280, 280, 300, 300)),
    ((50, 50, 50, 50), 0.0, False, (50, 50, 51, 51)),      # empty box: one pixel, not none
])
def test_pad_box(box: tuple[int, int, int, int], pad: float, square: bool,
                 want: tuple[int, int, int, int]) -> None:
    assert pad_box(box, FRAME_WH, pad, square) == want


def test_crop_is_a_shrunk_copy() -> None:
    image = frame_image()
    crop = crop_for(image, (0, 0, 300, 150), 0.0, max_side=100)
    assert crop.shape == (50, 100, 3) and crop.dtype == np.uint8
    small = crop_for(image, (10, 10, 40, 90), 0.0, max_side=100)
    assert small.shape == (80, 30, 3)
    np.testing.assert_array_equal(small, image[10:90, 10:40])
    image[10:90, 10:40] = 0
    assert small.any(), "the crop must not be a view into the frame"


# -- scheduling -------------------------------------------------------------------------------

def test_each_object_is_described_once_until_relabelled_moved_or_stale() -> None:
    rec = Recorder()
    svc = DescriberService(TemplateDescriber(), settings(max_per_second=1000, refresh_s=0.3),
                           rec).start()
    image = frame_image()
    try:
        assert svc.offer(request(1, frame_id=1), image)
        assert not svc.offer(request(1, frame_id=2), image)        # same object, same label
        assert svc.offer(request(2, frame_id=2), image)            # a new object
        assert svc.offer(request(1, label="car", frame_id=3), image)  # relabelled
        assert not svc.offer(request(1, label="car", frame_id=4, box=(20, 20, 50, 95)), image)
        assert svc.offer(request(1, label="car", frame_id=5, box=(140, 140, 170, 170)),
                         image)                                    # top-left → centre
        time.sleep(0.35)
        assert svc.offer(request(1, label="car", frame_id=9, box=(140, 140, 170, 170)),
                         image)                                    # stale: refresh
    finally:
        svc.stop()
    got = [(d.request.object_id, d.request.frame_id) for d in rec.results]
    assert got == [(1, 1), (2, 2), (1, 3), (1, 5), (1, 9)]
    assert all(d.request.ts == 1.0 + d.request.frame_id for d in rec.results)
    assert all(d.model == "template" and not d.cached and d.latency_ms >= 0
               for d in rec.results)
    assert "in the centre of cam" in rec.results[-1].text


def test_zone_changes_can_be_ignored() -> None:
    svc = DescriberService(TemplateDescriber(), settings(max_per_second=1000,
                                                         on_zone_change=False), Recorder())
    assert svc.offer(request(1), frame_image())
    assert not svc.offer(request(1, frame_id=2, box=(140, 140, 170, 170)), frame_image())


def test_token_bucket_limits_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    t = 100.0
    bucket._last = t
    assert [bucket.take(t) for _ in range(3)] == [True, True, False]
    assert bucket.take(t + 0.5)  # one token refilled
    assert not bucket.take(t + 0.5)
    assert not bucket.ready(t + 0.5) and bucket.ready(t + 1.0)


@pytest.mark.parametrize(("overall", "per_camera", "cameras", "accepted"), [
    (2.0, None, 1, 2),     # overall burst 2
    (2.0, None, 3, 2),     # the overall cap is shared by every camera
    (1000.0, 1.0, 3, 3),   # one per camera
    (2.0, 1.0, 3, 2),      # both apply: the tighter wins
    (1000.0, 3.0, 1, 3),
])
def test_rate_limits_overall_and_per_camera(overall: float, per_camera: float | None,
                                             cameras: int, accepted: int) -> None:
    svc = DescriberService(TemplateDescriber(), settings(
        max_per_second=overall, camera_max_per_second=per_camera, queue_size=100), Recorder())
    image = frame_image()
    got = sum(svc.offer(request(oid, camera=f"cam{c}"), image)
              for c in range(cameras) for oid in range(10))
    assert got == accepted
    assert svc.stats.rate_limited == 10 * cameras - accepted
    assert svc.stats.queued == accepted and svc.depth == accepted  # not started: all wait


def test_a_rate_limited_object_stays_due() -> None:
    svc = DescriberService(TemplateDescriber(), settings(max_per_second=1.0), Recorder())
    image = frame_image()
    assert svc.offer(request(1), image)
    assert not svc.offer(request(2), image)          # no token: limited, still due
    svc._bucket._last -= 1.0                         # a second passes
    assert svc.offer(request(2, frame_id=2), image)  # offered again with a later frame


def test_full_queue_drops_the_oldest_and_its_object_becomes_due_again() -> None:
    gate = threading.Event()
    rec = Recorder()

    class Slow(TemplateDescriber):
        def describe(self, request: DescribeRequest) -> str:
            gate.wait(5)
            return super().describe(request)

    svc = DescriberService(Slow(), settings(max_per_second=1000, queue_size=2), rec).start()
    image = frame_image()
    try:
        svc.offer(request(1), image)
        time.sleep(0.05)                    # the worker holds object 1, blocked
        for oid in range(2, 7):
            assert svc.offer(request(oid), image)
        assert svc.stats.dropped == 3 and svc.depth == 2
        assert svc.offer(request(2, frame_id=2), image), "a dropped object is due again"
        assert not svc.offer(request(6, frame_id=2), image), "a queued one is not"
        gate.set()
        rec.wait(3)
    finally:
        gate.set()
        svc.stop()
    # object 1 (in the model), then the two newest; 2..4 were pushed out, 2 came back
    assert [d.request.object_id for d in rec.results] == [1, 6, 2]
    assert svc.stats.dropped == 4


def test_offer_never_waits_for_a_stuck_model() -> None:
    release = threading.Event()
    rec = Recorder()

    class Stuck(TemplateDescriber):
        def describe(self, request: DescribeRequest) -> str:
            release.wait(30)
            return "late"

    svc = DescriberService(Stuck(), settings(max_per_second=1000, queue_size=4), rec).start()
    image = frame_image()
    svc.offer(request(1), image)
    time.sleep(0.05)  # the worker is now inside the stuck model
    started = time.perf_counter()
    for oid in range(2, 202):
        assert svc.offer(request(oid, frame_id=oid), image)
    per_offer_ms = (time.perf_counter() - started) * 1000 / 200
    assert per_offer_ms < 5, f"offer took {per_offer_ms:.2f} ms with the model stuck"
    assert svc.depth == 4 and svc.stats.dropped == 200 - 4

    t0 = time.monotonic()
    svc.stop(drain_timeout_s=0.3)
    assert time.monotonic() - t0 < 2.0, "stop() must not wait for a stuck model"
    release.set()
    time.sleep(0.1)
    assert rec.results == [], "an answer that arrives after stop() is not published"


def test_a_failing_backend_does_not_stop_the_service(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()

    class Flaky(TemplateDescriber):
        def describe(self, request: DescribeRequest) -> str:
            if request.object_id < 3:
                raise RuntimeError("model exploded")
            return "ok"

    svc = DescriberService(Flaky(), settings(max_per_second=1000), rec).start()
    image = frame_image()
    for oid in (1, 2, 3):
        svc.offer(request(oid), image)
    rec.wait(1)
    svc.stop()
    assert [d.request.object_id for d in rec.results] == [3] and svc.stats.failed == 2
    warnings = [r for r in caplog.records if "model exploded" in r.getMessage()]
    assert len(warnings) == 1, "one log line for a run of failures, not one per request"
    snap = svc.snapshot()
    assert (snap["failed"], snap["described"], snap["queue"]) == (2, 1, 0)


@pytest.mark.parametrize(("prompts", "label", "want"), [
    ({}, "person", "Describe the person in the centre of cam."),
    ({"car": "Colour and type of the {label}?"}, "car", "Colour and type of the car?"),
    ({"car": "Colour and type of the {label}?"}, "person",
     "Describe the person in the centre of cam."),
])
def test_prompts_per_label_with_placeholders(prompts: dict[str, str], label: str,
                                            want: str) -> None:
    seen: list[DescribeRequest] = []

    class Echo(TemplateDescriber):
        input_size = 32

        def describe(self, request: DescribeRequest) -> str:
            seen.append(request)
            return request.prompt

    s = OpenAIDescriberSettings(backend="openai", url="http://127.0.0.1:1/v1", model="m",
                                prompt="Describe the {label} in the {zone} of {camera}.",
                                prompts=prompts, cache_size=0)
    rec = Recorder()
    svc = DescriberService(Echo(), s, rec).start()
    svc.offer(request(label=label, box=(100, 100, 200, 150)), frame_image())
    rec.wait(1)
    svc.stop()
    assert rec.results[0].text == want
    crop = seen[0].crop
    # the 100x50 box padded by 15% on each side is 130x66, shrunk to 32 px wide
    assert crop is not None and crop.shape == (16, 32, 3), "crop padded and sized"


def test_descriptions_leave_in_frame_order_per_camera() -> None:
    rec = Recorder()

    class Jitter(TemplateDescriber):
        def describe(self, request: DescribeRequest) -> str:
            time.sleep(0.002 * (request.object_id % 3))
            return super().describe(request)

    svc = DescriberService(Jitter(), settings(max_per_second=1000, queue_size=1000),
                           rec).start()
    def offers(camera: str) -> None:
        for frame_id in range(1, 41):
            svc.offer(request(frame_id, frame_id=frame_id, camera=camera), frame_image(1))

    threads = [threading.Thread(target=offers, args=(c,)) for c in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.wait(120)
    svc.stop()
    for camera in ("a", "b", "c"):
        ids = [d.request.frame_id for d in rec.results if d.request.camera == camera]
        assert ids == list(range(1, 41)), camera
