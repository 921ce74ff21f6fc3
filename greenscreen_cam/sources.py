"""Where frames come from: a webcam, a video file or a folder of images.

Every source yields :class:`Frame` objects whose ``image`` is ``(H, W, 3)``
uint8 **RGB** (converted from OpenCV's BGR here, at the edge).

- :class:`VideoFileSource` / :class:`ImageFolderSource` deliver every frame in
  order (offline keying, tests); with ``realtime=True`` they are paced at their
  frame rate and drop frames like a camera when the consumer is slower.
- :class:`CameraSource` opens a webcam by index or device path and reports what
  it actually negotiated.
- :class:`LatestFrameReader` reads any source on its own thread and keeps only
  the newest frame, so a slow consumer never sees a stale frame.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from greenscreen_cam.errors import CameraLostError, SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class Frame:
    """One captured frame.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        index: Position in the source (counts dropped frames too).
        timestamp: ``time.perf_counter()`` when it was captured.
    """

    image: np.ndarray
    index: int
    timestamp: float = field(default_factory=time.perf_counter)


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


class CameraSource:
    """A webcam, by index (``0``) or device path (``/dev/video0``).

    Args:
        device: Index or path.
        width, height, fps, fourcc: What to ask the camera for (None = its default).
        reopen_timeout: How long to keep retrying a camera that stopped delivering.

    Attributes:
        negotiated: Human-readable notes where the camera gave something other than asked.
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
        reopen_timeout: float = 3.0,
    ) -> None:
        self.device = device
        self.requested = (width, height, fps, fourcc)
        self.reopen_timeout = reopen_timeout
        if fourcc is not None and len(fourcc) != 4:
            raise SourceError(f"--fourcc must be 4 characters (e.g. MJPG, YUYV), got {fourcc!r}")
        if isinstance(device, str) and not Path(device).exists():
            raise SourceError(f"camera {device} does not exist; {_available_cameras_hint()}")
        self._cap = self._open()
        ok, image = self._cap.read()
        if not ok or image is None:
            self._cap.release()
            raise SourceError(
                f"camera {device} opened but delivers no frames: it may be busy (another app is using it) "
                "or not support the requested format"
            )
        self.height, self.width = image.shape[:2]
        got_fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(got_fps) if got_fps and 0 < got_fps < 1000 else float(fps or 30.0)
        self.negotiated: list[str] = []
        asked = (width or self.width, height or self.height)
        if (width or height) and asked != (self.width, self.height):
            self._cap.release()
            raise SourceError(
                f"camera {device} does not support {asked[0]}x{asked[1]}"
                f"{' in ' + fourcc.upper() if fourcc else ''} (it gives {self.width}x{self.height}); "
                "try --fourcc MJPG, or a size listed by greencam devices"
            )
        if fps and abs(self.fps - fps) > 0.5:
            self.negotiated.append(f"asked for {fps:g} fps, camera gives {self.fps:g} fps")
        if fourcc:
            code = int(self._cap.get(cv2.CAP_PROP_FOURCC))
            got = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)) if code else "?"
            if got.upper() != fourcc.upper():
                self.negotiated.append(f"asked for {fourcc.upper()}, camera gives {got}")
        self._pending: np.ndarray | None = image
        self._index = 0

    def _open(self) -> cv2.VideoCapture:
        width, height, fps, fourcc = self.requested
        target = int(self.device) if isinstance(self.device, int) else self.device
        cap = cv2.VideoCapture(target, _camera_backend())
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open camera {self.device}; {_available_cameras_hint()}")
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
            # An unplugged camera must not block a read for long: it is retried by _recover().
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, 2000)
        return cap

    def read(self) -> Frame | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                image = self._recover()
        frame = Frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self._index)
        self._index += 1
        return frame

    def _recover(self) -> np.ndarray:
        """Retry a camera that stopped delivering (unplugged, driver hiccup) for ``reopen_timeout`` s."""
        deadline = time.monotonic() + self.reopen_timeout
        while time.monotonic() < deadline:
            self._cap.release()
            time.sleep(0.25)
            try:
                self._cap = self._open()
            except SourceError:
                continue
            ok, image = self._cap.read()
            if ok and image is not None:
                return image
        raise CameraLostError(
            f"camera {self.device} stopped delivering frames and did not come back within {self.reopen_timeout:g} s"
        )

    def close(self) -> None:
        self._cap.release()


def _available_cameras_hint() -> str:
    from greenscreen_cam.devices import list_devices

    cams = [d for d in list_devices() if not d.virtual]
    if not cams:
        return "no cameras were found on this machine (see: greencam devices)"
    return "cameras found: " + ", ".join(f"{d.index} ({d.path}, {d.name})" for d in cams)


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    fourcc: str | None = None,
    realtime: bool = False,
) -> Source:
    """Open ``--source``: a camera index, a device path, a video file or an image folder."""
    text = spec.strip()
    if re.fullmatch(r"\d+", text):
        return CameraSource(int(text), width=width, height=height, fps=fps, fourcc=fourcc)
    path = Path(text).expanduser()
    if text.startswith("/dev/") or (path.exists() and path.is_char_device()):
        return CameraSource(text, width=width, height=height, fps=fps, fourcc=fourcc)
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
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._fresh = False
        self._error: BaseException | None = None
        self._ended = False
        self._stop = threading.Event()
        self.produced = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="greencam-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                with self._cond:
                    if frame is None:
                        self._ended = True
                        self._cond.notify_all()
                        return
                    if self._fresh:
                        self.dropped += 1
                    self._latest = frame
                    self._fresh = True
                    self.produced += 1
                    self._cond.notify_all()
        except BaseException as e:  # handed to the consumer
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest unseen frame; None when the source ended; TimeoutError after ``timeout`` s."""
        with self._cond:
            ready = self._cond.wait_for(lambda: self._fresh or self._error is not None or self._ended, timeout)
            if self._fresh:
                self._fresh = False
                return self._latest
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            if not ready:
                raise TimeoutError("no frame arrived in time")
            return None

    def close(self) -> None:
        """Stop the capture thread, then release the source (never while a read is in flight)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self.source.close()

    def __enter__(self) -> LatestFrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.get()) is not None:
            yield frame
