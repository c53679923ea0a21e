"""`streamd bench`'s recall against the reference: the matching rule as a table, and one short
real run (real mosquitto, the default TFLite detector on vtest.avi) that reports recall and
both CPU costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamd.detect.tflite import DEFAULT_LABELS, DEFAULT_MODEL, FETCH_COMMAND
from streamd.recall import Labelled, compare, match_frame, objects_by_frame, stability
from tests.helpers.procs import REPO_ROOT, streamd_env

P = "person"
A = (0.0, 0.0, 10.0, 10.0)
A_SHIFTED = (2.0, 0.0, 12.0, 10.0)  # IoU 8/12 = 0.67 with A
A_FAR = (6.0, 0.0, 16.0, 10.0)  # IoU 4/16 = 0.25 with A
B = (100.0, 100.0, 120.0, 140.0)


@pytest.mark.parametrize(("reference", "published", "matched"), [
    ([], [], 0),
    ([(P, A)], [], 0),
    ([], [(P, A)], 0),
    ([(P, A)], [(P, A)], 1),
    ([(P, A)], [(P, A_SHIFTED)], 1),
    ([(P, A)], [(P, A_FAR)], 0),  # below IoU 0.5
    ([(P, A)], [("car", A)], 0),  # same box, other label
    ([(P, A), (P, B)], [(P, A)], 1),
    ([(P, A)], [(P, A), (P, A_SHIFTED)], 1),  # one reference object is matched once
    ([(P, A), (P, A_SHIFTED)], [(P, A)], 1),  # one published object matches once
    # each reference object takes its exact copy, not the 0.67 cross pair
    ([(P, A), (P, A_SHIFTED)], [(P, A_SHIFTED), (P, A)], 2),
    ([(P, A), ("car", B)], [("car", B), (P, A_SHIFTED)], 2),
])
def test_match_frame(reference: list[Labelled], published: list[Labelled],
                     matched: int) -> None:
    assert match_frame(reference, published) == matched


def test_compare_counts_frames_missing_on_either_side() -> None:
    reference = {1: [(P, A)], 2: [(P, A), (P, B)], 3: [(P, B)]}
    published = {1: [(P, A_SHIFTED)], 2: [(P, B), (P, A_FAR)], 4: [(P, A)]}
    counts = compare(reference, published)
    assert (counts.reference, counts.matched, counts.published) == (4, 2, 4)
    assert counts.extra == 2  # A_FAR in frame 2, and frame 4 which the reference lacks
    assert counts.recall == pytest.approx(0.5)
    assert counts.as_dict()["missed"] == 2


def test_stability_compares_each_frame_with_the_one_before() -> None:
    reference = {1: [(P, A)], 2: [(P, A_SHIFTED), (P, B)], 3: [(P, A_FAR)], 5: [(P, A_FAR)]}
    counts = stability(reference)
    # frame 2: A_SHIFTED matches frame 1's A, B is new; frame 3: A_FAR is too far from
    # A_SHIFTED; frame 5: frame 4 published nothing; frame 1: nothing before it
    assert (counts.reference, counts.matched) == (5, 1)
    assert stability({}).recall is None


def test_compare_empty_reference_has_no_recall() -> None:
    assert compare({}, {}).recall is None
    counts = compare({1: []}, {1: [(P, A)]})
    assert counts.recall is None and counts.extra == 1


def test_objects_by_frame_reads_contract_payloads_and_dedupes_redelivery() -> None:
    msg = {"frame_id": 7, "objects": [{"id": 1, "label": P, "score": 0.9, "box": [0, 0, 10, 10]}]}
    got = objects_by_frame([msg, msg, {"frame_id": 8, "rois": [], "objects": []}])
    assert got == {7: [(P, A)], 8: []}


@pytest.mark.timeout(120)
def test_bench_reports_recall_and_both_cpu_costs(tmp_path: Path, sample_video: Path,
                                                 mosquitto_bin: str) -> None:
    """A short real run: the default pipeline (the TFLite SSD) against its reference, on 24
    vtest frames."""
    model, labels = REPO_ROOT / DEFAULT_MODEL, REPO_ROOT / DEFAULT_LABELS
    if not (model.is_file() and labels.is_file()):
        pytest.fail(f"{model} missing: run {FETCH_COMMAND} (or ./scripts/setup.sh)",
                    pytrace=False)
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"""site: b
state_dir: {tmp_path / 'state'}
detector: {{backend: tflite, model: {model}, labels_file: {labels}}}
describer: {{backend: none}}
cameras: [{{name: v, url: {sample_video}}}]
""")
    res = subprocess.run([sys.executable, "-m", "streamd", "bench", "-c", str(cfg),
                          "--frames", "24", "--json"],
                         capture_output=True, text=True, timeout=110, env=streamd_env(),
                         cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for variant in ("streamd", "reference"):
        v = out[variant]
        assert v["frames_analysed"] == 24, v
        assert v["cpu_s_per_frame"] > 0 and v["peak_rss_mb"] > 50
        assert v["latency_ms"]["p99"] >= v["latency_ms"]["p50"] > 0
        assert {"detect", "publish"} <= v["stage_ms"].keys()
    assert out["reference"]["detector_runs"] == 24  # every whole frame, once
    assert out["reference"]["detector"]["crops"] == 24
    assert out["streamd"]["stage_ms"]["motion"] > 10 * out["reference"]["stage_ms"]["motion"]
    rec = out["recall"]
    assert rec["reference_objects"] > 0, "the reference found no one in vtest"
    assert 0.0 <= rec["recall"] <= 1.0
    assert rec["matched"] + rec["missed"] == rec["reference_objects"]
    assert 0.5 < out["reference_stability"] <= 1.0, "vtest's walkers are found frame to frame"
    assert out["cpu_ratio"] == pytest.approx(
        out["streamd"]["cpu_s_per_frame"] / out["reference"]["cpu_s_per_frame"], rel=0.01)
    assert {"decode", "motion", "detector_full_frame"} <= out["alone"].keys()
