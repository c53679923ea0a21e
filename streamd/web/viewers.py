"""Live-view clients for measuring: `streamd bench --viewers N` watches the daemon's MJPEG
stream with these while it runs, so the daemon's CPU seconds include what watching costs.

They run in the bench process (not the daemon's), each on its own thread, and reconnect until
stopped: the daemon under test starts after them and its web server comes up a moment later.
"""

from __future__ import annotations

import http.client
import threading
import time
from types import TracebackType

from streamd.web.server import BOUNDARY


class Viewers:
    """`count` clients reading `path` (an MJPEG stream) from 127.0.0.1:`port`; `start()`
    returns self, `stop()` is idempotent. `pictures` and `bytes` are what they received."""

    def __init__(self, port: int, path: str, count: int) -> None:
        self._port = port
        self._path = path
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.pictures = 0
        self.bytes = 0
        self._threads = [threading.Thread(target=self._watch, name=f"viewer-{i}", daemon=True)
                         for i in range(count)]

    def start(self) -> Viewers:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout_s)

    def __enter__(self) -> Viewers:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _watch(self) -> None:
        marker = f"--{BOUNDARY}".encode()
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=2)
            try:
                conn.request("GET", self._path)
                resp = conn.getresponse()
                tail = b""
                while not self._stop.is_set():
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    seen = tail + chunk  # a marker may straddle two chunks
                    with self._lock:
                        self.bytes += len(chunk)
                        self.pictures += seen.count(marker)
                    tail = seen[-(len(marker) - 1):]
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)  # not up yet, or gone: try again
            finally:
                conn.close()
