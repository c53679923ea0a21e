"""`streamd run | check | watch | bench | engine build | export`: the operator's entry points.

Exit codes are part of the interface: 0 done (or drained after SIGTERM/SIGINT), 1 a
startup failure the log explains (model file unusable, …), 2 an invalid config, 75
(EX_TEMPFAIL) every camera ended but the broker did not take every message within
`mqtt.drain_timeout_s` (they stay in the outbox; systemd's Restart=on-failure retries).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from streamd import __version__, config

log = logging.getLogger("streamd")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2  # 75 (EX_TEMPFAIL) is app.EXIT_TEMPFAIL


def _setup_logging(level: str) -> None:
    """One handler on the root logger. Under systemd (JOURNAL_STREAM set) journald adds the
    time stamp, so lines carry only level, logger and `key=value` message."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


def _load(path: Path) -> config.Config | None:
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        problems = exc.problems
    else:
        problems = config.preflight(cfg)
        if not problems:
            return cfg
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
    return None


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    s = cfg.settings
    print(f"{args.config}: OK — site {s.site}, {len(s.cameras)} camera(s), "
          f"detector {s.detector.backend}, describer {s.describer.backend}, "
          f"broker {s.mqtt.host}:{s.mqtt.port}, topics {s.topic_prefix}/…")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    _setup_logging(args.log_level or cfg.settings.log_level)
    from streamd.app import App
    from streamd.describe import DescriberError
    from streamd.detect import DetectorError
    from streamd.metrics import MetricsError
    from streamd.web import WebError

    app = App(cfg, max_frames=args.max_frames)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        app.request_stop(signal.Signals(signum).name)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        app.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        code = app.run()
    except (DetectorError, DescriberError, MetricsError, WebError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    if app.abandoned:
        # A worker is still stuck in native code (a detector call, a source read). Normal
        # interpreter teardown would run library destructors under it, which can hang or
        # crash past the stop timeout; everything that matters is flushed already.
        log.warning("exiting with worker threads still stuck")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_watch(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    from streamd.watch import watch

    return watch(cfg, until_offline=args.until_offline)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_engine_build(args: argparse.Namespace) -> int:
    """ONNX -> TensorRT engine in the engine cache; prints the engine's path on stdout."""
    from streamd.detect import DetectorError
    from streamd.detect.tensorrt.build import BUILD_OVERRIDES, build_engine, build_settings

    base = None
    if args.config is not None:
        cfg = _load(args.config)
        if cfg is None:
            return EXIT_CONFIG
        base = cfg.settings.detector
    _setup_logging(args.log_level)
    try:
        settings = build_settings(base, {k: getattr(args, k) for k in BUILD_OVERRIDES})
    except ValueError as exc:
        print(f"streamd engine build: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = build_engine(settings, report=_progress, force=args.force)
    except DetectorError as exc:
        print(f"streamd engine build: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(result.path)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Ultralytics .pt -> ONNX with a dynamic batch axis and class names."""
    from streamd.export import ExportError, export_onnx

    _setup_logging("INFO")
    try:
        export_onnx(args.weights, args.out, args.imgsz, opset=args.opset, report=_progress)
    except ExportError as exc:
        print(f"streamd export: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT or all files end")
    run.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    run.add_argument("--max-frames", type=int, default=None, metavar="N",
                     help="stop each camera after N analysed frames (tests, benchmarks)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="override the config's log_level")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config; exit 2 listing every problem")
    check.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    check.set_defaults(func=cmd_check)
    w = sub.add_parser("watch", help="print what the daemon publishes (a real MQTT subscriber)")
    w.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    w.add_argument("--until-offline", action="store_true",
                   help="exit when the daemon publishes offline")
    w.set_defaults(func=cmd_watch)
    eng = sub.add_parser("engine", help="TensorRT engines (see engines/README.md)")
    eng_sub = eng.add_subparsers(dest="engine_command", required=True)
    b = eng_sub.add_parser("build", help="build the TensorRT engine for a config or an ONNX "
                           "file into the engine cache; progress on stderr, path on stdout")
    b.add_argument("-c", "--config", type=Path, help="take detector settings from this config "
                   "(detector.backend: tensorrt); the options below override them")
    b.add_argument("--onnx", dest="model", type=Path, help="ONNX model (detector.model)")
    b.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    b.add_argument("--calibration-dir", type=Path, help="images for int8 calibration")
    b.add_argument("--min-batch", type=int, metavar="N")
    b.add_argument("--opt-batch", type=int, metavar="N")
    b.add_argument("--max-batch", type=int, metavar="N")
    b.add_argument("--input-size", type=int, metavar="PX")
    b.add_argument("--workspace-mb", type=int, metavar="MB")
    b.add_argument("--engine-dir", type=Path, help="engine cache directory")
    b.add_argument("--device", type=int, help="CUDA device index")
    b.add_argument("--force", action="store_true", help="rebuild even if a matching engine "
                   "is cached")
    b.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   default="WARNING", help="TensorRT's own messages (default WARNING)")
    b.set_defaults(func=cmd_engine_build)
    x = sub.add_parser("export", help="Ultralytics .pt weights -> ONNX for engine build "
                       "(needs pip install streamd[export])")
    x.add_argument("--weights", type=Path, required=True, help="Ultralytics detect weights")
    x.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    x.add_argument("--imgsz", type=int, default=640, help="input size to trace at")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    x.set_defaults(func=cmd_export)
    from streamd.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_frames", None) is not None and args.max_frames < 1:
        print("--max-frames must be >= 1", file=sys.stderr)
        return EXIT_CONFIG
    code: int = args.func(args)
    return code
