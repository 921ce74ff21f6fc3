"""Where frames come from: a webcam, a video file or a folder of images.

Every source yields :class:`Frame` objects whose ``image`` is ``(H, W, 3)``
uint8 **RGB** (converted from OpenCV's BGR here, at the edge).

- :class:`VideoFileSource` / :class:`ImageFolderSource` deliver every frame in
  order (offline keying, tests); with ``realtime=True`` they are paced at their
  frame rate and drop frames like a camera when the consumer is slower.
- :class:`CameraSource` opens a webcam by index or device path, reports what
  it actually negotiated, and reopens a camera that was unplugged or stopped
  delivering (``reconnecting`` is True meanwhile) for up to ``reconnect_timeout`` s.
- :class:`LatestFrameReader` reads any source on its own thread and keeps only
  the newest frame, so a slow consumer never sees a stale frame.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from greenscreen_cam.core import Frame, LatestSlot
from greenscreen_cam.errors import CameraLostError, SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class Source(Protocol):
    width: int
    height: int
    fps: float
    live: bool
    """True for cameras (and realtime files): frames arrive on their own clock."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end of a file/folder."""
        ...

    def close(self) -> None: ...


def _natural_key(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


class _Pacer:
    """Drops frames of an offline source to follow its own clock, like a live camera."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.start: float | None = None

    def due_index(self) -> int:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        return int((now - self.start) * self.fps)

    def wait_for(self, index: int) -> None:
        assert self.start is not None
        delay = self.start + index / self.fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


class VideoFileSource:
    """A video file decoded with OpenCV."""

    live = False

    def __init__(self, path: Path, *, realtime: bool = False) -> None:
        self.path = path
        if not path.exists():
            raise SourceError(f"video file not found: {path}")
        if path.is_dir():
            raise SourceError(f"{path} is a folder; pass it as an image folder source")
        self._cap = cv2.VideoCapture(str(path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"cannot read video {path}: not a video, unsupported codec, or empty")
        self.height, self.width = first.shape[:2]
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 30.0
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = count if count > 0 else None
        self._pending: np.ndarray | None = first
        self._next = 0
        self.realtime = realtime
        self.live = realtime
        self._pacer = _Pacer(self.fps) if realtime else None
        self.dropped = 0

    def _grab(self) -> np.ndarray | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        ok, image = self._cap.read()
        return image if ok else None

    def read(self) -> Frame | None:
        if self._pacer is not None:
            due = self._pacer.due_index()
            while self._next < due:  # the consumer was slow: skip what a camera would have dropped
                if self._pending is not None:
                    self._pending = None
                elif not self._cap.grab():
                    return None
                self._next += 1
                self.dropped += 1
            self._pacer.wait_for(self._next)
        image = self._grab()
        if image is None:
            return None
        frame = Frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self._next)
        self._next += 1
        return frame

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource:
    """A folder of JPEG/PNG images, read in natural sort order (``2.jpg`` before ``10.jpg``)."""

    live = False

    def __init__(self, folder: Path, *, fps: float = 30.0, realtime: bool = False) -> None:
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self.paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not self.paths:
            raise SourceError(f"image folder {folder} has no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images")
        first = self._load(self.paths[0])
        self.height, self.width = first.shape[:2]
        self.fps = fps
        self.frame_count: int | None = len(self.paths)
        self._next = 0
        self.live = realtime
        self._pacer = _Pacer(fps) if realtime else None
        self.dropped = 0

    def _load(self, path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {path}")
        if hasattr(self, "width") and image.shape[:2] != (self.height, self.width):
            raise SourceError(
                f"image {path.name} is {image.shape[1]}x{image.shape[0]}, the folder's first image is {self.width}x{self.height}"
            )
        return image

    def read(self) -> Frame | None:
        if self._pacer is not None:
            due = self._pacer.due_index()
            if due > self._next:
                self.dropped += due - self._next
                self._next = due
            if self._next < len(self.paths):
                self._pacer.wait_for(self._next)
        if self._next >= len(self.paths):
            return None
        image = self._load(self.paths[self._next])
        frame = Frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self._next)
        self._next += 1
        return frame

    def close(self) -> None:
        pass


def _camera_backend() -> int:
    if sys.platform.startswith("linux"):
        return cv2.CAP_V4L2
    if sys.platform == "darwin":
        return cv2.CAP_AVFOUNDATION
    if sys.platform.startswith("win"):
        return cv2.CAP_DSHOW
    return cv2.CAP_ANY


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings (e.g. "can't open camera by index") for the duration."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a camera source uses (frames are BGR uint8)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def set(self, prop: int, value: float) -> bool: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[int | str, int], Capture]
"""Opens a capture: ``factory(index_or_path, opencv_backend)``; ``cv2.VideoCapture`` by default."""


class CameraSource:
    """A webcam, by index (``0``) or device path (``/dev/video0``).

    A camera that is unplugged or stops delivering is reopened: :meth:`read`
    stays inside a retry loop (backoff 0.25 s doubling up to 2 s) while
    :attr:`reconnecting` is True, returns the first frame of the reopened camera,
    and raises :class:`~greenscreen_cam.errors.CameraLostError` once
    ``reconnect_timeout`` seconds have passed without a frame. :meth:`close` may be
    called from another thread: a blocked :meth:`read` then returns None promptly
    and the device is released by whichever thread holds it last.

    Args:
        device: Index or path.
        width, height, fps, fourcc: What to ask the camera for (None = its default).
        reconnect_timeout: Seconds to keep reopening a camera that stopped delivering.
        capture_factory: Opens the device (tests inject a capture that fails and recovers).

    Attributes:
        negotiated: Human-readable notes where the camera gave something other than asked.
        reconnects: How many times the camera came back after a loss.
    """

    live = True

    def __init__(
        self,
        device: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        reconnect_timeout: float = 60.0,
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        self.device = device
        self.requested = (width, height, fps, fourcc)
        self.reconnect_timeout = reconnect_timeout
        self._factory: CaptureFactory = capture_factory or cv2.VideoCapture  # type: ignore[assignment]
        self._lock = threading.Lock()  # held around every use of self._cap
        self._closed = threading.Event()
        self._reconnecting = threading.Event()
        self._cap: Capture | None = None
        self._suspended = threading.Event()
        self._wake = threading.Event()  # set by resume(), interrupt() and close(): a suspended read goes on
        self.reconnects = 0
        self.opens = 0
        """Times the device was opened (the first open included)."""
        if reconnect_timeout < 0:
            raise SourceError(f"--reconnect-timeout must be 0 or more seconds, got {reconnect_timeout:g}")
        if fourcc is not None and len(fourcc) != 4:
            raise SourceError(f"--fourcc must be 4 characters (e.g. MJPG, YUYV), got {fourcc!r}")
        if capture_factory is None and isinstance(device, str) and not Path(device).exists():
            raise SourceError(f"camera {device} does not exist; {_available_cameras_hint()}")
        cap = self._open()
        if cap is None:
            raise SourceError(f"cannot open camera {device}; {_available_cameras_hint()}")
        ok, image = cap.read()
        if not ok or image is None:
            cap.release()
            raise SourceError(
                f"camera {device} opened but delivers no frames: it may be busy (another app is using it) "
                "or not support the requested format"
            )
        self._cap = cap
        self.height, self.width = image.shape[:2]
        got_fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(got_fps) if got_fps and 0 < got_fps < 1000 else float(fps or 30.0)
        self.negotiated: list[str] = []
        asked = (width or self.width, height or self.height)
        if (width or height) and asked != (self.width, self.height):
            self.close()
            raise SourceError(
                f"camera {device} does not support {asked[0]}x{asked[1]}"
                f"{' in ' + fourcc.upper() if fourcc else ''} (it gives {self.width}x{self.height}); "
                "try --fourcc MJPG, or a size listed by greencam devices"
            )
        if fps and abs(self.fps - fps) > 0.5:
            self.negotiated.append(f"asked for {fps:g} fps, camera gives {self.fps:g} fps")
        if fourcc:
            code = int(cap.get(cv2.CAP_PROP_FOURCC))
            got = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)) if code else "?"
            if got.upper() != fourcc.upper():
                self.negotiated.append(f"asked for {fourcc.upper()}, camera gives {got}")
        self._pending: np.ndarray | None = image
        self._index = 0

    @property
    def reconnecting(self) -> bool:
        """True while :meth:`read` is trying to reopen a lost camera (safe to read from any thread)."""
        return self._reconnecting.is_set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def suspended(self) -> bool:
        """True between :meth:`suspend` and :meth:`resume`: the device is released (its light is off)."""
        return self._suspended.is_set()

    def suspend(self) -> None:
        """Release the device until :meth:`resume` (safe from any thread); a :meth:`read` meanwhile waits.

        A read in flight finishes with its frame and releases the device itself.
        """
        self._wake.clear()
        self._suspended.set()
        self._release_unless_reading()

    def resume(self) -> None:
        """Open the device again: the waiting :meth:`read` returns its first frame (safe from any thread)."""
        self._suspended.clear()
        self._wake.set()

    def _open(self) -> Capture | None:
        """A configured capture of :attr:`device`, or None if it cannot be opened now."""
        width, height, fps, fourcc = self.requested
        target = int(self.device) if isinstance(self.device, int) else self.device
        try:
            with _quiet_opencv():  # a failed open is reported by us in one line, not by OpenCV's warnings
                cap = self._factory(target, _camera_backend())
        except (cv2.error, OSError):
            return None
        if not cap.isOpened():
            cap.release()
            return None
        self.opens += 1
        if fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc.upper()))
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            # An unplugged camera must not block a read for long: read() then reconnects.
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, 2000)
        return cap

    def _grab(self) -> np.ndarray | None:
        """One BGR image from the current capture, or None (no capture, no frame, or closed)."""
        with self._lock:
            cap = self._cap
            if self._closed.is_set():
                self._release_locked()
                return None
            if cap is None:
                return None
            try:
                with _quiet_opencv():  # an unplugged camera makes V4L2 warn on every read
                    ok, image = cap.read()
            except cv2.error:
                ok, image = False, None
            if self._closed.is_set():  # close() ran meanwhile and left the release to us
                self._release_locked()
                return None
            if self._suspended.is_set():  # suspend() ran meanwhile: this frame goes out, the device is let go
                self._release_locked()
        return image if ok and image is not None else None

    def _release_locked(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self) -> Frame | None:
        """The next frame; None once closed. Blocks while reconnecting, at most ``reconnect_timeout`` s.

        Raises:
            CameraLostError: the camera did not come back within ``reconnect_timeout`` seconds.
        """
        if self._closed.is_set():
            return None
        image: np.ndarray | None = self._pending
        self._pending = None
        if image is None and self._suspended.is_set():
            self._wake.wait()  # until resume(), interrupt() or close()
            if self._closed.is_set():
                return None
            image = self._reconnect(resuming=True)
        elif image is None:
            image = self._grab()
        if image is None:
            image = self._reconnect()
        if image is None:
            return None
        if image.shape[:2] != (self.height, self.width):  # came back in another format
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        frame = Frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self._index)
        self._index += 1
        return frame

    def _reconnect(self, *, resuming: bool = False) -> np.ndarray | None:
        """Reopen a camera that stopped delivering (or was suspended); its first image, or None if closed meanwhile."""
        if self._closed.is_set():
            return None
        if not resuming:
            self._reconnecting.set()
        try:
            deadline = time.monotonic() + self.reconnect_timeout
            delay = 0.25
            while True:
                with self._lock:
                    self._release_locked()
                    if self._closed.is_set():
                        return None
                    self._cap = self._open()
                image = self._grab()
                if image is not None:
                    self.reconnects += int(not resuming)
                    return image
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self._closed.wait(min(delay, remaining)):
                    return None
                delay = min(2 * delay, 2.0)
        finally:
            self._reconnecting.clear()
        if resuming:
            raise CameraLostError(
                f"camera {self.device} could not be opened again when an app started watching (tried for "
                f"{self.reconnect_timeout:g} s); is another program using it? check the cable, or raise --reconnect-timeout"
            )
        raise CameraLostError(
            f"camera {self.device} stopped delivering frames and did not come back within "
            f"{self.reconnect_timeout:g} s; check the cable, or raise --reconnect-timeout"
        )

    def interrupt(self) -> None:
        """Make a :meth:`read` blocked in another thread return None soon (without releasing yet)."""
        self._closed.set()
        self._wake.set()

    def close(self) -> None:
        """Release the camera; safe from any thread, also while another thread is in :meth:`read`."""
        self._closed.set()
        self._wake.set()
        self._release_unless_reading()

    def _release_unless_reading(self) -> None:
        """Release the device now, unless a read is in flight: that read sees the flag and releases it itself."""
        if self._lock.acquire(timeout=0.05):
            try:
                self._release_locked()
            finally:
                self._lock.release()


def _available_cameras_hint() -> str:
    from greenscreen_cam.media.devices import list_devices

    cams = [d for d in list_devices() if not d.virtual]
    if not cams:
        return "no cameras were found on this machine (see: greencam devices)"
    return "cameras found: " + ", ".join(f"{d.index} ({d.path}, {d.name})" for d in cams)


def is_camera(spec: str) -> bool:
    """Whether ``--source`` names a camera (an index, a ``/dev/`` path or a character device)."""
    text = spec.strip()
    path = Path(text).expanduser()
    return bool(re.fullmatch(r"\d+", text)) or text.startswith("/dev/") or (path.exists() and path.is_char_device())


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    fourcc: str | None = None,
    realtime: bool = False,
    reconnect_timeout: float = 60.0,
) -> Source:
    """Open ``--source``: a camera index, a device path, a video file or an image folder.

    ``reconnect_timeout`` is how long a camera that stops delivering is reopened
    before :class:`~greenscreen_cam.errors.CameraLostError` (files ignore it).
    """
    text = spec.strip()
    path = Path(text).expanduser()
    if is_camera(text):
        return CameraSource(
            int(text) if text.isdigit() else text,
            width=width,
            height=height,
            fps=fps,
            fourcc=fourcc,
            reconnect_timeout=reconnect_timeout,
        )
    if path.is_dir():
        return ImageFolderSource(path, fps=fps or 30.0, realtime=realtime)
    if path.exists():
        return VideoFileSource(path, realtime=realtime)
    raise SourceError(f"--source {spec!r}: no such camera index, device, video file or image folder")


class PrefetchReader:
    """Decodes the next frames of an offline source on a background thread, keeping every frame in order.

    Overlaps decoding with tracking when a file is keyed offline; at most
    ``depth`` decoded frames wait in memory. Errors raised by the source are
    re-raised by :meth:`read`. :meth:`stop` joins the thread (so the source can
    be closed safely) and returns the frames it had read ahead, which a later
    reader takes as ``pending``: no frame is lost or repeated.
    """

    def __init__(self, source: Source, depth: int = 2, pending: list[Frame | None] | None = None) -> None:
        import queue

        self.source = source
        self._pending = list(pending or [])
        self._queue: queue.Queue[Frame | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._held: list[Frame | None] = []
        self._thread = threading.Thread(target=self._run, name="greencam-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Frame | BaseException | None) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        if self._pending and self._pending[-1] is None:
            return  # the source already ended
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if not self._put(frame):
                    self._held.append(frame)  # read but not queued: stop() hands it back
                    return
                if frame is None:
                    return
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def read(self) -> Frame | None:
        if self._done:
            return None
        if self._pending:
            first = self._pending.pop(0)
            self._done = first is None
            return first
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item is None:
            self._done = True
        return item

    def stop(self) -> list[Frame | None]:
        """End the thread and return the frames read ahead but not yet taken (None marks the end)."""
        import queue

        self._stop.set()
        self._thread.join()
        ahead: list[Frame | None] = list(self._pending)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, BaseException):
                break
            ahead.append(item)
        return ahead + self._held


class LatestFrameReader:
    """Reads a source on a background thread, keeping only the newest frame.

    :meth:`get` returns the newest frame not returned before, waiting for a new
    one if needed; frames that were overwritten before anyone took them are
    counted in :attr:`dropped`. Errors raised by the source (e.g. camera lost)
    are re-raised in the consumer. Use as a context manager, or call :meth:`close`.

    For a live loop that must keep sending while no frame comes,
    :attr:`last_frame_time` says when the newest frame arrived and
    :attr:`reconnecting` whether the source is reopening a lost camera.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._slot: LatestSlot[Frame] = LatestSlot()  # closed when the source ends or fails
        self._latest: Frame | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._stop = threading.Event()
        self._last_time: float | None = None
        self._thread = threading.Thread(target=self._run, name="greencam-capture", daemon=True)
        self._thread.start()

    @property
    def produced(self) -> int:
        """Frames read from the source."""
        return self._slot.put_count

    @property
    def dropped(self) -> int:
        """Frames overwritten before anyone took them."""
        return self._slot.dropped

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    self._ended = True
                    self._slot.close()
                    return
                self._latest = frame
                self._last_time = time.perf_counter()
                self._slot.put(frame)
        except BaseException as e:  # handed to the consumer
            self._error = e
            self._slot.close()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest unseen frame; None when the source ended; TimeoutError after ``timeout`` s."""
        frame = self._slot.take(timeout)
        if frame is not None:
            return frame
        if self._error is not None:
            raise self._error
        if self._slot.closed:
            return None
        raise TimeoutError("no frame arrived in time")

    @property
    def last_frame_time(self) -> float | None:
        """``time.perf_counter()`` when the newest frame arrived from the source; None before the first."""
        return self._last_time

    @property
    def finished(self) -> bool:
        """True once the source has ended (a file's last frame was read); errors are raised by :meth:`get`."""
        return self._ended

    @property
    def last_frame(self) -> Frame | None:
        """The newest frame read so far (taken or not), e.g. to repeat while the camera is away."""
        return self._latest

    @property
    def reconnecting(self) -> bool:
        """Whether the source is reopening a lost camera (``CameraSource.reconnecting``)."""
        return bool(getattr(self.source, "reconnecting", False))

    def close(self) -> None:
        """Stop the capture thread, then release the source.

        A source with an ``interrupt()`` method (a camera) is told to abandon a read
        that is waiting for the device, so this returns promptly; other sources
        are closed only once no read is in flight.
        """
        self._stop.set()
        interrupt = getattr(self.source, "interrupt", None)
        if callable(interrupt):
            interrupt()
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive() or callable(interrupt):
            self.source.close()

    def __enter__(self) -> LatestFrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.get()) is not None:
            yield frame
