"""systemd's notify protocol: READY=1, STATUS=…, WATCHDOG=1, STOPPING=1.

The protocol is one datagram per message to the unix socket named by $NOTIFY_SOCKET (a path,
or an abstract name written with a leading `@`). A dozen lines of our own instead of a
dependency: the maintained libraries either wrap libsystemd (a C build on every box) or
have not seen a release in years, and this protocol has not changed since 2010.
Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages; `close()` is idempotent."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failed = False
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_interval_s: float | None = None
        """How often to ping: half of systemd's WatchdogSec, or None when it is off."""
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines as one datagram; False (logged once) if it failed."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
                self._failed = True
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
