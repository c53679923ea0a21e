"""Small helpers every worker thread uses: a shared stop deadline and OS-visible names.

Shutdown must fit systemd's stop timeout however many cameras there are and whatever hangs
(a detector call that never returns, an RTSP read stuck in the network stack). So the app
signals every worker first, then joins each against one `Deadline`: waits do not add up,
and a thread still stuck when it expires is left behind (all workers are daemon threads).

`name_os_thread` gives the kernel a name for the current thread (`top -H`, `ps -L`,
`/proc/<pid>/task/*/comm`), so an operator can see which camera's capture or which stage is
burning CPU or stuck.

`lower_priority` puts a per-camera thread (capture, analysis, publish) a few nice levels
below the shared ones (the detector, the MQTT pump and network thread), which every camera
waits on. On a box short of CPU the scheduler otherwise shares it per thread, so 16 cameras'
48 threads outvote the detector and the MQTT client. Measured with `benchmarks/fleet.py`, two
30 s runs each: 16 cameras capture→MQTT p99 1.3-1.7 s with the camera threads 5 levels down
against 2.7-3.4 s without; 8 cameras (CPU to spare) the same within noise. The shedding
governor takes the frames that do not fit from every camera evenly, counted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.001
"""How long a Python thread may hold the GIL while another waits (CPython's default is
5 ms). The daemon runs three threads per camera beside the shared ones; a thread coming
back from a C call (a socket read, an SQLite commit, an inference) queues for the GIL behind
the busy ones, 5 ms each time, and the MQTT network thread, which does that once per
acknowledgement, fell behind: its window of unacknowledged messages filled and messages
waited in the outbox. 16-camera fleet (`benchmarks/fleet.py`): capture→MQTT p99 0.50 and
0.86 s at 1 ms against 1.3 and 1.7 s at 5 ms; 8 cameras unchanged within noise."""

CAMERA_THREAD_NICE = 5
"""Nice levels a per-camera thread runs below the process (CFS weight 1024 → 335: a shared
thread gets three times a camera thread's share of a busy core)."""

_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        _libc = None


def name_os_thread(name: str | None = None) -> None:
    """Name the calling thread for the kernel (15 bytes at most; Linux only, else a no-op)."""
    if _libc is not None:
        raw = (name or threading.current_thread().name).encode()[:15]
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def lower_priority(steps: int = CAMERA_THREAD_NICE) -> None:
    """Run the calling thread `steps` nice levels below where it is (Linux: nice is per
    thread; lowering needs no privilege). Elsewhere, or where a syscall filter refuses it,
    the thread keeps its priority (logged at debug level)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid)
                                                 + steps))
    except OSError as exc:
        log.debug("thread %s keeps its priority: %s", threading.current_thread().name, exc)


class Deadline:
    """A point in `time.monotonic()` time that several waits share."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


def join(thread: threading.Thread, deadline: Deadline) -> bool:
    """Join `thread` until `deadline`; True if it ended (or never started)."""
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(deadline.remaining())
    return not thread.is_alive()
