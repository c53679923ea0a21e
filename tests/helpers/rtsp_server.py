"""A real RTSP camera for tests, and the wrapper that starts, kills and restarts it.

Two halves live in this one file so the camera and its driver cannot drift apart:

* Run as a script with Debian's ``/usr/bin/python3`` (which has ``gi``; the project venv does
  not), it is a GStreamer RTSP server serving H.264 (x264enc, zero latency, one key frame per
  second, SPS/PPS repeated at every key frame so a client can join mid-stream) from a moving
  ``videotestsrc`` pattern or from a video file that loops forever. It prints ``READY <port>``
  once it listens and exits 0 on SIGTERM/SIGINT::

      /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --pattern ball --fps 10
      /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --file clip.avi --mount /a

  The file is decoded with GStreamer's ``decodebin``: MJPG AVI (what
  ``helpers.video.write_moving_shapes_video`` writes) works with the Debian plugins installed
  here; MPEG-4 part 2 (``vtest.avi``) needs ``gstreamer1.0-libav``. Transcode such a file to MJPG
  first (``helpers.video.transcode_to_mjpg``).

  Both of those encode live, one x264 encoder per mount. A benchmark that must measure the
  daemon, not the cameras, serves a clip encoded once instead (``--h264``: an MP4 with one
  H.264 track, its access units read into memory at start and sent at ``--fps`` in a loop, no
  decoding or encoding while serving). ``--encode OUT`` writes such a clip with the live
  encoder's settings, from a pattern or from raw BGR frames on stdin (``encode_h264`` feeds
  it any file OpenCV reads); only plugins-base/good/ugly are needed::

      /usr/bin/python3 tests/helpers/rtsp_server.py --encode clip.mp4 --pattern ball --frames 300
      /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --h264 clip.mp4 --fps 10

* Imported from the test venv, ``RtspServer`` spawns that script, waits until an RTSP
  ``DESCRIBE`` of every mount answers ``200`` (which makes the server build and preroll the
  encoding pipeline, so "started" means "a client can play it"), and kills/restarts it on the
  same port to exercise a daemon's reconnect logic.

Reading it from OpenCV (the daemon's capture path): ``cv2.VideoCapture(url, cv2.CAP_FFMPEG)``
with ``OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp"`` in the environment works. UDP also
works on loopback but TCP is what tests should use (no packet loss, no firewall questions).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

SYSTEM_PYTHON = os.environ.get("STREAMD_TEST_SYSTEM_PYTHON", "/usr/bin/python3")
"""Interpreter with PyGObject and GstRtspServer (Debian's python3-gi)."""

SCRIPT = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------
# Server side: runs under /usr/bin/python3 with gi. Nothing here may import from the venv.
# --------------------------------------------------------------------------------------------

def _encoder(fps: int) -> str:
    """H.264 tail shared by every source: a key frame each second bounds how long a
    (re)connecting client waits for a decodable picture; config-interval=-1 repeats SPS/PPS in
    band so a client joining a shared stream mid-way can decode without the SDP."""
    return (
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2000 "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=-1"
    )


def _pattern_launch(pattern: str, width: int, height: int, fps: int, overlay: bool) -> str:
    over = 'timeoverlay halignment=left valignment=top font-desc="Sans 14" ! ' if overlay else ""
    return (
        f"( videotestsrc pattern={pattern} is-live=true "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! {over}videoconvert ! video/x-raw,format=I420 ! {_encoder(fps)} )"
    )


def _h264_launch() -> str:
    # Access units as stored; the feeder sets the clip's caps (with its SPS/PPS), from which
    # the payloader repeats SPS/PPS before every key frame.
    return (
        "( appsrc name=src is-live=true do-timestamp=true format=time block=false "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def _encode_launch(out: str, source: str, fps: int) -> str:
    """An offline pipeline that writes what the live mounts would send: the same encoder
    settings (no B-frames, so decode order is display order and the clip can be looped by
    re-sending its access units), in MP4 (plugins-good; OpenCV plays it too)."""
    encoder = _encoder(fps).rsplit(" ! rtph264pay", 1)[0]
    return (f"{source} ! videoconvert ! video/x-raw,format=I420 ! {encoder} ! mp4mux "
            f'! filesink location="{out}"')


def encode(gst: Any, args: argparse.Namespace) -> int:
    """``--encode``: write the clip and exit; raw BGR frames come from stdin (``--stdin-bgr``),
    else ``--frames`` of the test pattern."""
    fps = args.fps
    if args.stdin_bgr:
        w, h = args.width, args.height
        source = (f"fdsrc fd=0 blocksize={w * h * 3} ! rawvideoparse width={w} height={h} "
                  f"format=bgr framerate={fps}/1")
    else:
        w, h = args.width or 320, args.height or 240
        over = ('! timeoverlay halignment=left valignment=top font-desc="Sans 14" '
                if not args.no_overlay else "")
        source = (f"videotestsrc pattern={args.pattern} num-buffers={args.frames} "
                  f"! video/x-raw,width={w},height={h},framerate={fps}/1 {over}")
    pipeline = gst.parse_launch(_encode_launch(args.encode, source, fps))
    pipeline.set_state(gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(
        gst.CLOCK_TIME_NONE, gst.MessageType.EOS | gst.MessageType.ERROR)
    pipeline.set_state(gst.State.NULL)
    if msg is None or msg.type == gst.MessageType.ERROR:
        err = msg.parse_error()[0].message if msg is not None else "no EOS"
        print(f"encoding failed: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


def _load_access_units(gst: Any, path: str) -> list[Any]:
    """Every access unit of an MP4's H.264 track, as GStreamer samples, in stream order."""
    reader = gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! video/x-h264 '
        "! appsink name=sink sync=false")
    sink = reader.get_by_name("sink")
    reader.set_state(gst.State.PLAYING)
    units = []
    while (sample := sink.emit("pull-sample")) is not None:
        units.append(sample)
    reader.set_state(gst.State.NULL)
    return units


class _AccessUnitFeeder:
    """Sends a pre-encoded clip's access units into one media's appsrc at a fixed rate,
    from the first again after the last, so a mount serves a camera that costs no encoder.
    The clip starts with a key frame (x264's first frame is an IDR), so each loop is a clean
    restart for the client's decoder."""

    def __init__(self, gst: Any, appsrc: Any, units: list[Any], fps: int) -> None:
        self.gst = gst
        self.appsrc = appsrc
        self.units = units
        self.fps = fps
        self.stop = threading.Event()
        appsrc.set_property("caps", units[0].get_caps())
        self.thread = threading.Thread(target=self._run, name="h264-feeder", daemon=True)

    def start(self) -> _AccessUnitFeeder:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=2.0)

    def _run(self) -> None:
        gst = self.gst
        period = 1.0 / self.fps
        next_t = time.monotonic()
        i = 0
        while not self.stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            next_t = max(next_t + period, time.monotonic() - period)
            buf = self.units[i].get_buffer().copy()
            buf.pts = buf.dts = buf.duration = gst.CLOCK_TIME_NONE  # appsrc stamps it
            i = (i + 1) % len(self.units)
            if self.appsrc.emit("push-buffer", buf) != gst.FlowReturn.OK:
                return  # FLUSHING / EOS: the media is going away


def _file_launch(fps: int) -> str:
    # Caps are set on the appsrc by the feeder once the decoder reports the frame size.
    return (
        "( appsrc name=src is-live=true do-timestamp=true format=time block=false "
        f"! videoconvert ! video/x-raw,format=I420 ! {_encoder(fps)} )"
    )


class _FileFeeder:
    """Decodes a file in its own GStreamer pipeline and pushes its frames into one media's
    appsrc at a fixed rate, seeking back to the start at end of stream, so the file loops
    forever. gst-rtsp-server cannot loop a file-source pipeline by itself (EOS ends the media
    for every client), which is why decoding and serving are split this way."""

    def __init__(self, gst: Any, appsrc: Any, path: str, width: int, height: int,
                 fps: int) -> None:
        self.gst = gst
        self.appsrc = appsrc
        self.fps = fps
        self.stop = threading.Event()
        size = f",width={width},height={height}" if width and height else ""
        self.decoder = gst.parse_launch(
            f'filesrc location="{path}" ! decodebin ! videoconvert ! videoscale '
            f"! video/x-raw,format=I420{size},pixel-aspect-ratio=1/1 "
            "! appsink name=sink sync=false max-buffers=4 drop=false")
        self.sink = self.decoder.get_by_name("sink")
        self.thread = threading.Thread(target=self._run, name="file-feeder", daemon=True)

    def start(self) -> _FileFeeder:
        self.decoder.set_state(self.gst.State.PLAYING)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=2.0)
        self.decoder.set_state(self.gst.State.NULL)

    def _rewind(self) -> bool:
        flags = self.gst.SeekFlags.FLUSH | self.gst.SeekFlags.KEY_UNIT
        return bool(self.decoder.seek_simple(self.gst.Format.TIME, flags, 0))

    def _run(self) -> None:
        gst = self.gst
        period = 1.0 / self.fps
        next_t = time.monotonic()
        caps_set = False
        while not self.stop.is_set():
            sample = self.sink.emit("try-pull-sample", 500 * gst.MSECOND)
            if sample is None:
                if self.sink.get_property("eos") and not self._rewind():
                    print("file feeder: cannot seek to the start", file=sys.stderr, flush=True)
                    return
                continue
            if not caps_set:
                s = sample.get_caps().get_structure(0)
                w, h = s.get_value("width"), s.get_value("height")
                self.appsrc.set_property("caps", gst.Caps.from_string(
                    f"video/x-raw,format=I420,width={w},height={h},"
                    f"framerate={self.fps}/1,pixel-aspect-ratio=1/1"))
                caps_set = True
            delay = next_t - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            next_t = max(next_t + period, time.monotonic() - period)
            buf = sample.get_buffer().copy()
            buf.pts = buf.dts = buf.duration = gst.CLOCK_TIME_NONE  # appsrc stamps it
            ret = self.appsrc.emit("push-buffer", buf)
            if ret != gst.FlowReturn.OK:  # FLUSHING / EOS: the media is going away
                return


def serve(argv: list[str] | None = None) -> int:
    """Entry point of the script half; returns the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--mount", action="append",
                    help="mount point (repeatable, all serve the same source); default /cam")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--pattern", default="ball", help="videotestsrc pattern name")
    src.add_argument("--file", help="video file to loop forever (decodebin must decode it)")
    src.add_argument("--h264", help="pre-encoded H.264 MP4 (from --encode) to loop, no encoder")
    src.add_argument("--stdin-bgr", action="store_true",
                     help="with --encode: raw BGR frames of --width x --height on stdin")
    ap.add_argument("--encode", metavar="OUT", help="write an H.264 MP4 clip and exit (no server)")
    ap.add_argument("--frames", type=int, default=300, help="pattern frames for --encode")
    ap.add_argument("--width", type=int, default=0, help="0: 320 for a pattern, native for a file")
    ap.add_argument("--height", type=int, default=0)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--no-overlay", action="store_true", help="no running-time text")
    args = ap.parse_args(argv)
    mounts = args.mount or ["/cam"]
    if args.port is None and not args.encode:
        ap.error("--port is required unless --encode")
    if args.stdin_bgr and not (args.encode and args.width and args.height):
        ap.error("--stdin-bgr needs --encode, --width and --height")

    import gi  # Debian's python3-gi; imported here so the venv can import this module

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    if args.encode:
        return encode(Gst, args)
    for path in (args.file, args.h264):
        if path and not Path(path).is_file():
            print(f"no such file: {path}", file=sys.stderr)
            return 2
    units = _load_access_units(Gst, args.h264) if args.h264 else []
    if args.h264 and not units:
        print(f"no H.264 access units in {args.h264}", file=sys.stderr)
        return 2
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    feeders: list[_FileFeeder | _AccessUnitFeeder] = []

    def on_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        feeder: _FileFeeder | _AccessUnitFeeder = (
            _AccessUnitFeeder(Gst, appsrc, units, args.fps) if units else
            _FileFeeder(Gst, appsrc, args.file, args.width, args.height, args.fps))
        feeders.append(feeder)
        media.connect("unprepared", lambda _m: feeder.close())
        feeder.start()

    factories = []
    for mount in mounts:
        factory = GstRtspServer.RTSPMediaFactory()
        if args.file or units:
            factory.set_launch(_h264_launch() if units else _file_launch(args.fps))
            factory.connect("media-configure", on_configure)
        else:
            w, h = args.width or 320, args.height or 240
            factory.set_launch(_pattern_launch(args.pattern, w, h, args.fps,
                                               not args.no_overlay))
        factory.set_shared(True)
        server.get_mount_points().add_factory(mount, factory)
        factories.append((mount, factory))

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 1
    # Keep every mount's shared media prepared for the server's whole life, like a real camera
    # that always encodes. Otherwise the last client leaving unprepares the pipeline, and a
    # client that connects during that teardown gets "503 Service Unavailable" (gst-rtsp-server
    # "was not unprepared"): a reconnecting daemon would see spurious failures.
    held = []
    for mount, factory in factories:
        ok, url = GstRtsp.RTSPUrl.parse(f"rtsp://{args.host}:{args.port}{mount}")
        media = factory.construct(url) if ok == GstRtsp.RTSPResult.OK else None
        thread = server.get_thread_pool().get_thread(
            GstRtspServer.RTSPThreadType.MEDIA, GstRtspServer.RTSPContext())
        if media is None or thread is None or not media.prepare(thread):
            print(f"cannot prepare the pipeline for {mount}", file=sys.stderr, flush=True)
            return 1
        held.append(media)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    for media in held:
        media.unprepare()
    for feeder in feeders:
        feeder.close()
    return 0


# --------------------------------------------------------------------------------------------
# Test side: runs in the project venv; stdlib only.
# --------------------------------------------------------------------------------------------

def rtsp_request(host: str, port: int, method: str, url: str, timeout_s: float = 3.0,
                 cseq: int = 1) -> int:
    """Send one RTSP request on a fresh connection and return the response status code.

    Raises OSError when nothing listens or it does not answer in time."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        extra = "Accept: application/sdp\r\n" if method == "DESCRIBE" else ""
        sock.sendall(f"{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"RTSP server closed the connection on {method}")
            data += chunk
        status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith("RTSP/"):
            raise ConnectionError(f"not an RTSP answer: {status_line!r}")
        return int(parts[1])


def encode_h264(dst: str | os.PathLike[str], *, video: str | os.PathLike[str] | None = None,
                pattern: str = "ball", width: int = 0, height: int = 0, fps: int = 10,
                frames: int | None = None, overlay: bool = True, timeout_s: float = 600.0
                ) -> Path:
    """Encode a clip once, as the mounts would (``--h264`` serves it), and return its path.

    ``video``: any file OpenCV reads (decoded here in the venv, resized to ``width`` x
    ``height`` when both are given, at most ``frames`` frames) piped as raw BGR into the
    encoder; else ``frames`` (default 300) of the ``pattern`` test source."""
    dst = Path(dst)
    cmd = [SYSTEM_PYTHON, str(SCRIPT), "--encode", str(dst), "--fps", str(fps)]
    if video is None:
        cmd += ["--pattern", pattern, "--frames", str(frames or 300)]
        if width and height:
            cmd += ["--width", str(width), "--height", str(height)]
        if not overlay:
            cmd.append("--no-overlay")
        subprocess.run(cmd, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL)
        return dst
    import cv2  # the venv has OpenCV; imported here so the server half stays stdlib-only

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {video}")
    ok, image = cap.read()
    if not ok:
        raise RuntimeError(f"no frame in {video}")
    size = (width, height) if width and height else (image.shape[1], image.shape[0])
    cmd += ["--stdin-bgr", "--width", str(size[0]), "--height", str(size[1])]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    try:
        n = 0
        while ok and (frames is None or n < frames):
            if (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            proc.stdin.write(image.tobytes())
            n += 1
            ok, image = cap.read()
    finally:
        cap.release()
        proc.stdin.close()
    if proc.wait(timeout_s) != 0 or not dst.is_file():
        raise RuntimeError(f"encoding {video} to {dst} failed (exit {proc.returncode})")
    return dst


class RtspServer:
    """A GStreamer RTSP server process on a fixed loopback port.

    The port is fixed at construction so ``restart()`` brings the camera back at the same URL,
    which is what a daemon reconnecting to a camera sees in the field. ``start()`` returns
    ``self``; ``stop()`` is idempotent; the object is a context manager.
    """

    def __init__(self, port: int, *, mounts: tuple[str, ...] = ("/cam",),
                 pattern: str = "ball", file: str | os.PathLike[str] | None = None,
                 h264: str | os.PathLike[str] | None = None, width: int = 320,
                 height: int = 240, fps: int = 10, overlay: bool = True,
                 log_dir: str | os.PathLike[str] | None = None, host: str = "127.0.0.1"
                 ) -> None:
        self.host = host
        self.port = port
        self.mounts = mounts
        self.pattern = pattern
        self.file = Path(file) if file is not None else None
        self.h264 = Path(h264) if h264 is not None else None
        """A clip from ``encode_h264``: served as encoded, looping, no encoder per mount."""
        if self.file is not None and self.h264 is not None:
            raise ValueError("serve a file or a pre-encoded clip, not both")
        self.width = width
        self.height = height
        self.fps = fps
        self.overlay = overlay
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """URL of the first mount, e.g. ``rtsp://127.0.0.1:PORT/cam``."""
        return self.url_for(self.mounts[0])

    def url_for(self, mount: str) -> str:
        return f"rtsp://{self.host}:{self.port}{mount}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(SCRIPT), "--host", self.host, "--port", str(self.port),
               "--fps", str(self.fps)]
        for mount in self.mounts:
            cmd += ["--mount", mount]
        if self.h264 is not None:
            cmd += ["--h264", str(self.h264)]
        elif self.file is not None:
            cmd += ["--file", str(self.file)]
        else:
            cmd += ["--pattern", self.pattern]
        if self.width and self.height:
            cmd += ["--width", str(self.width), "--height", str(self.height)]
        if not self.overlay:
            cmd.append("--no-overlay")
        return cmd

    def start(self, timeout_s: float = 15.0) -> RtspServer:
        """Spawn the server and return once every mount answers DESCRIBE with 200."""
        if self.running:
            raise RuntimeError("RTSP server already running")
        self.starts += 1
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._stderr = open(self.log_dir / f"rtsp-{self.port}-{self.starts}.log", "w")  # noqa: SIM115
        from tests.helpers.procs import die_with_parent  # venv side only; see module doc

        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, text=True,
            stderr=self._stderr if self._stderr is not None else subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout_s
        try:
            self._wait_ready_line(deadline)
            for mount in self.mounts:
                self._wait_describe(self.url_for(mount), deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready_line(self, deadline: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        lines: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            lines.append(self.proc.stdout.readline())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        if not lines or not lines[0].startswith("READY"):
            code = self.proc.poll()
            raise RuntimeError(
                f"RTSP server on port {self.port} did not print READY "
                f"(exit status {code}, line {lines[:1]!r}); run it by hand: "
                f"{' '.join(self.command())}")

    def _wait_describe(self, url: str, deadline: float) -> None:
        last: BaseException | int | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"RTSP server exited with {self.proc and self.proc.poll()}")
            try:
                last = rtsp_request(self.host, self.port, "DESCRIBE", url)
                if last == 200:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"DESCRIBE {url} did not answer 200 in time (last: {last!r})")

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status (None if it was
        not running). Safe to call twice."""
        from tests.helpers.procs import terminate  # venv side only; see module doc

        proc, self.proc = self.proc, None
        code = terminate(proc, timeout_s)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def kill(self) -> None:
        """SIGKILL: the camera vanishes without closing its sessions (a power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def restart(self, down_s: float = 0.0, timeout_s: float = 15.0) -> RtspServer:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start(timeout_s)

    def __enter__(self) -> RtspServer:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(serve())
