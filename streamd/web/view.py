"""The pipeline's side of the live view: `LiveView` takes frames only while someone watches and
draws them on its own thread.

The analysis thread asks `wants(camera)` after each published frame: a dict look-up and a
clock read, True only while a viewer holds the camera and the `web.fps` budget allows a new
picture. `offer()` then stores references under a lock and wakes the render thread; nothing is
drawn or encoded on the analysis thread. The render thread draws the newest offer once per
overlay combination that some viewer asked for and JPEG-encodes it; an offer it had no time
for is replaced by the next (latest wins), so a slow viewer or a slow encode drops pictures,
never analysis frames.

Viewers hold a camera in one of two ways: an open MJPEG stream (`watch()`, a context manager)
or a lease renewed by each `latest.jpg` request (`touch()`), which expires `LEASE_S` after the
last one, so a closed browser tab stops the drawing within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from streamd.detections import Detections
from streamd.frames import Frame
from streamd.motion import Rois
from streamd.snapshot import draw, encode_jpeg

log = logging.getLogger(__name__)

OVERLAYS = ("rois", "mask", "zones", "objects", "descriptions")
"""What the camera page can toggle, in the order the query string lists them."""
DEFAULT_OVERLAYS = frozenset({"rois", "objects", "descriptions"})
LEASE_S = 3.0
"""A `latest.jpg` viewer counts as watching this long after its last request."""

Overlays = frozenset[str]
Polygon = Sequence[tuple[float, float]]
ZonesOf = Callable[[str], Sequence[Polygon]]
"""Camera name -> its ignore polygons (full-frame pixels), read when a picture is drawn."""


def parse_overlays(text: str | None) -> Overlays:
    """`rois,mask` -> frozenset; None -> the default set; unknown names are ignored (a URL
    from a newer page must not break an older daemon)."""
    if text is None:
        return DEFAULT_OVERLAYS
    return frozenset(t for t in text.split(",") if t in OVERLAYS)


@dataclass(frozen=True, eq=False)
class Offer:
    """What the pipeline handed over for one frame (references, nothing copied but the
    small descriptions dict, which the describer thread keeps writing to)."""

    frame: Frame
    rois: Rois
    dets: Detections
    descriptions: Mapping[int, str]
    motion_mask: npt.NDArray[np.uint8] | None


@dataclass(frozen=True, eq=False)
class Picture:
    """One encoded picture; `seq` grows by one per picture of its camera, so a client can
    ask for anything newer than what it has."""

    jpeg: bytes
    seq: int
    frame_id: int
    ts: float
    made_mono: float
    """`time.monotonic()` when it was drawn (a picture older than a lease is stale)."""


class LiveView:
    """FrameView for the pipelines (see module doc); `start()` returns self, `stop()` is
    idempotent. `on_picture(camera)` is called from the render thread after each new
    picture (the server uses it to wake its waiting streams)."""

    def __init__(self, fps: float, zones: ZonesOf, *, quality: int = 75,
                 max_width: int = 1280) -> None:
        self._period_s = 1.0 / fps
        self._zones = zones
        self._quality = quality
        self._max_width = max_width
        self.on_picture: Callable[[str], None] | None = None
        self._cond = threading.Condition()
        self._streams: dict[tuple[str, Overlays], int] = {}
        self._leases: dict[tuple[str, Overlays], float] = {}
        self._watched_until: dict[str, float] = {}
        """Per camera, until when (monotonic) some viewer holds it; inf while streams are
        open. What `wants` reads, so it needs no lock and no loop."""
        self._next_due: dict[str, float] = {}
        self._offers: dict[str, Offer] = {}
        self._dirty: set[str] = set()
        self._pictures: dict[tuple[str, Overlays], Picture] = {}
        self._seq: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="web-render", daemon=True)
        self.rendered = 0
        """Pictures drawn and encoded since start (what watching costs)."""

    # --- the pipeline's side (analysis threads) -------------------------------------------

    def wants(self, camera: str) -> bool:
        """O(1): someone watches `camera` and its picture budget allows a new one."""
        now = time.monotonic()
        return self._watched_until.get(camera, 0.0) > now >= self._next_due.get(camera, 0.0)

    def offer(self, camera: str, frame: Frame, rois: Rois, dets: Detections,
              descriptions: Mapping[int, str],
              motion_mask: npt.NDArray[np.uint8] | None) -> None:
        """Keep references to the newest analysed frame and wake the render thread."""
        offer = Offer(frame, rois, dets, dict(descriptions), motion_mask)
        now = time.monotonic()
        with self._cond:
            self._offers[camera] = offer
            # on the previous due time's cadence, so frames arriving a hair late do not halve
            # the rate; after a pause, from now
            due = self._next_due.get(camera, 0.0) + self._period_s
            self._next_due[camera] = due if due > now else now + self._period_s
            self._dirty.add(camera)
            self._cond.notify()

    # --- the viewers' side (the server's threads) -----------------------------------------

    @contextlib.contextmanager
    def watch(self, camera: str, overlays: Overlays) -> Iterator[None]:
        """Hold `camera` for as long as the block runs (an open MJPEG stream)."""
        key = (camera, overlays)
        with self._cond:
            self._streams[key] = self._streams.get(key, 0) + 1
            self._update(camera)
        try:
            yield
        finally:
            with self._cond:
                left = self._streams[key] - 1
                if left:
                    self._streams[key] = left
                else:
                    del self._streams[key]
                self._update(camera)

    def touch(self, camera: str, overlays: Overlays) -> None:
        """Hold `camera` for another `LEASE_S` (a `latest.jpg` request)."""
        with self._cond:
            self._leases[(camera, overlays)] = time.monotonic() + LEASE_S
            self._update(camera)

    def picture(self, camera: str, overlays: Overlays) -> Picture | None:
        """The newest picture drawn with exactly these overlays, if any."""
        return self._pictures.get((camera, overlays))

    def draw_last(self, camera: str, overlays: Overlays) -> Picture | None:
        """Draw the camera's last offer now (for a camera that sends no new frames, e.g. a
        file that ended); None if it never offered one. Runs on the caller's thread."""
        with self._cond:
            offer = self._offers.get(camera)
        if offer is None:
            return None
        return self._store(camera, overlays, offer)

    def _update(self, camera: str) -> None:
        """Recompute `_watched_until[camera]` (caller holds the lock)."""
        if any(c == camera for c, _ in self._streams):
            until = math.inf
        else:
            until = max((t for (c, _), t in self._leases.items() if c == camera), default=0.0)
        self._watched_until[camera] = until

    # --- the render thread ----------------------------------------------------------------

    def start(self) -> LiveView:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._dirty:
                    self._cond.wait(0.5)
                now = time.monotonic()
                for key in [k for k, t in self._leases.items() if t <= now]:
                    del self._leases[key]
                    self._update(key[0])
                work = [(cam, self._offers[cam], self._wanted(cam, now)) for cam in self._dirty]
                self._dirty.clear()
            for camera, offer, variants in work:
                for overlays in variants:
                    try:
                        self._store(camera, overlays, offer)
                    except Exception:  # one bad picture must not end the live view
                        log.exception("camera=%s drawing the live picture failed", camera)
                if variants and self.on_picture is not None:
                    self.on_picture(camera)

    def _wanted(self, camera: str, now: float) -> set[Overlays]:
        """Overlay combinations some viewer of `camera` holds (caller holds the lock)."""
        return ({o for (c, o) in self._streams if c == camera}
                | {o for (c, o), t in self._leases.items() if c == camera and t > now})

    def _store(self, camera: str, overlays: Overlays, offer: Offer) -> Picture:
        img = draw(offer.frame, offer.rois, offer.dets, offer.descriptions,
                   max_width=self._max_width, show_rois="rois" in overlays,
                   show_objects="objects" in overlays,
                   show_descriptions="descriptions" in overlays,
                   motion_mask=offer.motion_mask if "mask" in overlays else None,
                   zones=self._zones(camera) if "zones" in overlays else ())
        jpeg = encode_jpeg(img, self._quality)
        with self._cond:
            seq = self._seq[camera] = self._seq.get(camera, 0) + 1
            picture = Picture(jpeg, seq, offer.frame.frame_id, offer.frame.ts,
                              time.monotonic())
            self._pictures[(camera, overlays)] = picture
            self.rendered += 1
        return picture
