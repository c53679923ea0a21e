"""Ports, and the streamd daemon as a real child process.

The daemon is started exactly as an operator (or systemd) would, ``python -m streamd run -c
FILE``, so tests cover the CLI, config loading, signal handling and exit codes, not just the
library.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) \
        if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


def die_with_parent() -> None:
    """``preexec_fn`` for every child a test starts: the kernel sends it SIGTERM when the test
    process dies. Children run in their own session (so a Ctrl-C reaches pytest, whose
    teardown then stops them in order), which also means a pytest killed by a CI timeout would
    otherwise leave brokers, cameras and daemons running, holding ports."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

def terminate(proc: subprocess.Popen[Any] | None, timeout_s: float) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit status, None if there was no
    process. Servers get SIGTERM first so they can save state (mosquitto's persistence)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout_s)


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, never the same one twice in this test process (so
    a broker and a camera started back to back cannot be given the same port)."""
    with _port_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port found")


def daemon_config(mqtt_port: int, cameras: Sequence[Mapping[str, Any]], state_dir: Path, *,
                  site: str = "test", detector: Mapping[str, Any] | None = None,
                  describer: Mapping[str, Any] | None = None,
                  motion: Mapping[str, Any] | None = None, **mqtt: Any) -> dict[str, Any]:
    """A config dict in the documented YAML shape; ``**mqtt`` overrides ``mqtt.*`` keys.

    Defaults are the cheap ones (no detector, no describer, stats every second) so a test
    opts into the expensive stages it is about."""
    return {
        "site": site,
        "state_dir": str(state_dir),
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "qos": 1, "publish_empty": False,
                 "stats_interval_s": 1, **mqtt},
        "detector": dict(detector or {"backend": "none"}),
        "describer": dict(describer or {"backend": "none"}),
        "motion": dict(motion or {"scale_width": 320, "threshold": "auto", "min_area": 0.001}),
        "cameras": [dict(c) for c in cameras],
    }


def streamd_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a streamd child: the repo importable, output unbuffered so the log
    files are current when a test reads them, and no inherited capture options that could
    hide a daemon that forgets to set its own RTSP transport."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
    env.pop("STATE_DIRECTORY", None)
    env.pop("NOTIFY_SOCKET", None)
    if extra:
        env.update(extra)
    return env


def run_cli(args: Sequence[str], *, cwd: Path, timeout_s: float = 60.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streamd ARGS`` to completion (e.g. ``check -c FILE``)."""
    return subprocess.run([sys.executable, "-m", "streamd", *args], cwd=cwd,
                          env=streamd_env(env), capture_output=True, text=True,
                          timeout=timeout_s, check=False)


class Daemon:
    """``python -m streamd run -c <config> [extra...]`` as a child process.

    stdout/stderr go to files in ``workdir`` (not pipes: a chatty daemon must never block on
    a full pipe while the test waits on MQTT). ``start()`` returns ``self``; ``terminate()``
    sends SIGTERM, as systemd does, and returns the exit status.
    """

    def __init__(self, config: Mapping[str, Any] | str, workdir: Path, *,
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 name: str = "streamd") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config_path = workdir / f"{name}.yaml"
        if isinstance(config, str):
            self.config_path.write_text(config)
        else:
            self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.args = list(args)
        self.env = dict(env or {})
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self.started_at: float | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "streamd", "run", "-c", str(self.config_path), *self.args]

    def start(self) -> Daemon:
        if self.proc is not None:
            raise RuntimeError("daemon already started")
        out = open(self.stdout_path, "wb")  # noqa: SIM115  (closed in _reap)
        err = open(self.stderr_path, "wb")  # noqa: SIM115
        self._files = [out, err]
        self.started_at = time.time()
        self.proc = subprocess.Popen(self.command, cwd=self.workdir, env=streamd_env(self.env),
                                     stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _reap(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def wait(self, timeout_s: float) -> int:
        """Wait for the daemon to exit by itself; AssertionError with its logs if it does not
        (the daemon is then killed so the test run is not left with a stray process)."""
        assert self.proc is not None, "daemon not started"
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"streamd did not exit within {timeout_s} s\n{self.logs()}"
                                 ) from None
        self._reap()
        return code

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None, "daemon not started"
        self.proc.send_signal(sig)

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for the drain; AssertionError (after SIGKILL) if it hangs."""
        assert self.proc is not None, "daemon not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"streamd ignored SIGTERM for {timeout_s} s\n{self.logs()}"
                                 ) from None
        self._reap()
        return code

    def kill(self) -> None:
        """SIGKILL (a crash or OOM kill); idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def output(self) -> str:
        """stdout and stderr together: where a log line lands is the daemon's choice."""
        return self.stdout + self.stderr

    def logs(self, tail_chars: int = 6000) -> str:
        """A labelled tail of both streams, for assertion messages."""
        return (f"--- {self.name} exit={self.returncode} cmd={' '.join(self.command)}\n"
                f"--- stdout (tail)\n{self.stdout[-tail_chars:]}\n"
                f"--- stderr (tail)\n{self.stderr[-tail_chars:]}")

    def wait_output(self, text: str, timeout_s: float) -> None:
        """Wait until ``text`` appears in the daemon's output (or fail with the logs)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in streamd output after {timeout_s} s\n"
                                     f"{self.logs()}")
            if not self.running:
                raise AssertionError(f"streamd exited before printing {text!r}\n{self.logs()}")
            time.sleep(0.1)
