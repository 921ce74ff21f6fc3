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

from greenscreen_cam.errors import OutputExistsError, SinkError, VirtualCameraError
from greenscreen_cam.media.devices import LINUX_VCAM_FIX, LINUX_VCAM_PERSIST, virtual_camera_fix  # noqa: F401 (re-exported)


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


class ClosingSink:
    """Context-manager base: a clean exit calls ``close()``, an exception calls ``abort()``."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def abort(self) -> None:
        """Release without finishing the output; sinks that write files override it to keep old files."""
        self.close()


class VirtualCameraSink(ClosingSink):
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
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise SinkError(f"cannot write into output folder {path.parent} (no permission)")
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


class VideoFileSink(ClosingSink):
    """A video file written with OpenCV (``.mp4`` -> mp4v, ``.avi`` -> MJPG, ``.mkv`` -> XVID).

    Frames go to a hidden temporary file in the same folder
    (``.NAME.greencam-tmp-XXXXXXXX.mp4``, same extension so OpenCV picks the
    container), which replaces ``path`` only on a clean :meth:`close` after at
    least one frame, and only after the finished file was read back: it must
    open and hold every frame written. A full disk ends the run at the frame that
    did not fit (:class:`~greenscreen_cam.errors.SinkError`, exit 5). :meth:`abort`
    (also ``__exit__`` with an exception) deletes it: an existing file is never
    touched by a run that did not finish.

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
        # OpenCV's write returns nothing and only logs "Failed to write frame": a full disk is noticed here.
        assert self.tmp_path is not None
        if disk_full(self.tmp_path.parent):
            self.abort()
            raise SinkError(
                f"cannot write video file {self.path}: no space left on device "
                f"(after {self.frames_written} frames); nothing was written under that name"
            )

    def close(self) -> None:
        """Finish the file, read it back, and move it onto :attr:`path` (nothing is replaced with no frame).

        Raises:
            SinkError: the finished file does not open or holds fewer frames than were written
                (a full disk, an I/O error); the temporary file is deleted and :attr:`path` is untouched.
        """
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.release()
        tmp = self.tmp_path
        assert tmp is not None
        if self.frames_written == 0:
            tmp.unlink(missing_ok=True)
            return
        problem = video_problem(tmp, self.frames_written)
        if problem is not None:
            tmp.unlink(missing_ok=True)
            if disk_full(tmp.parent):
                problem = "no space left on device"
            raise SinkError(f"cannot write video file {self.path}: {problem}; nothing was written under that name")
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


def disk_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has no free block left (for this user) at all."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows): the read-back check in close still runs
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return free == 0


def video_problem(path: Path, frames: int) -> str | None:
    """What is wrong with a finished video file that should hold ``frames`` frames, or None when it is whole.

    The container's frame count is read first; only when it disagrees are the frames
    counted one by one (some containers only estimate it).
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return "the finished file does not open (it is truncated or broken)"
        if int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames:
            return None
        counted = 0
        while counted <= frames and cap.grab():
            counted += 1
        if counted != frames:
            return f"the finished file holds {counted} of the {frames} frames written"
        return None
    finally:
        cap.release()


def has_display() -> bool:
    """Whether an on-screen window can be opened (always assumed on Windows/macOS)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


PREVIEW_MAX_WIDTH = 1280
"""The preview window opens at the frame's size, scaled down to at most this width (it stays resizable)."""

Box = tuple[int, int, int, int]
"""``(x, y, w, h)`` in frame pixels."""


def preview_scale(width: int, height: int, max_width: int = PREVIEW_MAX_WIDTH) -> float:
    """Display pixels per frame pixel: 1.0, or less so that the picture is at most ``max_width`` wide."""
    return min(1.0, max_width / max(1, width))


class BoxSelection:
    """A mouse drag that selects a box, as a state machine fed with OpenCV mouse events.

    Event coordinates are in display pixels (the picture shown, which is the
    frame scaled by ``scale``); :meth:`take` returns the box in frame pixels.
    Left button down starts a drag, moves update it, up finishes it; a drag
    smaller than ``min_size`` display pixels is ignored (a click), and the
    right button cancels.

    Args:
        frame_size: ``(width, height)`` of the frame in pixels.
        scale: Display pixels per frame pixel.
        min_size: Smallest accepted box side, in display pixels.
    """

    def __init__(self, frame_size: tuple[int, int], scale: float = 1.0, min_size: int = 4) -> None:
        self.frame_size = frame_size
        self.scale = scale
        self.min_size = min_size
        self.active = True
        self.start: tuple[int, int] | None = None
        self.end: tuple[int, int] | None = None
        self._result: Box | None = None

    def _clip(self, x: int, y: int) -> tuple[int, int]:
        w, h = self.frame_size
        return (
            min(max(x, 0), round(w * self.scale) - 1),
            min(max(y, 0), round(h * self.scale) - 1),
        )

    def on_mouse(self, event: int, x: int, y: int, flags: int = 0) -> None:
        """Feed one ``cv2.setMouseCallback`` event (``cv2.EVENT_*``, display coordinates)."""
        if not self.active:
            return
        if event == cv2.EVENT_LBUTTONDOWN:
            self.start = self.end = self._clip(x, y)
        elif event == cv2.EVENT_MOUSEMOVE and self.start is not None and flags & cv2.EVENT_FLAG_LBUTTON:
            self.end = self._clip(x, y)
        elif event == cv2.EVENT_LBUTTONUP and self.start is not None:
            self.end = self._clip(x, y)
            (x0, y0), (x1, y1) = self.start, self.end
            if abs(x1 - x0) >= self.min_size and abs(y1 - y0) >= self.min_size:
                self._result = self._to_frame(self.band() or (0, 0, 0, 0))
                self.active = False
            self.start = self.end = None
        elif event == cv2.EVENT_RBUTTONDOWN:
            self.cancel()

    def band(self) -> tuple[int, int, int, int] | None:
        """The rubber band being dragged, ``(x0, y0, x1, y1)`` in display pixels, or None."""
        if self.start is None or self.end is None:
            return None
        (xa, ya), (xb, yb) = self.start, self.end
        return (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))

    def _to_frame(self, band: tuple[int, int, int, int]) -> Box:
        w, h = self.frame_size
        x0, y0, x1, y1 = band
        fx0 = min(max(round(x0 / self.scale), 0), w - 1)
        fy0 = min(max(round(y0 / self.scale), 0), h - 1)
        fx1 = min(max(round((x1 + 1) / self.scale), fx0 + 1), w)
        fy1 = min(max(round((y1 + 1) / self.scale), fy0 + 1), h)
        return (fx0, fy0, fx1 - fx0, fy1 - fy0)

    def cancel(self) -> None:
        self.active = False
        self.start = self.end = None

    def take(self) -> Box | None:
        """The finished box in frame pixels, once; None while dragging, after a cancel, or after taking it."""
        result, self._result = self._result, None
        return result


def render_preview(
    frame: np.ndarray,
    scale: float,
    overlay: list[str],
    band: tuple[int, int, int, int] | None = None,
    hint: str | None = None,
) -> np.ndarray:
    """The picture the preview shows: ``frame`` scaled by ``scale``, with text lines and a rubber band.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB.
        scale: Display pixels per frame pixel (see :func:`preview_scale`).
        overlay: Lines drawn top-left on a dark backing, wrapped to the picture's width.
        band: ``(x0, y0, x1, y1)`` in display pixels, drawn as a rectangle.
        hint: A line drawn at the bottom (e.g. how to select).

    Returns:
        ``(round(H*scale), round(W*scale), 3)`` uint8 **BGR**, ready for ``cv2.imshow``.
    """
    h, w = frame.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shown = frame if size == (w, h) else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(shown, cv2.COLOR_RGB2BGR)
    font, text_scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1
    line_h = 22
    max_chars = max(10, (size[0] - 20) // 10)
    top = [part for line in overlay for part in _wrap(line, max_chars)]
    bottom = _wrap(hint, max_chars) if hint else []
    placed = [(22 + line_h * i, text) for i, text in enumerate(top)]
    placed += [(size[1] - 10 - line_h * (len(bottom) - 1 - i), text) for i, text in enumerate(bottom)]
    for y, text in placed:
        tw = cv2.getTextSize(text, font, text_scale, thick)[0][0]
        y0, y1, x1 = max(0, y - 16), max(0, y + 6), min(size[0], 14 + tw)
        bgr[y0:y1, 6:x1] = (bgr[y0:y1, 6:x1] * 0.35).astype(np.uint8)  # a dark backing keeps text readable
        cv2.putText(bgr, text, (10, y), font, text_scale, (255, 255, 255), thick, cv2.LINE_AA)
    if band is not None:
        x0, y0, x1, y1 = band
        cv2.rectangle(bgr, (x0, y0), (x1, y1), (0, 0, 0), 3)
        cv2.rectangle(bgr, (x0, y0), (x1, y1), (0, 255, 255), 1)
    return bgr


def _wrap(line: str, max_chars: int) -> list[str]:
    """Split ``line`` at spaces into pieces of at most ``max_chars`` characters (long words are kept)."""
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > max_chars:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return out


SELECT_HINT = "drag a box around the subject (right click or Esc cancels)"


class PreviewSink(ClosingSink):
    """An OpenCV window showing the keyed frames, with state lines and a non-blocking box selection.

    The window is resizable and opens at the frame's size, scaled down to at
    most ``max_width``. Each :meth:`send` draws :attr:`overlay` (set by the
    pipeline: mode, fps, tracking state, hotkeys) on the picture and stores the
    key pressed in :attr:`last_key` (-1 when none). :meth:`begin_select` starts a
    mouse drag selection that never blocks: every later :meth:`send` draws the
    rubber band, and :meth:`take_selection` returns the finished box once. While
    selecting, Esc cancels the selection and is not reported in :attr:`last_key`.

    Args:
        title: The window title.
        max_width: Largest initial picture width in pixels.
    """

    def __init__(self, title: str = "greencam preview", *, max_width: int = PREVIEW_MAX_WIDTH) -> None:
        if not has_display():
            raise SinkError("--preview needs a display, and none was found (DISPLAY is not set); drop --preview")
        self.title = title
        self.max_width = max_width
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            cv2.setMouseCallback(title, self._on_mouse)
        except cv2.error as e:
            raise SinkError(f"cannot open a preview window: {str(e).strip().splitlines()[-1]}") from None
        self.last_key: int = -1
        self.overlay: list[str] = []
        self.scale = 1.0
        self._sized: tuple[int, int] | None = None
        self._selection: BoxSelection | None = None
        self._wanted = False
        self.cursor: tuple[float, float] | None = None
        """Where the mouse last was over the picture, in frame pixels (None before it moved there)."""

    @property
    def selecting(self) -> bool:
        """True between :meth:`begin_select` and the end (or cancel) of the drag."""
        return self._wanted or (self._selection is not None and self._selection.active)

    def _on_mouse(self, event: int, x: int, y: int, flags: int, param: object = None) -> None:
        if self.scale > 0:
            self.cursor = (x / self.scale, y / self.scale)
        selection = self._selection
        if selection is not None:
            selection.on_mouse(event, x, y, flags)

    def begin_select(self) -> None:
        """Start a drag selection; the next :meth:`send` calls show the rubber band."""
        self._wanted = True
        if self._sized is not None:
            self._selection = BoxSelection(self._sized, self.scale)
            self._wanted = False

    def cancel_select(self) -> None:
        self._wanted = False
        if self._selection is not None:
            self._selection.cancel()

    def take_selection(self) -> Box | None:
        """The box the user finished dragging, ``(x, y, w, h)`` in frame pixels, once; else None."""
        if self._selection is None:
            return None
        box = self._selection.take()
        if box is not None or not self._selection.active:
            self._selection = None
        return box

    def _resize_for(self, width: int, height: int) -> None:
        if self._sized == (width, height):
            return
        self.scale = preview_scale(width, height, self.max_width)
        self._sized = (width, height)
        cv2.resizeWindow(self.title, max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        if self._selection is not None:  # the frame size changed under a selection: start it again
            self._selection = BoxSelection(self._sized, self.scale)

    def send(self, frame: np.ndarray) -> None:
        """Show one ``(H, W, 3)`` uint8 RGB frame and poll the keyboard (:attr:`last_key`)."""
        self._resize_for(frame.shape[1], frame.shape[0])
        if self._wanted:
            self.begin_select()
        selection = self._selection if self._selection is not None and self._selection.active else None
        bgr = render_preview(
            frame,
            self.scale,
            self.overlay,
            band=selection.band() if selection is not None else None,
            hint=SELECT_HINT if selection is not None else None,
        )
        cv2.imshow(self.title, bgr)
        key = cv2.waitKey(1)
        self.last_key = -1 if key < 0 else key & 0xFF
        if selection is not None and self.last_key == 27:
            self.cancel_select()
            self.last_key = -1

    def select_box(self, frame: np.ndarray) -> Box | None:
        """Block until the user drags a box on ``frame`` (before the loop starts); None if cancelled.

        Esc, ``q``, a right click or closing the window cancels.
        """
        self.begin_select()
        shown = False
        while True:
            self.send(frame)
            box = self.take_selection()
            if box is not None:
                return box
            if not self.selecting or self.last_key == ord("q"):
                self.cancel_select()
                return None
            try:
                visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
            except cv2.error:
                visible = -1
            if shown and visible < 1:
                self.cancel_select()
                return None
            shown = True
            time.sleep(0.02)  # nothing else runs yet: do not redraw the same picture a thousand times a second

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


class MatteWriter(ClosingSink):
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


class NullSink(ClosingSink):
    """Discards frames (benchmarks)."""

    def __init__(self) -> None:
        self.frames = 0

    def send(self, frame: np.ndarray) -> None:
        self.frames += 1

    def close(self) -> None:
        pass


class MultiSink(ClosingSink):
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
