"""Small helpers every worker thread uses: a shared stop deadline and OS-visible names.

Shutdown must fit systemd's stop timeout however many cameras there are and whatever hangs
(a detector call that never returns, an RTSP read stuck in the network stack). So the app
signals every worker first, then joins each against one `Deadline`: waits do not add up,
and a thread still stuck when it expires is left behind (all workers are daemon threads).

`name_os_thread` gives the kernel a name for the current thread (`top -H`, `ps -L`,
`/proc/<pid>/task/*/comm`), so an operator can see which camera's capture or which stage is
burning CPU or stuck.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import time

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
