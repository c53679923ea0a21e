"""Freeze one thread of a child process, as a debugger would, to make it hang for real.

A detector call that never returns is what the daemon's shutdown must survive, but no real
model hangs on demand. Stopping the daemon's `detector` thread with ptrace does exactly
that: the thread stays where it is (waiting for work, or inside a call), holds nothing the
rest of the process needs, and every frame submitted afterwards waits forever. Only that
thread stops; the kernel keeps delivering the process's signals to the others.

Linux only; the daemon is the test's own child, which ptrace allows without privileges.
A traced thread that dies must be reaped by its tracer (``waitpid(tid, __WALL)``), or the
process's exit is never reported to its parent: ``FrozenThread.reap`` does that.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from pathlib import Path

_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_WALL = 0x40000000
_FUTEX = {"x86_64": 202, "aarch64": 98}
"""futex(2) syscall numbers: a thread blocked in one holds no lock of the interpreter's."""

_libc = ctypes.CDLL(None, use_errno=True)


def _ptrace(request: int, tid: int) -> None:
    if _libc.ptrace(request, tid, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def thread_ids(pid: int, name: str) -> list[int]:
    """Ids of the threads of `pid` whose kernel name (`comm`) is `name`."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                out.append(int(task.name))
        except OSError:
            continue
    return out


class FrozenThread:
    """`freeze()` stops the thread named `name` of `pid` while it waits in a futex (so it
    holds no interpreter lock); `reap()` after the process exits; `release()` if it is
    still running (resumes the thread)."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.tid: int | None = None

    def freeze(self, timeout_s: float = 10.0) -> FrozenThread:
        futex = _FUTEX[platform.machine()]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            tids = thread_ids(self.pid, self.name)
            if len(tids) != 1:
                time.sleep(0.1)
                continue
            tid = tids[0]
            _ptrace(_PTRACE_SEIZE, tid)
            _ptrace(_PTRACE_INTERRUPT, tid)
            os.waitpid(tid, _WALL)  # the interrupt stop
            syscall = Path(f"/proc/{self.pid}/task/{tid}/syscall").read_text().split()
            if syscall and syscall[0] == str(futex):
                self.tid = tid
                return self
            _ptrace(_PTRACE_DETACH, tid)  # it was running Python code: try again
            time.sleep(0.05)
        raise TimeoutError(f"could not freeze thread {self.name!r} of {self.pid} while idle")

    def reap(self, block: bool = True) -> bool:
        """Collect the frozen thread once the process has exited (it died with it); True
        when it is collected (or there is nothing to collect)."""
        if self.tid is None:
            return True
        try:
            tid, _ = os.waitpid(self.tid, _WALL | (0 if block else os.WNOHANG))
        except ChildProcessError:
            tid = self.tid
        if tid == self.tid:
            self.tid = None
        return self.tid is None

    def release(self) -> None:
        """Let the thread run again (cleanup when the process is still alive)."""
        if self.tid is None:
            return
        try:
            _ptrace(_PTRACE_DETACH, self.tid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        self.tid = None
