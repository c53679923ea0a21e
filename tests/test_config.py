"""Config validation: every problem reported with file, key path, line and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streamd import config
from streamd.cli import main

GOOD = """\
site: plant-a
mqtt: {host: 127.0.0.1, port: 1883}
detector: {backend: hog}
cameras:
  - name: gate-1
    url: rtsp://u:p@10.0.0.5/stream
    fps: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamd.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str) -> list[config.Problem]:
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text))
    return info.value.problems


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    s = cfg.settings
    assert s.topic_prefix == "streamd/plant-a"
    assert s.client_id == "streamd-plant-a"
    assert s.cameras[0].kind == "rtsp"
    assert s.detector.backend == "hog"
    assert s.describer.backend == "template"
    assert s.motion.threshold == "auto"
    assert cfg.mqtt_password is None


@pytest.mark.parametrize(("snippet", "path", "words"), [
    ("site: plant a\ncameras: [{name: c, url: x}]\n", "site", "pattern"),
    ("site: s\ncameras: []\n", "cameras", "at least 1"),
    ("site: s\n", "cameras", "required"),
    ("site: s\nmqtt: {port: 70000}\ncameras: [{name: c, url: x}]\n", "mqtt.port", "65535"),
    ("site: s\nmqtt: {hots: x}\ncameras: [{name: c, url: x}]\n", "mqtt.hots", "unknown key"),
    ("site: s\nmqtt: {topic_prefix: a/#}\ncameras: [{name: c, url: x}]\n",
     "mqtt.topic_prefix", "without + or #"),
    ("site: s\ndetector: {backend: yolo}\ncameras: [{name: c, url: x}]\n", "detector",
     "onnxruntime"),
    ("site: s\ndetector: {backend: onnxruntime}\ncameras: [{name: c, url: x}]\n",
     "detector.model", "required"),
    ("site: s\ndetector: {backend: onnxruntime, model: m.onnx, input_size: 300}\n"
     "cameras: [{name: c, url: x}]\n", "detector.input_size", "multiple of 32"),
    ("site: s\nmotion: {threshold: fast}\ncameras: [{name: c, url: x}]\n",
     "motion.threshold", "auto"),
    ("site: s\ncameras: [{name: c, url: x, fps: 0}]\n", "cameras[0].fps", "greater than 0"),
    ("site: s\ncameras: [{name: c, url: x, fpss: 3}]\n", "cameras[0].fpss", "unknown key"),
    ("site: s\ncameras: [{name: c/d, url: x}]\n", "cameras[0].name", "pattern"),
    ("site: s\ncameras: [{name: c, url: -1}]\n", "cameras[0].url", ">= 0"),
    ("site: s\ncameras: [{name: c, url: x}, {name: c, url: y}]\n", "cameras", "used twice"),
    ("site: s\ncameras: [{name: c, url: x, ignore: [[[0, 0], [1, 1]]]}]\n",
     "cameras[0].ignore", "at least 3 points"),
    ("site: s\nmqtt: {tls: {cert_file: a.pem}}\ncameras: [{name: c, url: x}]\n",
     "mqtt.tls", "together"),
])
def test_each_bad_key_is_named(tmp_path: Path, snippet: str, path: str, words: str) -> None:
    problems = problems_of(tmp_path, snippet)
    assert [p.path for p in problems] == [path], problems
    assert words in problems[0].message
    assert problems[0].file.endswith("streamd.yaml")


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        site: s
        mqtt:
          port: 0
          qos: 3
        cameras:
          - name: a
            url: x
            fps: -1
          - name: b
            url: y
            fpss: 3
        """)
    got = {p.path: p.line for p in problems}
    assert got == {"mqtt.port": 3, "mqtt.qos": 4, "cameras[0].fps": 8, "cameras[1].fpss": 11}
    assert str(problems[0]).startswith(str(tmp_path / "streamd.yaml") + ":3: mqtt.port: ")


@pytest.mark.parametrize(("text", "words"), [
    ("site: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "mapping"),
    ("", "mapping"),
])
def test_documents_that_are_not_configs(tmp_path: Path, text: str, words: str) -> None:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1 and words in problems[0].message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")


def test_password_from_file_env_and_credentials_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = config.load(write(tmp_path, GOOD.replace(
        "port: 1883}", f"port: 1883, username: ops, password_file: {tmp_path / 'pw'}}}")))
    assert cfg.mqtt_password is not None
    assert cfg.mqtt_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt.pass").write_text("fromsystemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.load(write(tmp_path, GOOD.replace(
        "port: 1883}", "port: 1883, username: ops, password_file: mqtt.pass}")))
    assert cfg.mqtt_password is not None
    assert cfg.mqtt_password.get_secret_value() == "fromsystemd"

    monkeypatch.setenv(config.PASSWORD_ENV, "fromenv")
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.mqtt_password is not None
    assert cfg.mqtt_password.get_secret_value() == "fromenv"


def test_missing_password_file_is_a_problem(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD.replace(
        "port: 1883}", "port: 1883, password_file: /nonexistent/pw}"))
    assert problems[0].path == "mqtt.password_file"


def test_preflight_finds_missing_files(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, """\
        site: s
        detector: {backend: onnxruntime, model: /nonexistent/m.onnx}
        cameras:
          - {name: a, url: rtsp://x/y}
          - {name: b, url: /nonexistent/v.mp4}
          - {name: c, url: 0}
        """))
    assert [p.path for p in config.preflight(cfg)] == ["detector.model", "cameras[1].url"]
    assert [c.kind for c in cfg.settings.cameras] == ["rtsp", "file", "device"]


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(write(tmp_path, GOOD))]) == 0
    assert "OK" in capsys.readouterr().out
    bad = write(tmp_path, GOOD.replace("fps: 10", "fps: 10\n    fpss: 3").replace(
        "port: 1883", "port: 70000"))
    assert main(["check", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cameras[0].fpss: unknown key" in err and "mqtt.port:" in err
    assert "2 problem(s)" in err


def test_state_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = config.validate({"site": "s", "cameras": [{"name": "c", "url": "x"}]})
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert s.resolved_state_dir() == Path("state")
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}:/other")
    assert s.resolved_state_dir() == tmp_path


@pytest.mark.parametrize(("tracker", "expected"), [
    (None, (0.3, 15)),
    ({"iou": 0.5, "max_missed": 3}, (0.5, 3)),
])
def test_tracker_section(tracker: dict[str, float] | None, expected: tuple[float, int]) -> None:
    data: dict[str, object] = {"site": "s", "cameras": [{"name": "c", "url": "x"}]}
    if tracker is not None:
        data["tracker"] = tracker
    t = config.validate(data).tracker
    assert (t.iou, t.max_missed) == expected


def test_tracker_section_is_strict(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD + "tracker: {iou: 0, maxmissed: 2}\n")
    assert {p.path for p in problems} == {"tracker.iou", "tracker.maxmissed"}
    assert all(p.line == 8 for p in problems)


@pytest.mark.parametrize("backend", ["none", "hog"])
def test_every_detector_has_the_schedule_fields(backend: str) -> None:
    """The detection schedule reads them for any backend, `none` included."""
    s = config.validate({"site": "s", "cameras": [{"name": "c", "url": "x"}],
                         "detector": {"backend": backend, "interval": 3}})
    det = s.detector
    assert (det.interval, det.full_frame_every, det.max_crops) == (3, 0, 1)
    assert det.runs is (backend != "none")


def test_preflight_asks_each_section(tmp_path: Path) -> None:
    """TensorRT, describer and TLS problems come from their own settings models."""
    cfg = config.load(write(tmp_path, """\
        site: s
        mqtt: {tls: {ca_file: /nonexistent/ca.pem}}
        detector: {backend: tensorrt, model: /nonexistent/m.engine}
        describer: {backend: clip, model: /nonexistent/clip, vocabulary: [a, b]}
        cameras:
          - {name: a, url: /nonexistent/v.mp4}
        """))
    paths = [p.path for p in config.preflight(cfg)]
    assert paths[0] == "detector.model" and "describer.model" in paths
    assert paths[-2:] == ["cameras[0].url", "mqtt.tls.ca_file"]
