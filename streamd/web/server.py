"""The live view's HTTP server: aiohttp on its own thread and event loop.

aiohttp because one event loop serves any number of long-lived MJPEG streams and long-polls
without a thread each, a stream's `write()` waits for that client's socket alone (a viewer
that stops reading stalls only its own coroutine, and `WRITE_TIMEOUT_S` later it is
dropped), it parses HTTP Basic auth, and its runner shuts down within a set timeout, which
keeps the daemon inside systemd's stop deadline. It is maintained by the aio-libs
organisation with regular releases, and needs no ASGI server beside it.

Routes (every one but /healthz behind Basic auth when `web.username` is set):

- `/` all cameras; `/cameras/<name>` one camera with overlay toggles (HTML, see pages.py)
- `/cameras/<name>/stream.mjpeg` and `/cameras/<name>/latest.jpg` (`?overlays=rois,mask,…`;
  `latest.jpg?after=SEQ` waits for a picture newer than SEQ: the pages' long-poll)
- `/api/stats`: per camera the last stats and status payloads exactly as published on MQTT
- `/healthz`: 200 when every camera streams and the broker is connected, else 503 + reasons
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType

from aiohttp import BasicAuth, hdrs, web
from pydantic import SecretStr

from streamd.web import WebError, WebSettings
from streamd.web.pages import Board, Pages
from streamd.web.view import LEASE_S, LiveView, Overlays, Picture, Polygon, parse_overlays

log = logging.getLogger(__name__)

CamerasOf = Callable[[], Mapping[str, Sequence[Polygon]]]
"""The running cameras (name -> ignore polygons), read per request: reloads change them."""
BOUNDARY = "streamdframe"
WRITE_TIMEOUT_S = 10.0
"""A stream whose client has not taken a picture for this long is closed."""
LATEST_WAIT_S = 2.0
SHUTDOWN_S = 1.0
"""Open streams get this long to finish when the server stops; then they are cancelled."""
NO_STORE = {hdrs.CACHE_CONTROL: "no-store", "X-Content-Type-Options": "nosniff"}


class WebServer:
    """Serves the live view; owns the `LiveView` (`.view`, what the pipelines get) and the
    `Board` (`.on_message`, what the publisher's listener list gets). `start()` returns
    self once listening (or raises WebError); `stop()` is idempotent."""

    def __init__(self, settings: WebSettings, password: SecretStr | None, cameras: CamerasOf,
                 broker_connected: Callable[[], bool]) -> None:
        self.settings = settings
        self._password = password
        self._cameras = cameras
        self._broker_connected = broker_connected
        self.view = LiveView(settings.fps, lambda c: cameras().get(c, ()),
                             quality=settings.quality, max_width=settings.max_width)
        self.board = Board()
        self.on_message = self.board.on_message
        self._pages = Pages(settings.fps)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._closing = False
        self._events: dict[str, asyncio.Event] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{host}:{self.settings.port}/"

    def start(self) -> WebServer:
        if self.settings.exposed_anonymously:
            log.warning("web: serving the cameras on %s without auth (allow_anonymous: true)",
                        self.settings.host)
        self.view.start()
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None or not self._ready.is_set():
            self.stop()
            raise WebError(str(self._error or "the web server did not start within 10 s"))
        log.info("web: live view on %s%s", self.url,
                 " (HTTP Basic auth)" if self.settings.username else "")
        return self

    def stop(self, timeout_s: float = SHUTDOWN_S + 2.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.view.stop()

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- the server thread ----------------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:
            if self._ready.is_set():  # it ran, then broke: the daemon goes on without it
                log.exception("web: the live view stopped")
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, self.settings.host, self.settings.port).start()
            except OSError as exc:
                raise WebError(f"web: cannot listen on {self.settings.host}:"
                               f"{self.settings.port}: {exc.strerror or exc}") from None
            loop = asyncio.get_running_loop()

            def on_picture(camera: str) -> None:  # the render thread: hand over to the loop
                loop.call_soon_threadsafe(self._wake, camera)

            self.view.on_picture = on_picture
            self._ready.set()
            await self._stopping.wait()
        finally:
            self._closing = True
            self.view.on_picture = None
            for event in self._events.values():
                event.set()
            await runner.cleanup()

    def _wake(self, camera: str) -> None:
        event = self._events.pop(camera, None)
        if event is not None:
            event.set()

    def _app(self) -> web.Application:
        middlewares = [self._auth] if self.settings.username is not None else []
        app = web.Application(middlewares=middlewares)
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/healthz", self._healthz, name="healthz")
        r.add_get("/api/stats", self._stats)
        r.add_get("/static/{file}", self._static)
        r.add_get("/cameras/{name}", self._camera_page)
        r.add_get("/cameras/{name}/latest.jpg", self._latest)
        r.add_get("/cameras/{name}/stream.mjpeg", self._stream)
        return app

    # --- auth -----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if (resource is None or resource.name != "healthz") \
                and not self._authorised(request.headers.get(hdrs.AUTHORIZATION)):
            return web.Response(status=401, text="authentication required\n", headers={
                hdrs.WWW_AUTHENTICATE: 'Basic realm="streamd", charset="UTF-8"', **NO_STORE})
        return await handler(request)

    def _authorised(self, header: str | None) -> bool:
        """Both fields compared in constant time, always both (no early exit on the user)."""
        if not header or self._password is None or self.settings.username is None:
            return False
        try:
            given = BasicAuth.decode(header)
        except ValueError:
            return False
        user_ok = hmac.compare_digest(given.login.encode(), self.settings.username.encode())
        pass_ok = hmac.compare_digest(given.password.encode(),
                                      self._password.get_secret_value().encode())
        return user_ok & pass_ok

    # --- pages and data -------------------------------------------------------------------

    def _camera(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self._cameras():
            raise web.HTTPNotFound(text="no such camera\n")
        return name

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=self._pages.index(list(self._cameras()), self.board),
                            content_type="text/html", headers=NO_STORE)

    async def _camera_page(self, request: web.Request) -> web.Response:
        return web.Response(text=self._pages.camera(self._camera(request), self.board),
                            content_type="text/html", headers=NO_STORE)

    async def _static(self, request: web.Request) -> web.Response:
        found = self._pages.static(request.match_info["file"])
        if found is None:
            raise web.HTTPNotFound(text="not found\n")
        body, content_type = found
        return web.Response(text=body, content_type=content_type)

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.board.snapshot(list(self._cameras()),
                                                     self._broker_connected()),
                                 headers=NO_STORE)

    async def _healthz(self, request: web.Request) -> web.Response:
        reasons = self.board.problems(list(self._cameras()))
        if not self._broker_connected():
            reasons.append("broker: not connected")
        return web.json_response({"ok": not reasons, "reasons": reasons},
                                 status=503 if reasons else 200, headers=NO_STORE)

    # --- pictures -------------------------------------------------------------------------

    async def _next_picture(self, camera: str, overlays: Overlays, after: int,
                            timeout_s: float) -> Picture | None:
        """The newest picture with `seq > after`, waiting up to `timeout_s` for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._closing:
            pic = self.view.picture(camera, overlays)
            if pic is not None and pic.seq > after:
                return pic
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            event = self._events.setdefault(camera, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return None

    async def _draw_last(self, camera: str, overlays: Overlays) -> Picture | None:
        """The camera's last frame drawn now, off the loop (a camera sending nothing new)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.view.draw_last, camera, overlays)

    async def _latest(self, request: web.Request) -> web.Response:
        camera = self._camera(request)
        overlays = parse_overlays(request.query.get("overlays"))
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="after must be an integer\n") from None
        self.view.touch(camera, overlays)
        if not after:  # a one-off request: anything drawn within a lease is fresh enough
            pic = self.view.picture(camera, overlays)
            if pic is not None and time.monotonic() - pic.made_mono > LEASE_S:
                after = pic.seq
        pic = await self._next_picture(camera, overlays, after, LATEST_WAIT_S)
        if pic is None:
            pic = await self._draw_last(camera, overlays)
        if pic is None:
            raise web.HTTPServiceUnavailable(text="no picture yet\n", headers=NO_STORE)
        return web.Response(body=pic.jpeg, content_type="image/jpeg", headers={
            "X-Streamd-Seq": str(pic.seq), "X-Streamd-Frame-Id": str(pic.frame_id),
            **NO_STORE})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        camera = self._camera(request)
        overlays = parse_overlays(request.query.get("overlays"))
        resp = web.StreamResponse(headers={
            hdrs.CONTENT_TYPE: f"multipart/x-mixed-replace; boundary={BOUNDARY}", **NO_STORE})
        await resp.prepare(request)
        after = 0
        with self.view.watch(camera, overlays):
            while not self._closing:
                pic = await self._next_picture(camera, overlays, after, LATEST_WAIT_S)
                if pic is None and not after:  # nothing new comes: show the last frame
                    pic = await self._draw_last(camera, overlays)
                if pic is None:
                    continue
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(pic.jpeg)}\r\n"
                        f"X-Streamd-Frame-Id: {pic.frame_id}\r\n\r\n").encode() + pic.jpeg
                try:
                    await asyncio.wait_for(resp.write(part + b"\r\n"), WRITE_TIMEOUT_S)
                except (asyncio.TimeoutError, ConnectionError):
                    break
                after = pic.seq
        return resp

