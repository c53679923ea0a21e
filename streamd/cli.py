"""`streamd run | check | watch`: the operator's entry points.

Exit codes are part of the interface: 0 done (or drained after SIGTERM/SIGINT), 1 a
startup failure the log explains (model file unusable, …), 2 an invalid config.
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

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


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

    app = App(cfg, max_frames=args.max_frames)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        app.request_stop(signal.Signals(signum).name)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        app.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        return app.run()
    except (DetectorError, DescriberError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE


def cmd_watch(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    from streamd.watch import watch

    return watch(cfg, until_offline=args.until_offline)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_frames", None) is not None and args.max_frames < 1:
        print("--max-frames must be >= 1", file=sys.stderr)
        return EXIT_CONFIG
    code: int = args.func(args)
    return code
