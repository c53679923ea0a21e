"""Build a YOLOv8-architecture ONNX detector with random weights, without torch.

Nothing can be downloaded from a model hub here, yet the ONNX Runtime and TensorRT backends
must be tested and benchmarked on the real graph: same layers, same output layout, same
metadata as an Ultralytics export. Speed does not depend on the weights' values, so a seeded
random model is a valid stand-in; its detections are noise, so it is never a demo default.

The graph follows `yolov8.yaml` (backbone, SPPF, FPN/PAN neck, decoupled head with DFL) with
every Conv+BatchNorm already folded into a Conv with bias, as an Ultralytics export does.
Anchors are computed in the graph from each feature map's shape, so batch, height and width
are all dynamic: one file serves input_size 320 and 640 (any multiple of 32).

Output `output0` is [N, 4+C, A]: cx, cy, w, h in input pixels, then C sigmoid class scores;
A = (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32).

    python engines/build_yolo_onnx.py --out engines/yolov8n-random.onnx
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamd.detect.yolo import COCO80

log = logging.getLogger(__name__)

OPSET = 17
"""17: what TensorRT 8.6+ and ONNX Runtime >= 1.14 parse; Ultralytics exports it too."""
REG_MAX = 16
STRIDES = (8, 16, 32)
BN_GAIN = 0.8
"""Output spread of every folded BN; below 1 so that frames unlike the calibration batch
decay towards it through the ~60 layers instead of growing without bound."""
CLASS_LOGITS = (-6.0, 0.5)
"""(mean, spread) of the class logits on the calibration batch: very negative like
Ultralytics' bias init, so most anchors score near 0 and a few blobs score high."""
BOX_LOGITS = (1.0, 1.5)
"""(mean, spread) of the DFL bin logits: Ultralytics initialises that bias to 1.0."""



class _Graph:
    """Accumulates nodes and initializers, and evaluates the layers that carry features on a
    small calibration batch in numpy as it goes.

    That shadow evaluation stands in for trained BatchNorm statistics: each Conv's weights
    and bias are set so its outputs have a fixed mean and spread on the calibration batch,
    which is what folding a trained BN yields. Plain He init either dies out (every output
    the same) or explodes over ~60 SiLU layers; this keeps activations O(1), so the random
    model's boxes and scores vary with the image, as a real model's do.
    """

    def __init__(self, rng: np.random.Generator, calibration: npt.NDArray[np.float32]) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[str, npt.NDArray[np.float32]] = {"images": calibration}
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"/{prefix}_{self._count}"

    def const(self, value: npt.ArrayLike, prefix: str, dtype: type = np.float32) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
           **attrs: object) -> list[str]:
        names = ([self._name(op_type) for _ in range(outputs)] if isinstance(outputs, int)
                 else list(outputs))
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names

    def op1(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        return self.op(op_type, inputs, **attrs)[0]

    def _shadow(self, name: str, value: npt.NDArray[np.floating]) -> str:
        self.values[name] = value.astype(np.float32)
        return name

    def conv(self, x: str, c2: int, k: int = 1, s: int = 1, *, head: tuple[float, float] |
             None = None) -> str:
        """Conv2d + folded BatchNorm + SiLU, or with `head=(mean, std)` the head's plain output
        Conv2d, scaled to give outputs of that mean and spread on the calibration batch."""
        xv = self.values[x]
        c1 = xv.shape[1]
        w = self.rng.normal(0.0, math.sqrt(1.0 / (c1 * k * k)), (c2, c1, k, k))
        y = _conv2d(xv, w, s)
        # One scale per layer, not per channel: a channel that happens to be flat on the
        # calibration batch must not get a huge gain that real frames then blow up.
        out_mean, out_std = head or (self.rng.normal(0.0, 0.2, c2), BN_GAIN)
        scale = out_std / (y.std() + 1e-6)
        w, b = w * scale, out_mean - y.mean(axis=(0, 2, 3)) * scale
        y = (_conv2d(xv, w, s) + b[None, :, None, None]).astype(np.float32)
        name = self.op1("Conv", [x, self.const(w, "w"), self.const(b, "b")],
                        kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
        if head is not None:
            return self._shadow(name, y)
        name = self.op1("Mul", [name, self.op1("Sigmoid", [name])])  # SiLU, as exported
        return self._shadow(name, y / (1.0 + np.exp(-y)))

    def add(self, a: str, b: str) -> str:
        return self._shadow(self.op1("Add", [a, b]), self.values[a] + self.values[b])

    def concat(self, xs: Sequence[str]) -> str:
        return self._shadow(self.op1("Concat", xs, axis=1),
                            np.concatenate([self.values[x] for x in xs], axis=1))

    def split2(self, x: str) -> tuple[str, str]:
        c = self.values[x].shape[1] // 2
        a, b = self.op("Split", [x, self.const([c, c], "split", np.int64)], 2, axis=1)
        return self._shadow(a, self.values[x][:, :c]), self._shadow(b, self.values[x][:, c:])

    def maxpool5(self, x: str) -> str:
        xv = self.values[x]
        padded = np.pad(xv, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=-np.inf)
        y = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(2, 3)).max((4, 5))
        return self._shadow(self.op1("MaxPool", [x], kernel_shape=[5, 5], strides=[1, 1],
                                     pads=[2] * 4), y)

    def upsample2(self, x: str) -> str:
        name = self.op1("Resize", [x, "", self.const([1, 1, 2, 2], "scales")], mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return self._shadow(name, self.values[x].repeat(2, axis=2).repeat(2, axis=3))

    def channels(self, x: str) -> int:
        return int(self.values[x].shape[1])


def _conv2d(x: npt.NDArray[np.float32], w: npt.NDArray[np.floating], s: int
            ) -> npt.NDArray[np.float32]:
    """NCHW convolution, padding k//2, for the calibration pass (small inputs only)."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    y: npt.NDArray[np.float32] = np.tensordot(win, w.astype(np.float32),
                                              axes=([1, 4, 5], [1, 2, 3]))
    return y.transpose(0, 3, 1, 2)


def _width(c: int, width_mult: float, max_channels: int) -> int:
    return int(math.ceil(min(c, max_channels) * width_mult / 8) * 8)


def _depth(n: int, depth_mult: float) -> int:
    return max(round(n * depth_mult), 1)


def _c2f(g: _Graph, x: str, c2: int, n: int, shortcut: bool) -> str:
    c = c2 // 2
    ys = list(g.split2(g.conv(x, 2 * c)))
    for _ in range(n):
        y = g.conv(g.conv(ys[-1], c, 3), c, 3)
        ys.append(g.add(ys[-1], y) if shortcut else y)
    return g.conv(g.concat(ys), c2)


def _sppf(g: _Graph, x: str, c2: int) -> str:
    ys = [g.conv(x, g.channels(x) // 2)]
    for _ in range(3):
        ys.append(g.maxpool5(ys[-1]))
    return g.conv(g.concat(ys), c2)


def _anchors(g: _Graph, feat: str, stride: int) -> tuple[str, str]:
    """Anchor centres (2, h*w) in grid units and the stride row (1, h*w), from the feature
    map's runtime shape — what makes the input's height and width dynamic."""
    hw = g.op1("Shape", [feat], start=2, end=4)
    h, w = (g.op1("Cast", [g.op1("Gather", [hw, g.const(i, "idx", np.int64)], axis=0)],
                  to=TensorProto.FLOAT) for i in (0, 1))
    half, one = g.const(0.5, "half"), g.const(1.0, "one")
    xs = g.op1("Range", [half, g.op1("Add", [w, half]), one])
    ys = g.op1("Range", [half, g.op1("Add", [h, half]), one])
    gx = g.op1("Expand", [g.op1("Unsqueeze", [xs, g.const([0], "axes", np.int64)]), hw])
    gy = g.op1("Expand", [g.op1("Unsqueeze", [ys, g.const([1], "axes", np.int64)]), hw])
    row = g.const([1, -1], "shape", np.int64)
    gx, gy = g.op1("Reshape", [gx, row]), g.op1("Reshape", [gy, row])
    strides = g.op1("Expand", [g.const([[stride]], "stride"), g.op1("Shape", [gx])])
    return g.op1("Concat", [gx, gy], axis=0), strides


def _detect_head(g: _Graph, feats: Sequence[str], nc: int) -> str:
    c2 = max(16, g.channels(feats[0]) // 4, REG_MAX * 4)
    c3 = max(g.channels(feats[0]), min(nc, 100))
    flat = g.const([0, 0, -1], "shape", np.int64)
    boxes, scores, anchors, strides = [], [], [], []
    for x, stride in zip(feats, STRIDES, strict=True):
        box = g.conv(g.conv(g.conv(x, c2, 3), c2, 3), 4 * REG_MAX, head=BOX_LOGITS)
        cls = g.conv(g.conv(g.conv(x, c3, 3), c3, 3), nc, head=CLASS_LOGITS)
        boxes.append(g.op1("Reshape", [box, flat]))
        scores.append(g.op1("Reshape", [cls, flat]))
        a, s = _anchors(g, x, stride)
        anchors.append(a)
        strides.append(s)
    box = g.op1("Concat", boxes, axis=2)
    anchor = g.op1("Concat", anchors, axis=1)
    stride_row = g.op1("Concat", strides, axis=1)
    # DFL: each side is a 16-bin distribution over distances; its expectation is the distance.
    dist = g.op1("Reshape", [box, g.const([0, 4, REG_MAX, -1], "shape", np.int64)])
    dist = g.op1("Softmax", [dist], axis=2)
    proj = g.const(np.arange(REG_MAX, dtype=np.float32).reshape(1, 1, REG_MAX, 1), "dfl")
    dist = g.op1("ReduceSum", [g.op1("Mul", [dist, proj]), g.const([2], "axes", np.int64)],
                 keepdims=0)
    lt, rb = g.op("Split", [dist, g.const([2, 2], "split", np.int64)], 2, axis=1)
    x1y1, x2y2 = g.op1("Sub", [anchor, lt]), g.op1("Add", [anchor, rb])
    cxy = g.op1("Mul", [g.op1("Add", [x1y1, x2y2]), g.const(0.5, "half")])
    wh = g.op1("Sub", [x2y2, x1y1])
    xywh = g.op1("Mul", [g.op1("Concat", [cxy, wh], axis=1), stride_row])
    cls = g.op1("Sigmoid", [g.op1("Concat", scores, axis=2)])
    return g.op("Concat", [xywh, cls], ["output0"], axis=1)[0]


def build_model(num_classes: int = 80, *, seed: int = 0, width_mult: float = 0.25,
                depth_mult: float = 0.33, max_channels: int = 1024, imgsz: int = 640,
                names: Sequence[str] | None = None) -> onnx.ModelProto:
    """The YOLOv8 graph with seeded random weights; defaults are YOLOv8n (~3.2 M weights).

    `imgsz` only goes into the metadata (the size the "model was trained at"); the graph
    accepts any height and width that are multiples of 32.
    """
    if names is None:
        names = [COCO80[i] if i < len(COCO80) else f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")
    rng = np.random.default_rng(seed)
    # Calibration batch: random images with structure at every scale (block noise of
    # 2..32 px), not white noise, so the folded BN statistics resemble camera frames'.
    size = 256
    calibration = np.concatenate([rng.random((1, 3, size // b, size // b))
                                  .repeat(b, 2).repeat(b, 3) for b in (2, 4, 8, 16, 32)])
    g = _Graph(rng, calibration.astype(np.float32))

    def ch(c: int) -> int:
        return _width(c, width_mult, max_channels)

    def n(k: int) -> int:
        return _depth(k, depth_mult)

    # Backbone (yolov8.yaml layers 0-9).
    x = g.conv(g.conv("images", ch(64), 3, 2), ch(128), 3, 2)
    x = g.conv(_c2f(g, x, ch(128), n(3), True), ch(256), 3, 2)
    p3 = _c2f(g, x, ch(256), n(6), True)
    p4 = _c2f(g, g.conv(p3, ch(512), 3, 2), ch(512), n(6), True)
    x = _c2f(g, g.conv(p4, ch(1024), 3, 2), ch(1024), n(3), True)
    p5 = _sppf(g, x, ch(1024))
    # Neck: FPN top-down, then PAN bottom-up (layers 10-21).
    h12 = _c2f(g, g.concat([g.upsample2(p5), p4]), ch(512), n(3), False)
    out3 = _c2f(g, g.concat([g.upsample2(h12), p3]), ch(256), n(3), False)
    out4 = _c2f(g, g.concat([g.conv(out3, ch(256), 3, 2), h12]), ch(512), n(3), False)
    out5 = _c2f(g, g.concat([g.conv(out4, ch(512), 3, 2), p5]), ch(1024), n(3), False)
    output = _detect_head(g, [out3, out4, out5], num_classes)

    graph = helper.make_graph(
        g.nodes, "yolov8-random",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                       ["batch", 4 + num_classes, "anchors"])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="streamd-build-yolo-onnx")
    model.ir_version = 8  # readable by every ONNX Runtime and TensorRT that parses opset 17
    meta = {
        "description": f"YOLOv8 architecture (width {width_mult}, depth {depth_mult}) "
                       f"with random weights, seed {seed}: for tests and benchmarks only",
        "author": "streamd engines/build_yolo_onnx.py",
        "stride": str(max(STRIDES)),
        "task": "detect",
        "batch": "1",
        "imgsz": str([imgsz, imgsz]),
        "names": str(dict(enumerate(names))),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def weight_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def save(model: onnx.ModelProto, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(out)  # a reader never sees half a file
    return out


def build(out: str | Path, num_classes: int = 80, *, seed: int = 0, width_mult: float = 0.25,
          depth_mult: float = 0.33, imgsz: int = 640) -> Path:
    """Build and save; returns the path. The entry point tests and setup scripts call."""
    return save(build_model(num_classes, seed=seed, width_mult=width_mult,
                            depth_mult=depth_mult, imgsz=imgsz), out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("engines/yolov8n-random.onnx"))
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width-mult", type=float, default=0.25, help="0.25 = n, 0.5 = s")
    p.add_argument("--depth-mult", type=float, default=0.33, help="0.33 = n and s")
    p.add_argument("--imgsz", type=int, default=640, help="recorded in the metadata")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    model = build_model(args.classes, seed=args.seed, width_mult=args.width_mult,
                        depth_mult=args.depth_mult, imgsz=args.imgsz)
    save(model, args.out)
    log.info("%s: %d weights, %.1f MB, %.1f s", args.out, weight_count(model),
             args.out.stat().st_size / 1e6, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
