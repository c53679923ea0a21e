"""Keep credentials out of logs, status payloads and exception text.

Camera URLs routinely carry `user:pass@` (most IP cameras have no other way to authenticate
RTSP), and OpenCV/FFmpeg echo the URL back in their errors, so everything that may show a
URL or a source error to a human goes through `redact()`.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact(text: object) -> str:
    """Replace the user-info part of every URL in `text` with `***@`.

    >>> redact("rtsp://admin:secret@10.0.0.5:554/stream1")
    'rtsp://***@10.0.0.5:554/stream1'
    >>> redact(3)
    '3'
    """
    return _USERINFO.sub(r"\g<scheme>***@", str(text))
