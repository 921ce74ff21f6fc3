"""Where keyed frames go: the virtual camera, a video file, a preview window, a matte folder.

Every sink takes ``(H, W, 3)`` uint8 **RGB** frames through ``send`` and is
released by ``close`` (also as a context manager). :class:`MultiSink` fans one
frame out to several sinks and closes all of them even if one fails.

Files are never destroyed: :func:`check_outputs` refuses existing outputs
(unless ``--overwrite``) and outputs that are the source before anything
opens, and the file and matte sinks write to hidden temporary siblings that
replace the target only on a clean ``close``; ``abort`` (or leaving the
context with an exception) deletes them and leaves the old output as it was.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from greenscreen_cam.devices import LINUX_VCAM_FIX, LINUX_VCAM_PERSIST, virtual_camera_fix  # noqa: F401 (re-exported)
from greenscreen_cam.errors import SinkError, VirtualCameraError


class Sink(Protocol):
    """Takes ``(H, W, 3)`` uint8 RGB frames; ``close`` finishes and releases the output."""

    def send(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


def abort_sink(sink: object) -> None:
    """Release ``sink`` without finishing its output: ``abort()`` where it has one, else ``close()``."""
    abort = getattr(sink, "abort", None)
    if callable(abort):
        abort()
    else:
        sink.close()  # type: ignore[attr-defined]


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


class OutputExistsError(SinkError):
    """An output file or matte folder that already holds something, or that would overwrite the source."""


_TMP_TAG = ".greencam-tmp-"
_MATTE_NAME = re.compile(r"\d{6}\.png")


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh hidden name next to ``path``: ``.NAME.greencam-tmp-XXXXXXXX`` + ``suffix``."""
    for _ in range(100):
        candidate = path.with_name(f".{path.stem if suffix else path.name}{_TMP_TAG}{secrets.token_hex(4)}{suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise SinkError(f"cannot find a free temporary name next to {path}")  # pragma: no cover


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (resolved paths, symlinks and hard links)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(child: Path, folder: Path) -> bool:
    try:
        child.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _foreign_files(folder: Path) -> list[str]:
    """Names in a matte folder that greencam did not write (anything but ``NNNNNN.png``)."""
    return sorted(p.name for p in folder.iterdir() if not _MATTE_NAME.fullmatch(p.name))


def check_outputs(paths: list[Path], matte_dir: Path | None, *, overwrite: bool, sources: list[str | Path]) -> None:
    """Refuse, before anything opens, every output that would destroy a user's file.

    Call it before the camera opens and the model loads. It checks:

    - each output file: a supported extension, an existing parent folder, not a
      folder, not given twice, not already existing unless ``overwrite``;
    - the matte folder: not a file, empty (or absent) unless ``overwrite``, and
      holding only ``NNNNNN.png`` mattes when it is to be replaced;
    - against every source that is a file or folder on disk: no output may be the
      source itself (also through a symlink or hard link) or lie inside a source
      folder, and no source may lie inside the matte folder; this holds even with
      ``overwrite``.

    Args:
        paths: The ``--output`` files (not ``virtual``).
        matte_dir: The ``--matte-output`` folder, or None.
        overwrite: Whether existing outputs may be replaced (``--overwrite``).
        sources: The ``--source`` values; camera indices and devices are ignored.

    Raises:
        OutputExistsError: an existing output without ``overwrite``, or an output that is a source.
        SinkError: an unsupported extension or a missing parent folder.
    """
    source_paths = [Path(str(s)).expanduser() for s in sources]
    source_paths = [s for s in source_paths if s.exists() and (s.is_file() or s.is_dir())]
    seen: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.suffix.lower() not in VideoFileSink.CODECS:
            raise SinkError(f"output file {path}: unsupported extension; use one of {', '.join(VideoFileSink.CODECS)}")
        if not path.parent.is_dir():
            raise SinkError(f"output folder {path.parent} does not exist; create it first or choose another --output")
        for src in source_paths:
            if _same_file(path, src) or (src.is_dir() and _inside(path, src)):
                raise OutputExistsError(f"--output {path} would overwrite the source {src}; choose another output name")
        if any(_same_file(path, other) for other in seen):
            raise OutputExistsError(f"--output {path} is given twice")
        seen.append(path)
        if matte_dir is not None and _inside(path, Path(matte_dir)):
            raise OutputExistsError(f"--output {path} lies inside --matte-output {matte_dir}; choose another place")
        if path.is_dir():
            raise OutputExistsError(f"--output {path} is a folder; give a video file name")
        if os.path.lexists(path) and not overwrite:
            raise OutputExistsError(f"output file {path} already exists; pass --overwrite to replace it")
    if matte_dir is None:
        return
    folder = Path(matte_dir).expanduser()
    for src in source_paths:
        if _same_file(folder, src) or _inside(src, folder):
            raise OutputExistsError(f"--matte-output {folder} holds the source {src}; choose another matte folder")
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputExistsError(f"--matte-output {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"matte folder {folder} is not empty; pass --overwrite to replace its mattes")
        foreign = _foreign_files(folder)
        if foreign:
            raise OutputExistsError(
                f"matte folder {folder} holds files greencam did not write (e.g. {foreign[0]}); "
                "choose an empty or new folder"
            )


class VideoFileSink(_Closing):
    """A video file written with OpenCV (``.mp4`` -> mp4v, ``.avi`` -> MJPG, ``.mkv`` -> XVID).

    Frames go to a hidden temporary file in the same folder
    (``.NAME.greencam-tmp-XXXXXXXX.mp4``, same extension so OpenCV picks the
    container), which replaces ``path`` only on a clean :meth:`close` after at
    least one frame. :meth:`abort` (also ``__exit__`` with an exception) deletes
    it: an existing file is never touched by a run that did not finish.

    Args:
        path: The output file.
        width, height, fps: The video format; frames must be ``(height, width, 3)`` uint8 RGB.
        overwrite: Replace an existing ``path`` on close (otherwise it is refused here).
    """

    CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}

    def __init__(self, path: Path, width: int, height: int, fps: float, *, overwrite: bool = False) -> None:
        self._writer: cv2.VideoWriter | None = None
        self.tmp_path: Path | None = None
        suffix = path.suffix.lower()
        if suffix not in self.CODECS:
            raise SinkError(f"output file {path}: unsupported extension; use one of {', '.join(self.CODECS)}")
        if not path.parent.is_dir():
            raise SinkError(f"output folder {path.parent} does not exist")
        if os.path.lexists(path) and not overwrite:
            raise OutputExistsError(f"output file {path} already exists; pass --overwrite to replace it")
        self.path = path
        self.size = (width, height)
        tmp = self.tmp_path = _tmp_sibling(path, path.suffix)
        self.frames_written = 0
        writer = cv2.VideoWriter(str(self.tmp_path), cv2.VideoWriter_fourcc(*self.CODECS[suffix]), fps, (width, height))
        if not writer.isOpened():
            writer.release()
            tmp.unlink(missing_ok=True)
            raise SinkError(
                f"cannot write video file {path} (codec {self.CODECS[suffix]} unavailable or no permission)"
            )
        self._writer = writer

    def send(self, frame: np.ndarray) -> None:
        if self._writer is None:
            raise SinkError(f"output file {self.path} is already closed")
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise SinkError(
                f"frame {frame.shape[1]}x{frame.shape[0]} does not match output {self.size[0]}x{self.size[1]}"
            )
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it onto :attr:`path` (nothing is replaced when no frame was written)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.release()
        tmp = self.tmp_path
        assert tmp is not None
        if self.frames_written == 0:
            tmp.unlink(missing_ok=True)
            return
        try:
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SinkError(f"cannot move the finished video onto {self.path}: {e.strerror}") from None

    def abort(self) -> None:
        """Drop what was written; an existing file at :attr:`path` stays as it was."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        if self.tmp_path is not None:
            self.tmp_path.unlink(missing_ok=True)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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
    """Writes each frame's alpha matte as an 8-bit PNG: ``DIR/000000.png``, ``000001.png``, ...

    The PNGs go to a hidden sibling folder (``.DIR.greencam-tmp-XXXXXXXX``) that
    becomes ``DIR`` on a clean :meth:`close`; :meth:`abort` (also ``__exit__``
    with an exception) deletes it. An existing non-empty ``DIR`` is refused unless
    ``overwrite``, and then replaced as a whole on close only, and only if it holds
    nothing but ``NNNNNN.png`` mattes.

    Args:
        folder: The matte folder; its parent is created if missing.
        overwrite: Replace an existing non-empty folder of mattes on close.
    """

    def __init__(self, folder: Path, *, overwrite: bool = False) -> None:
        self.folder = folder
        self.count = 0
        self.overwrite = overwrite
        self.tmp_folder: Path | None = None
        check_outputs([], folder, overwrite=overwrite, sources=[])
        tmp = _tmp_sibling(folder)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as e:
            raise SinkError(f"cannot create matte folder {folder}: {e.strerror}") from None
        self.tmp_folder = tmp

    def send(self, alpha: np.ndarray) -> None:
        """Write one ``(H, W)`` uint8 matte (0 = background, 255 = subject)."""
        if self.tmp_folder is None:
            raise SinkError(f"matte folder {self.folder} is already closed")
        path = self.tmp_folder / f"{self.count:06d}.png"
        if not cv2.imwrite(str(path), alpha):
            raise SinkError(f"cannot write matte {self.folder / path.name}")
        self.count += 1

    def close(self) -> None:
        """Move the finished mattes into place as :attr:`folder`."""
        tmp, self.tmp_folder = self.tmp_folder, None
        if tmp is None:
            return
        old: Path | None = None
        try:
            if self.folder.is_dir():
                if any(self.folder.iterdir()):
                    check_outputs([], self.folder, overwrite=self.overwrite, sources=[])
                    old = _tmp_sibling(self.folder)
                    os.replace(self.folder, old)
                else:
                    self.folder.rmdir()
            os.replace(tmp, self.folder)
        except (OSError, SinkError) as e:
            if old is not None and not self.folder.exists():
                os.replace(old, self.folder)
                old = None
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, SinkError):
                raise
            raise SinkError(f"cannot move the mattes into {self.folder}: {e.strerror}") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Delete the mattes written so far; an existing :attr:`folder` stays as it was."""
        tmp, self.tmp_folder = self.tmp_folder, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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

    def abort(self) -> None:
        """Abort every sink (files keep their old content), even if one raises."""
        errors = []
        for sink in self.sinks:
            try:
                abort_sink(sink)
            except Exception as e:  # keep aborting the others
                errors.append(e)
        if errors:
            raise errors[0]

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
