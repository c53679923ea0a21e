"""Motion stage cost and recall, in one run, optionally against another git revision.

CPU milliseconds per frame of `MotionStage.propose` on real video (data/vtest.avi, 768x576,
and the same frames resized to 960x540), at the default settings, measured as this
thread's CPU time (`time.thread_time`: other processes' time is not counted, though their
load still slows this thread) with one OpenCV thread, median of `--runs` runs; next to it
the synthetic-shapes recall (`tests/test_motion.py::measure_recall`: fast 2-6 px/frame and
slow 0.7-2 px/frame movers, clean and with sigma-8 noise) and the ROIs a still, noisy scene
yields (must be 0).

    .venv/bin/python benchmarks/motion.py --against <rev>

`--against` loads `streamd/motion.py` and `streamd/flow.py` as committed at that revision
(`git show`) and runs the same measurements on them. The versions take turns frame by
frame (each its own stage, the same frames), so that the load of a shared box, which
inflates even thread CPU time (caches, a sibling hyperthread), hits them alike: their
ratio holds where the absolute figures move by 30 %.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import streamd.flow  # noqa: E402
from streamd.frames import Frame  # noqa: E402
from streamd.motion import MotionSettings, MotionStage  # noqa: E402
from tests.test_motion import frame, measure_recall, render, still  # noqa: E402

SIZES = ((960, 540), (768, 576))
RECALL_SETS: dict[str, dict[str, Any]] = {
    "fast": {"speed": (2, 6)},
    "fast, noise 8": {"speed": (2, 6), "noise": 8.0},
    "slow": {"speed": (0.7, 2)},
    "slow, noise 8": {"speed": (0.7, 2), "noise": 8.0},
}
StageType = Callable[[MotionSettings], MotionStage]


def load_revision(rev: str) -> ModuleType:
    """`streamd/motion.py` as committed at `rev`, imported under another module name, with
    the `streamd/flow.py` of the same revision (where it has one): the working tree's flow
    module would mix two versions."""
    flow_at_rev = _import_at(rev, "streamd/flow.py")
    saved = streamd.flow
    if flow_at_rev is not None:  # `from streamd import flow` reads the package attribute
        setattr(streamd, "flow", flow_at_rev)  # noqa: B010
    try:
        module = _import_at(rev, "streamd/motion.py")
    finally:
        setattr(streamd, "flow", saved)  # noqa: B010
    if module is None:
        raise SystemExit(f"streamd/motion.py is not in {rev}")
    return module


def _import_at(rev: str, path: str) -> ModuleType | None:
    """The module at `path` as committed at `rev`, under a name of its own; None if absent."""
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    stem = Path(path).stem
    file = Path("/tmp") / f"streamd_{stem}_{rev.replace('/', '_')}.py"
    file.write_text(shown.stdout)
    name = f"{stem}_{abs(hash(rev))}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while building Rois
    spec.loader.exec_module(module)
    return module


def read_video(path: Path, n: int) -> list[Frame]:
    cap = cv2.VideoCapture(str(path))
    frames: list[Frame] = []
    while len(frames) < n:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(Frame("bench", len(frames), len(frames) / 10, np.asarray(image, np.uint8)))
    cap.release()
    if len(frames) < 2:
        raise SystemExit(f"{path}: fewer than 2 frames")
    return frames


def resized(frames: Sequence[Frame], wh: tuple[int, int]) -> list[Frame]:
    if frames[0].wh == wh:
        return list(frames)
    out = []
    for f in frames:
        image = np.asarray(cv2.resize(f.image, wh, interpolation=cv2.INTER_AREA), np.uint8)
        out.append(Frame(f.camera, f.frame_id, f.ts, image))
    return out


def ms_per_frame(variants: dict[str, StageType],
                 frames: Sequence[Frame]) -> dict[str, tuple[float, int]]:
    """Per variant: thread CPU ms per `propose` over `frames` with a fresh stage, and the
    ROIs found; the variants take turns on each frame, the first changing every frame."""
    stages = {name: stage_type(MotionSettings()) for name, stage_type in variants.items()}
    spent = dict.fromkeys(stages, 0.0)
    rois = dict.fromkeys(stages, 0)
    names = list(stages)
    for i, f in enumerate(frames):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.thread_time()
            rois[name] += len(stages[name].propose(f))
            spent[name] += time.thread_time() - start
    return {name: (spent[name] / len(frames) * 1e3, rois[name]) for name in names}


def still_rois(stage_type: StageType, n: int = 30) -> int:
    """ROIs over still scenes (texture and flat walls) with sensor noise sigma 3, 8, 15."""
    total = 0
    for kind in ("texture", "flat"):
        for noise in (3.0, 8.0, 15.0):
            rng = np.random.default_rng(7)
            image = still(kind=kind, wh=(640, 480))
            stage = stage_type(MotionSettings())
            for i in range(n):
                total += len(stage.propose(frame(render(image, [], noise=noise, rng=rng), i)))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=REPO / "data" / "vtest.avi")
    ap.add_argument("--frames", type=int, default=200, help="frames of the video used")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per size; median")
    ap.add_argument("--against", metavar="REV", help="also measure motion.py at this revision")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    variants: dict[str, StageType] = {"working tree": MotionStage}
    if args.against:
        variants[args.against] = load_revision(args.against).MotionStage
    video = read_video(args.video, args.frames)
    clips = {wh: resized(video, wh) for wh in SIZES}
    times: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    rois: dict[str, dict[str, int]] = {v: {} for v in variants}
    for _ in range(args.runs):
        for wh, clip in clips.items():
            key = f"{wh[0]}x{wh[1]}"
            for name, (ms, n) in ms_per_frame(variants, clip).items():
                times[name].setdefault(key, []).append(ms)
                rois[name][key] = n
    report: dict[str, Any] = {}
    for name, stage_type in variants.items():
        report[name] = {
            "ms_per_frame": {k: round(statistics.median(v), 2) for k, v in times[name].items()},
            "ms_runs": {k: [round(x, 2) for x in v] for k, v in times[name].items()},
            "video_rois": rois[name],
            "recall": {label: round(measure_recall(stage_type=stage_type, **kw), 3)
                       for label, kw in RECALL_SETS.items()},
            "still_noisy_rois": still_rois(stage_type),
        }
    if args.against:  # per run, so that both figures of a ratio saw the same load
        base = times[args.against]
        report["working tree"]["ratio_to_against"] = {
            k: round(statistics.median(a / b for a, b in zip(v, base[k], strict=True)), 3)
            for k, v in times["working tree"].items()}
    if args.json:
        print(json.dumps({"video": str(args.video), "frames": len(video), "runs": args.runs,
                          "results": report}, indent=2))
        return 0
    print(f"motion stage, default settings, {len(video)} frames of {args.video.name}, "
          f"1 OpenCV thread, thread CPU time, median of {args.runs} runs")
    cols = [f"{w}x{h} ms/frame" for w, h in SIZES] + list(RECALL_SETS) + ["still ROIs"]
    print(f"{'':14s}" + "".join(f"{c:>17s}" for c in cols))
    for name, r in report.items():
        cells = [f"{r['ms_per_frame'][f'{w}x{h}']:.2f}" for w, h in SIZES]
        cells += [f"{r['recall'][k]:.3f}" for k in RECALL_SETS] + [str(r["still_noisy_rois"])]
        print(f"{name[:14]:14s}" + "".join(f"{c:>17s}" for c in cells))
    if args.against:
        ratios = report["working tree"]["ratio_to_against"]
        print(f"{'ratio':14s}" + "".join(f"{ratios[f'{w}x{h}']:>17.3f}" for w, h in SIZES)
              + f"   (working tree / {args.against}, median of the per-run ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
