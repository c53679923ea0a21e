"""The model backends: `transformers` and `clip` on tiny random-weight models loaded through
the real `from_pretrained(dir, local_files_only=True)` path, `openai` against a local
chat-completions server (answering, failing, stalled), and the daemon end to end: a stalled
VL server never holds up detections, and configs/vl.yaml runs once a model is in place.
"""

from __future__ import annotations

import base64
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from pydantic import SecretStr

from streamd.config import load
from streamd.describe import DescribeRequest, DescriberError, Description, create_describer
from streamd.describe.clip import CLIPDescriber, CLIPDescriberSettings
from streamd.describe.openai import OpenAIDescriberSettings
from streamd.describe.service import DescriberService
from streamd.describe.transformers import TransformersDescriberSettings
from tests.helpers.mqtt import Collector, Mosquitto
from tests.helpers.openai_server import ChatServer
from tests.helpers.procs import REPO_ROOT, Daemon, daemon_config, run_cli
from tests.helpers.vl_models import build_tiny_clip, build_tiny_idefics3

PREFIX = "streamd/test"


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_idefics3(tmp_path_factory.mktemp("vl") / "tiny-smolvlm")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server


def crop_request(crop: np.ndarray, prompt: str = "Describe the person.", label: str = "person",
                 object_id: int = 1) -> DescribeRequest:
    h, w = crop.shape[:2]
    return DescribeRequest(camera="cam", frame_id=7, ts=1.5, object_id=object_id, label=label,
                           score=0.9, box=(0, 0, w, h), frame_wh=(w, h), crop=crop,
                           prompt=prompt)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


class Results:
    def __init__(self) -> None:
        self.items: list[Description] = []
        self._cond = threading.Condition()

    def __call__(self, d: Description) -> None:
        with self._cond:
            self.items.append(d)
            self._cond.notify_all()

    def wait(self, n: int, timeout_s: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= n, timeout_s), \
                f"{len(self.items)} of {n} descriptions after {timeout_s} s"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- transformers ---------------------------------------------------------------------------

def transformers_settings(model: Path, **kw: Any) -> TransformersDescriberSettings:
    kw.setdefault("device", "cpu")
    return TransformersDescriberSettings(backend="transformers", model=model, **kw)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_generates_text_through_the_service(smolvlm_dir: Path, dtype: str) -> None:
    describer = create_describer(transformers_settings(smolvlm_dir, dtype=dtype,
                                                       max_new_tokens=8, cache_size=0))
    assert describer is not None
    assert describer.model == "tiny-smolvlm"
    assert describer.input_size == 32, "from the processor's max_image_size"
    results = Results()
    svc = DescriberService(describer, transformers_settings(smolvlm_dir, cache_size=0),
                           results).start()
    try:
        frame = random_image(240, 320)
        for oid, box in enumerate([(10, 10, 60, 200), (100, 50, 300, 120)], start=1):
            svc.offer(DescribeRequest(camera="cam", frame_id=oid, ts=float(oid), object_id=oid,
                                      label="person", score=0.9, box=box, frame_wh=(320, 240)),
                      frame)
        results.wait(2, timeout_s=30)
    finally:
        svc.stop()
    for d in results.items:
        assert isinstance(d.text, str) and not d.cached and d.model == "tiny-smolvlm"
        assert d.latency_ms > 0
    assert svc.stats.failed == 0 and svc.snapshot()["latency_ms"] > 0


def test_transformers_bounds_the_answer_and_decodes_only_new_tokens(smolvlm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smolvlm_dir, local_files_only=True)
    short = create_describer(transformers_settings(smolvlm_dir, max_new_tokens=2))
    assert short is not None
    calls: list[tuple[int, Any]] = []
    model = short._model
    generate = model.generate

    def spy(**kw: Any) -> Any:
        out = generate(**kw)
        calls.append((kw["input_ids"].shape[1], out))
        return out

    model.generate = spy
    text = short.describe(crop_request(random_image(48, 24)))
    (prompt_len, out), = calls
    assert 1 <= out.shape[1] - prompt_len <= 2, "max_new_tokens bounds the answer"
    assert text == tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True).strip()
    short.close()
    short.close()  # idempotent
    with pytest.raises(DescriberError, match="after close"):
        short.describe(crop_request(random_image(48, 24)))


def test_transformers_plain_prompt_without_chat_template(smolvlm_dir: Path,
                                                         tmp_path: Path) -> None:
    """A model with no chat template (Florence-2-style) gets the prompt verbatim."""
    plain = shutil.copytree(smolvlm_dir, tmp_path / "plain")
    (plain / "chat_template.jinja").unlink()
    with pytest.raises(DescriberError, match=r"warm-up.*<image> tokens"):
        create_describer(transformers_settings(plain))  # the default prompt has no <image>
    describer = create_describer(transformers_settings(
        plain, max_new_tokens=4, prompt="<image>A photo of a {label}"))
    assert describer is not None
    assert isinstance(describer.describe(crop_request(random_image(40, 40),
                                                      prompt="<image>A photo of")), str)
    describer.close()


def test_transformers_on_the_gpu_when_there_is_one(smolvlm_dir: Path) -> None:
    import torch

    settings = transformers_settings(smolvlm_dir, device="cuda", max_new_tokens=4)
    if not torch.cuda.is_available():
        with pytest.raises(DescriberError, match="torch sees no CUDA GPU"):
            create_describer(settings)
        return
    describer = create_describer(settings)  # float16 on cuda by default
    assert describer is not None
    assert isinstance(describer.describe(crop_request(random_image(64, 32))), str)
    describer.close()


def test_transformers_startup_errors_say_why(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DescriberError, match=r"models/none does not exist.*README"):
        create_describer(transformers_settings(tmp_path / "models/none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DescriberError, match=r"no config\.json"):
        create_describer(transformers_settings(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(DescriberError, match="cannot be loaded"):
        create_describer(transformers_settings(tmp_path / "broken"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if [vl] were not installed
    with pytest.raises(DescriberError, match=r"pip install 'streamd\[vl\]'"):
        create_describer(transformers_settings(tmp_path / "empty"))


# -- clip -----------------------------------------------------------------------------------

def clip_settings(model: Path, **kw: Any) -> CLIPDescriberSettings:
    kw.setdefault("device", "cpu")
    kw.setdefault("vocabulary", ["red jacket", "blue jeans", "backpack", "umbrella"])
    return CLIPDescriberSettings(backend="clip", model=model, **kw)


def test_clip_tags_from_the_vocabulary_with_text_embedded_once(clip_dir: Path) -> None:
    describer = create_describer(clip_settings(
        clip_dir, vocabularies={"car": ["white van", "red car", "taxi"]}, top_k=2,
        min_score=0.0))
    assert isinstance(describer, CLIPDescriber)
    assert describer.model == "clip:tiny-clip" and describer.input_size == 32
    assert describer.square_input
    text_calls = 0
    encode = describer._model.get_text_features

    def counting(*args: Any, **kw: Any) -> Any:
        nonlocal text_calls
        text_calls += 1
        return encode(*args, **kw)

    describer._model.get_text_features = counting
    ranked = describer.scores(crop_request(random_image(32, 32)))
    assert sorted(t for t, _ in ranked) == ["backpack", "blue jeans", "red jacket", "umbrella"]
    assert abs(sum(p for _, p in ranked) - 1.0) < 1e-4
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    text = describer.describe(crop_request(random_image(32, 32, seed=1)))
    assert text.startswith("person: ") and text.count("%)") == 2, text
    car = describer.describe(crop_request(random_image(32, 32), label="car"))
    assert car.startswith("car: ") and any(t in car for t in ("white van", "red car", "taxi"))
    assert text_calls == 0, "the vocabulary is embedded once, at start"
    describer.close()
    describer.close()


def test_clip_min_score_keeps_only_the_best_tag(clip_dir: Path) -> None:
    describer = create_describer(clip_settings(clip_dir, min_score=1.0))
    assert describer is not None
    assert describer.describe(crop_request(random_image(32, 32))).count("%)") == 1


def test_clip_through_the_service_gets_square_crops(clip_dir: Path) -> None:
    seen: list[DescribeRequest] = []
    describer = create_describer(clip_settings(clip_dir))
    assert isinstance(describer, CLIPDescriber)
    describe = describer.describe

    def spy(request: DescribeRequest) -> str:
        seen.append(request)
        return describe(request)

    describer.describe = spy
    results = Results()
    svc = DescriberService(describer, clip_settings(clip_dir), results).start()
    try:
        svc.offer(DescribeRequest(camera="c", frame_id=1, ts=1.0, object_id=1, label="person",
                                  score=0.9, box=(140, 60, 180, 180), frame_wh=(320, 240)),
                  random_image(240, 320))
        results.wait(1)
    finally:
        svc.stop()
    crop = seen[0].crop
    assert crop is not None and crop.shape == (32, 32, 3), "a tall box becomes a square crop"
    assert results.items[0].text.startswith("person: ") and results.items[0].latency_ms > 0


# -- openai ---------------------------------------------------------------------------------

def openai_settings(url: str, **kw: Any) -> OpenAIDescriberSettings:
    kw.setdefault("model", "moondream")
    return OpenAIDescriberSettings(backend="openai", url=url, **kw)


def test_openai_request_carries_image_prompt_limits_and_key(
        chat_server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("STREAMD_DESCRIBER_API_KEY", raising=False)
    (tmp_path / "vl.key").write_text("sk-test-0123456789\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "site": "s", "cameras": [{"name": "c", "url": "x.mp4"}],
        "describer": {"backend": "openai", "url": chat_server.url, "model": "qwen2.5vl:3b",
                      "api_key_file": str(tmp_path / "vl.key"), "max_new_tokens": 24,
                      "prompt": "What is the {label} in the {zone} doing?"}}))
    config = load(cfg)
    describer = create_describer(config.settings.describer, config.describer_api_key)
    assert describer is not None and describer.model == "qwen2.5vl:3b"
    results = Results()
    assert isinstance(config.settings.describer, OpenAIDescriberSettings)
    svc = DescriberService(describer, config.settings.describer, results).start()
    frame = random_image(480, 640)
    try:
        svc.offer(DescribeRequest(camera="c", frame_id=3, ts=3.0, object_id=1, label="person",
                                  score=0.9, box=(300, 200, 340, 300), frame_wh=(640, 480)),
                  frame)
        svc.offer(DescribeRequest(camera="c", frame_id=4, ts=4.0, object_id=2, label="car",
                                  score=0.9, box=(0, 0, 600, 400), frame_wh=(640, 480)),
                  random_image(480, 640, seed=5))
        results.wait(2)
    finally:
        svc.stop()
    assert [d.text for d in results.items] == ["a person in a red jacket (1)",
                                               "a person in a red jacket (2)"]
    first, second = chat_server.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["Authorization"] == "Bearer sk-test-0123456789"
    body = first.body
    assert body["model"] == "qwen2.5vl:3b" and body["max_tokens"] == 24
    assert body["temperature"] == 0.0 and body["stream"] is False
    parts = body["messages"][0]["content"]
    assert {"type": "text", "text": "What is the person in the centre doing?"} in parts
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/jpeg;base64,")
    jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8),
                        cv2.IMREAD_COLOR)
    assert jpeg.shape == (130, 52, 3), "the 40x100 box padded by 15% on each side"
    big = cv2.imdecode(np.frombuffer(base64.b64decode(
        second.body["messages"][0]["content"][1]["image_url"]["url"].split(",", 1)[1]),
        np.uint8), cv2.IMREAD_COLOR)
    assert max(big.shape[:2]) == 512, "large crops are shrunk to image_size"
    assert first.client == second.client, "one kept-alive connection"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sk-test" not in logged and "with API key" in logged


def test_openai_slow_and_failing_servers_are_counted_and_survived(
        chat_server: ChatServer, caplog: pytest.LogCaptureFixture) -> None:
    describer = create_describer(openai_settings(chat_server.url, timeout_s=0.3),
                                 SecretStr("sk-secret-key"))
    assert describer is not None
    results = Results()
    svc = DescriberService(describer, openai_settings(chat_server.url, cache_size=0,
                                                      max_per_second=1000), results).start()
    frame = random_image(240, 320)

    def offer(oid: int) -> None:
        started = time.perf_counter()
        assert svc.offer(DescribeRequest(camera="c", frame_id=oid, ts=float(oid),
                                         object_id=oid, label="person", score=0.9,
                                         box=(10, 10, 60, 120), frame_wh=(320, 240)), frame)
        assert time.perf_counter() - started < 0.05, "offer() waited for the server"

    try:
        chat_server.mode = "stall"
        offer(1)
        offer(2)
        wait_until(lambda: svc.stats.failed == 2, timeout_s=5)
        chat_server.mode = "error"
        offer(3)
        wait_until(lambda: svc.stats.failed == 3, timeout_s=5)
        chat_server.mode = "ok"
        offer(4)
        results.wait(1)
    finally:
        svc.stop()
    assert [d.request.object_id for d in results.items] == [4]
    assert svc.stats.described == 1 and svc.stats.failed == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("no answer within 0.3 s" in m for m in messages), messages
    assert not any("sk-secret" in m for m in messages)


def test_openai_http_error_says_status_and_body(chat_server: ChatServer) -> None:
    chat_server.mode = "error"
    describer = create_describer(openai_settings(chat_server.url))
    assert describer is not None
    try:
        with pytest.raises(DescriberError, match=r"HTTP 500 .*model crashed"):
            describer.describe(crop_request(random_image(20, 20)))
    finally:
        describer.close()


def test_openai_close_wakes_a_request_stuck_on_a_stalled_server(
        chat_server: ChatServer) -> None:
    chat_server.mode = "stall"
    describer = create_describer(openai_settings(chat_server.url, timeout_s=60))
    assert describer is not None
    errors: list[BaseException] = []

    def call() -> None:
        try:
            describer.describe(crop_request(random_image(20, 20)))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    wait_until(lambda: len(chat_server.requests) == 1)
    started = time.monotonic()
    describer.close()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 2
    assert len(errors) == 1 and isinstance(errors[0], DescriberError)
    with pytest.raises(DescriberError, match="after close"):
        describer.describe(crop_request(random_image(20, 20)))


def test_openai_unreachable_server_fails_fast(tmp_path: Path) -> None:
    from tests.helpers.procs import free_port

    describer = create_describer(openai_settings(f"http://127.0.0.1:{free_port()}/v1"))
    assert describer is not None
    with pytest.raises(DescriberError, match="ConnectionRefusedError"):
        describer.describe(crop_request(random_image(20, 20)))
    describer.close()


# -- the daemon end to end ------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_stalled_vl_server_never_delays_detections(
        tmp_path: Path, sample_video: Path, mosquitto: Mosquitto,
        collector: Callable[..., Collector], daemon: Callable[..., Daemon],
        chat_server: ChatServer) -> None:
    """The same clip twice, without a describer and with one whose server never answers:
    every frame's detections arrive, in order, just as fast."""
    chat_server.mode = "stall"
    frames = 80
    stalled = {"backend": "openai", "url": chat_server.url, "model": "stalled",
               "timeout_s": 60, "queue_size": 4, "max_per_second": 50}
    runs: dict[str, tuple[Collector, Daemon]] = {}
    for name, describer in (("none", {"backend": "none"}), ("stalled", stalled)):
        sub = collector(f"{PREFIX}/#")
        cfg = daemon_config(mosquitto.port, [{"name": "vtest", "url": str(sample_video)}],
                            tmp_path / f"state-{name}", detector={"backend": "hog"},
                            describer=describer, publish_empty=True)
        d = daemon(cfg, "--max-frames", str(frames))
        assert d.wait(90) == 0, d.logs()
        sub.wait_message(f"{PREFIX}/status", lambda m: m.text == "offline", 15)
        sub.stop()  # keeps what it received; the next run gets a fresh subscriber
        runs[name] = (sub, d)

    sub, d = runs["stalled"]
    dets = [m.json for m in sub.messages(f"{PREFIX}/vtest/detections")]
    ids = [p["frame_id"] for p in dets]
    assert len(dets) == frames and ids == list(range(ids[0], ids[0] + frames)), \
        f"detections must keep flowing, every frame in order: {ids[:5]}...{ids[-5:]}"
    assert sum(len(p["objects"]) for p in dets) > 0, "HOG found nobody: nothing to describe"
    assert chat_server.requests, "the describer never reached the stalled server"
    assert not sub.messages(f"{PREFIX}/vtest/descriptions"), "the stalled server answered?"
    desc = sub.messages(f"{PREFIX}/vtest/stats")[-1].json["describer"]
    assert desc["described"] == 0 and desc["queued"] >= 1 and desc["queue"] <= 4, desc
    assert desc["model"] == "stalled"
    assert "abandoning" in d.output, "stop() gave up on the stalled request, bounded"
    assert "failed" not in d.output, "closing the stalled request at shutdown is no failure"

    def span_s(messages: list[Any]) -> float:
        return float(messages[-1].received - messages[0].received)

    def p95_latency_s(messages: list[Any]) -> float:
        return _percentile([m.received - m.json["ts"] for m in messages], 95)

    base, slow = (runs[n][0].messages(f"{PREFIX}/vtest/detections") for n in ("none", "stalled"))
    assert len(base) == frames
    assert span_s(slow) <= 1.5 * span_s(base) + 1.0, \
        f"{frames} frames took {span_s(slow):.2f} s with the VL server stalled, " \
        f"{span_s(base):.2f} s without a describer"
    assert p95_latency_s(slow) <= 1.5 * p95_latency_s(base) + 0.5, \
        f"p95 capture→subscriber latency {p95_latency_s(slow):.3f} s stalled, " \
        f"{p95_latency_s(base):.3f} s without a describer"


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_vl_demo_config_runs_once_a_model_is_in_place(
        tmp_path: Path, sample_video: Path, mosquitto: Mosquitto, smolvlm_dir: Path,
        collector: Callable[..., Collector], daemon: Callable[..., Daemon]) -> None:
    config = yaml.safe_load((REPO_ROOT / "configs/vl.yaml").read_text())
    check = tmp_path / "check"
    check.mkdir()
    (check / "vl.yaml").write_text(yaml.safe_dump(config))
    res = run_cli(["check", "-c", "vl.yaml"], cwd=check)
    assert res.returncode == 2, res
    assert "describer.model: models/smolvlm does not exist" in res.stderr, res.stderr

    models = check / "models"
    models.mkdir()
    shutil.copytree(smolvlm_dir, models / "smolvlm")
    (check / "data").mkdir()
    (check / "data/vtest.avi").symlink_to(sample_video)
    res = run_cli(["check", "-c", "vl.yaml"], cwd=check)
    assert res.returncode == 0, res.stderr

    config["mqtt"].update(port=mosquitto.port, stats_interval_s=1)
    config["state_dir"] = str(tmp_path / "state")
    config["site"] = "test"
    config["describer"]["model"] = str(models / "smolvlm")
    config["cameras"][0].update(url=str(sample_video), realtime=False)
    config["describer"].update(max_per_second=20, camera_max_per_second=20)
    sub = collector(f"{PREFIX}/#")
    d = daemon(config, "--max-frames", "60")
    assert d.wait(120) == 0, d.logs()
    sub.wait_message(f"{PREFIX}/status", lambda m: m.text == "offline", 15)
    dets = {m.json["frame_id"]: m.json for m in sub.messages(f"{PREFIX}/vtest/detections")}
    descs = [m.json for m in sub.messages(f"{PREFIX}/vtest/descriptions")]
    assert descs, f"no description\n{sub.summary()}\n{d.logs()}"
    for q in descs:
        assert q["model"] == "smolvlm" and isinstance(q["text"], str), q
        assert isinstance(q["cached"], bool) and q["latency_ms"] >= 0, q
        det = dets[q["frame_id"]]
        assert q["ts"] == det["ts"], "a description carries its frame's ts"
        assert q["object_id"] in {o["id"] for o in det["objects"]}, q
    assert any(not q["cached"] and q["latency_ms"] > 0 for q in descs)
