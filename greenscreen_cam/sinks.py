"""Where keyed frames go: the virtual camera, a video file, a preview window, a matte folder.

Every sink takes ``(H, W, 3)`` uint8 **RGB** frames through ``send`` and is
released by ``close`` (also as a context manager). :class:`MultiSink` fans one
frame out to several sinks and closes all of them even if one fails.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from greenscreen_cam.devices import LINUX_VCAM_FIX, LINUX_VCAM_PERSIST, virtual_camera_fix  # noqa: F401 (re-exported)
from greenscreen_cam.errors import SinkError, VirtualCameraError


class Sink(Protocol):
    def send(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


class _Closing:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        pass


class VirtualCameraSink(_Closing):
    """The virtual webcam, through ``pyvirtualcam.Camera``.

    Frames are sent as RGB: pyvirtualcam converts them to the device's native
    format (I420 on Linux, NV12 on Windows, UYVY on macOS) in native code, which
    is as cheap as converting them here (see docs/benchmarks.md).
    Sends are paced: a frame that comes sooner than ``1/fps`` after the previous
    one waits, so a fast offline source does not flood the device.

    Args:
        width, height, fps: The output format.
        device: ``/dev/video10`` (Linux) or ``OBS Virtual Camera``; None = first available.
        backend: A pyvirtualcam backend name (None = try the platform's backends).
        pace: Sleep to hold ``fps`` (off for benchmarks).
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        device: str | None = None,
        backend: str | None = None,
        pace: bool = True,
    ) -> None:
        import pyvirtualcam

        if backend is None and not pyvirtualcam.camera.BACKENDS:
            raise VirtualCameraError(f"pyvirtualcam has no virtual camera backend on this OS; {virtual_camera_fix()}")
        if backend is not None and backend not in pyvirtualcam.camera.BACKENDS:
            raise VirtualCameraError(f"unknown virtual camera backend {backend!r}")
        if device and sys.platform.startswith("linux") and device.startswith("/dev/") and not os.path.exists(device):
            raise VirtualCameraError(f"virtual camera {device} does not exist; {virtual_camera_fix()}")
        try:
            self.camera = pyvirtualcam.Camera(
                width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device, backend=backend
            )
        except Exception as e:  # pyvirtualcam raises RuntimeError listing each backend's failure
            reason = " / ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise VirtualCameraError(f"no usable virtual camera ({reason}); {virtual_camera_fix()}") from None
        self.fps = fps
        self.pace = pace
        self._next_due: float | None = None
        self.frames_sent = 0

    @property
    def device(self) -> str:
        return str(self.camera.device)

    def send(self, frame: np.ndarray) -> None:
        if self.pace:
            now = time.perf_counter()
            if self._next_due is not None and now < self._next_due:
                time.sleep(self._next_due - now)
                now = self._next_due
            # Never build up a backlog: if we are late, the next slot starts from now.
            self._next_due = max(now, self._next_due or now) + 1.0 / self.fps
        self.camera.send(frame)
        self.frames_sent += 1

    def close(self) -> None:
        camera = getattr(self, "camera", None)
        if camera is not None:
            camera.close()
            self.camera = None


class VideoFileSink(_Closing):
    """A video file written with OpenCV (``.mp4`` -> mp4v, ``.avi`` -> MJPG, ``.mkv`` -> XVID)."""

    CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        suffix = path.suffix.lower()
        if suffix not in self.CODECS:
            raise SinkError(f"output file {path}: unsupported extension; use one of {', '.join(self.CODECS)}")
        if not path.parent.exists():
            raise SinkError(f"output folder {path.parent} does not exist")
        self.path = path
        self.size = (width, height)
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.CODECS[suffix]), fps, (width, height))
        if not self._writer.isOpened():
            raise SinkError(
                f"cannot write video file {path} (codec {self.CODECS[suffix]} unavailable or no permission)"
            )
        self.frames_written = 0

    def send(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise SinkError(
                f"frame {frame.shape[1]}x{frame.shape[0]} does not match output {self.size[0]}x{self.size[1]}"
            )
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.release()
            self._writer = None


def has_display() -> bool:
    """Whether an on-screen window can be opened (always assumed on Windows/macOS)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class PreviewSink(_Closing):
    """An OpenCV window showing the keyed frames; :attr:`last_key` holds the last key pressed."""

    def __init__(self, title: str = "greencam preview") -> None:
        if not has_display():
            raise SinkError("--preview needs a display, and none was found (DISPLAY is not set); drop --preview")
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise SinkError(f"cannot open a preview window: {str(e).strip().splitlines()[-1]}") from None
        self.last_key: int = -1
        self.overlay: list[str] = []

    def send(self, frame: np.ndarray) -> None:
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        for i, line in enumerate(self.overlay):
            cv2.putText(bgr, line, (10, 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.imshow(self.title, bgr)
        self.last_key = cv2.waitKey(1) & 0xFF

    def select_box(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """Let the user drag a box on ``frame``; None if cancelled."""
        x, y, w, h = cv2.selectROI(self.title, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), showCrosshair=True)
        return (int(x), int(y), int(w), int(h)) if w > 0 and h > 0 else None

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


class MatteWriter(_Closing):
    """Writes each frame's alpha matte as an 8-bit PNG: ``DIR/000000.png``, ``000001.png``, ..."""

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot create matte folder {folder}: {e.strerror}") from None
        self.folder = folder
        self.count = 0

    def send(self, alpha: np.ndarray) -> None:
        path = self.folder / f"{self.count:06d}.png"
        if not cv2.imwrite(str(path), alpha):
            raise SinkError(f"cannot write matte {path}")
        self.count += 1

    def close(self) -> None:
        pass


class NullSink(_Closing):
    """Discards frames (benchmarks)."""

    def __init__(self) -> None:
        self.frames = 0

    def send(self, frame: np.ndarray) -> None:
        self.frames += 1

    def close(self) -> None:
        pass


class MultiSink(_Closing):
    """Sends each frame to every sink; :meth:`close` closes all of them, even if one raises."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def send(self, frame: np.ndarray) -> None:
        for sink in self.sinks:
            sink.send(frame)

    def close(self) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # keep closing the others
                errors.append(e)
        if errors:
            raise errors[0]
