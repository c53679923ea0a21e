"""Crops around the motion or the whole frame: which finds more, measured with the real SSD.

The question behind `streamd.detect.schedule.WHOLE_FRAME_MAX_DOWNSCALE`. Every 4th frame of a
clip (default data/vtest.avi, 768x576) is detected three ways by the configured default
detector (the TFLite SSD), each one inference per frame:

- `native`: the clip's own whole frame — the reference, the objects at their own size;
- `whole`: the clip pasted into a larger grey frame (so the scene is smaller on the model's
  input, as on a high-resolution camera), detected whole;
- `crops`: the same larger frame, one crop around the motion ROIs (`plan_regions`, the
  pipeline's planning, `max_crops` 1).

For each frame size it prints the share of the `native` objects each way finds (same label,
IoU >= 0.5, every box in the clip's own pixels); the first row is the clip at its own size
(whole: 1.000 by definition). Motion ROIs come from `MotionStage` over every frame, as in
the daemon.

    .venv/bin/python benchmarks/crops.py [--video PATH] [--sizes 768x576,1024x768,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamd.config import validate  # noqa: E402
from streamd.detect import create_detector  # noqa: E402
from streamd.detect.crops import plan_regions  # noqa: E402
from streamd.detections import Detections  # noqa: E402
from streamd.frames import Frame, Image  # noqa: E402
from streamd.motion import MotionStage  # noqa: E402
from streamd.recall import Labelled, match_frame  # noqa: E402

GREY = 128


def labelled(dets: Detections, offset: tuple[int, int] = (0, 0)) -> list[Labelled]:
    dx, dy = offset
    return [(dets.label(i), tuple(float(v) for v in dets.xyxy[i] + (dx, dy, dx, dy)))
            for i in range(len(dets))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=str(REPO / "data" / "vtest.avi"))
    ap.add_argument("--sizes", default="1024x768,1280x720,1920x1080",
                    help="larger frames the clip is pasted into, centred")
    ap.add_argument("--step", type=int, default=4, help="detect every N-th frame")
    args = ap.parse_args()
    settings = validate({"site": "bench", "cameras": [{"name": "c", "url": args.video}]})
    detector = create_detector(settings.detector)
    assert detector is not None
    input_size = 300
    cap = cv2.VideoCapture(args.video)
    motion = MotionStage(settings.motion)
    frames: list[tuple[Image, np.ndarray]] = []
    index = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        rois = motion.propose(Frame("c", index + 1, 0.0, image)).xyxy
        if index % args.step == 0 and len(rois):
            frames.append((image, rois))
        index += 1
    motion.close()
    h, w = frames[0][0].shape[:2]
    sizes = [(w, h)] + [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"{args.video}: {len(frames)} frames with motion (every {args.step}th), "
          f"detector {settings.detector.backend} at {input_size}", file=sys.stderr)
    print(f"{'frame':>10} {'downscale':>9} {'whole':>6} {'crops':>6}  (share of the objects "
          "found on the clip's own whole frame)")
    native = [labelled(detector.detect([image])[0]) for image, _ in frames]
    total = sum(len(n) for n in native)
    for cw, ch in sizes:
        ox, oy = (cw - w) // 2, (ch - h) // 2
        found_whole = found_crops = 0
        for (image, rois), ref in zip(frames, native, strict=True):
            canvas = np.full((ch, cw, 3), GREY, np.uint8)
            canvas[oy:oy + h, ox:ox + w] = image
            whole = labelled(detector.detect([canvas])[0], (-ox, -oy))
            crops: list[Labelled] = []
            for x1, y1, x2, y2 in plan_regions(rois + np.array([ox, oy, ox, oy]),
                                               (cw, ch), input_size, 1):
                part = detector.detect([canvas[y1:y2, x1:x2]])[0]
                crops += labelled(part, (int(x1) - ox, int(y1) - oy))
            found_whole += match_frame(ref, whole)  # all three in the clip's own pixels
            found_crops += match_frame(ref, crops)
        print(f"{cw:>5}x{ch:<4} {max(cw, ch) / input_size:>9.1f} {found_whole / total:>6.3f} "
              f"{found_crops / total:>6.3f}")
    detector.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
