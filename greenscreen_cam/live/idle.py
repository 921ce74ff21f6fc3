"""Idle when no app watches: find readers of the virtual camera from its open and close events.

On Linux a v4l2loopback device is a file under ``/dev``; every program that opens or closes it
raises an inotify event on that file. :class:`ViewerWatch` waits for those events (through
``inotify`` from the C library via ctypes, no extra package) and, on each, confirms who holds
the device by scanning ``/proc/*/fd`` — leaving out greencam's own handle (its process id), so
the writer never counts as a viewer. Without inotify it re-scans every ``poll_s`` seconds.

:class:`IdleGate` turns "somebody holds it now" into a steady decision: a viewer makes the
camera active at once; it goes idle only when nobody has held the device for ``hold_off``
seconds. A program that opens and closes the device every few seconds (Discord does) therefore
keeps the camera on instead of making it flap.

The live loop (:class:`greenscreen_cam.live.pipeline.Pipeline` with ``idle=``) asks the gate between
frames: when it goes idle the loop releases the physical camera, runs no tracker step and sends
a cheap :func:`placeholder_frame` at a low rate (so a device with ``exclusive_caps=1`` stays in
Chrome's list), and it resumes as soon as a viewer opens the device.

Only processes of the same user (or all, as root) are visible in ``/proc``; a viewer run by
another user is not seen. On Windows and macOS the OBS Virtual Camera gives no such events:
:func:`support` says so and idle stays off there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

import numpy as np

from greenscreen_cam import KEY_COLOR

__all__ = [
    "IDLE_LABEL",
    "IdleGate",
    "ViewerWatch",
    "placeholder_frame",
    "readers",
    "support",
]

IDLE_LABEL = "idle (no viewer)"
"""What the status line and the summary say while nobody watches."""

_IN_OPEN = 0x020
_IN_CLOSE_WRITE = 0x008
_IN_CLOSE_NOWRITE = 0x010
_IN_ATTRIB = 0x004
_IN_DELETE_SELF = 0x400
_IN_IGNORED = 0x8000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def support(platform: str | None = None, device: str | None = None) -> tuple[bool, str]:
    """``(can tell, why not)`` for idle detection on ``platform`` (default: this one) and ``device``."""
    platform = platform or sys.platform
    if not platform.startswith("linux"):
        return False, "idle: cannot tell whether an app watches the OBS Virtual Camera on this system; it stays on"
    if not device:
        return False, "idle: no virtual camera device to watch; it stays on"
    return True, ""


def readers(
    device: str | os.PathLike[str], *, exclude: Iterable[int] | None = None, proc: Path = Path("/proc")
) -> list[int]:
    """Process ids holding ``device`` open, found in ``proc``/<pid>/fd, other than ``exclude`` (default: this one).

    Processes whose fd folder cannot be read (another user's) are skipped.
    """
    target = os.path.realpath(device)
    skip = {os.getpid()} if exclude is None else {int(p) for p in exclude}
    found: list[int] = []
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        fd_dir = os.path.join(entry.path, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == target:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


class _Inotify:
    """A tiny inotify wrapper over the C library (Linux only); raises OSError when unavailable."""

    def __init__(self, path: str) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True)
        self.fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = _IN_OPEN | _IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE | _IN_ATTRIB | _IN_DELETE_SELF
        wd = int(libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"cannot watch {path}")
        self._wake_r, self._wake_w = os.pipe()  # wake() ends a wait at once (close() must not wait a poll period)

    def wake(self) -> None:
        """End a :meth:`wait` in another thread now."""
        with suppress(OSError):
            os.write(self._wake_w, b"x")

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for events; the number read (0 on timeout)."""
        ready, _, _ = select.select([self.fd, self._wake_r], [], [], max(0.0, timeout))
        if self.fd not in ready:
            return 0
        count = 0
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return 0
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, _, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            count += 1
        return count

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.fd = -1


class ViewerWatch:
    """Follow who holds ``device`` open, on a background thread.

    Args:
        device: The virtual camera's device file (e.g. ``/dev/video10``) or a stand-in file.
        exclude: Process ids that never count as viewers (default: this process, greencam's writer).
        poll_s: Re-scan interval without events (and the only scan when inotify is unavailable).
        proc: The ``/proc`` folder to scan.
        on_change: Called (from the watch thread) with the new viewer count whenever it changes.
    """

    def __init__(
        self,
        device: str | os.PathLike[str],
        *,
        exclude: Iterable[int] | None = None,
        poll_s: float = 2.0,
        proc: Path = Path("/proc"),
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.device = os.fspath(device)
        self.exclude = tuple(exclude) if exclude is not None else (os.getpid(),)
        self.poll_s = poll_s
        self.proc = proc
        self.on_change = on_change
        self.events = 0
        self.scans = 0
        self.inotify = False
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notify: _Inotify | None = None

    @property
    def count(self) -> int:
        """Viewers seen at the last scan."""
        with self._lock:
            return self._count

    def scan(self) -> int:
        """Re-count the viewers now; their number."""
        n = len(readers(self.device, exclude=self.exclude, proc=self.proc))
        changed = False
        with self._lock:
            self.scans += 1
            if n != self._count:
                self._count, changed = n, True
        if changed and self.on_change is not None:
            self.on_change(n)
        return n

    def start(self) -> ViewerWatch:
        try:
            self._notify = _Inotify(self.device)
            self.inotify = True
        except (OSError, AttributeError):
            self._notify, self.inotify = None, False
        self.scan()
        self._thread = threading.Thread(target=self._run, name="greencam-viewers", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._notify is not None:
                got = self._notify.wait(self.poll_s)
                self.events += got
            else:
                self._stop.wait(self.poll_s)
            if not self._stop.is_set():
                self.scan()

    def close(self) -> None:
        self._stop.set()
        if self._notify is not None:
            self._notify.wake()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 1.0)
        if self._notify is not None:
            self._notify.close()

    def __enter__(self) -> ViewerWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class IdleGate:
    """Active while somebody watches, idle once nobody has watched for ``hold_off`` seconds.

    Feed it viewer counts (:meth:`update`, e.g. as a :class:`ViewerWatch`'s ``on_change``);
    ask :attr:`idle`, or block in :meth:`wait_viewer` until somebody watches.

    Args:
        hold_off: Seconds with no viewer before going idle (a reader that comes back sooner
            keeps the camera on).
        clock: Monotonic clock (a test can pass its own).
        start_idle_after: Seconds from start before going idle when nobody watches at start
            (default: ``hold_off``).
    """

    def __init__(
        self,
        hold_off: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_idle_after: float | None = None,
    ) -> None:
        if hold_off < 0:
            raise ValueError("hold_off must be >= 0")
        self.hold_off = hold_off
        self.clock = clock
        self._cond = threading.Condition()
        self._viewers = 0
        start = clock()
        self._last_seen = start - hold_off + (hold_off if start_idle_after is None else start_idle_after)
        self.changes = 0

    def update(self, viewers: int) -> None:
        with self._cond:
            if viewers > 0 or self._viewers > 0:
                self._last_seen = self.clock()
            self._viewers = viewers
            self.changes += 1
            self._cond.notify_all()

    @property
    def viewers(self) -> int:
        with self._cond:
            return self._viewers

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._viewers == 0 and self.clock() - self._last_seen >= self.hold_off

    def wait_viewer(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until somebody watches; True when somebody does."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._viewers == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


def placeholder_frame(width: int, height: int, color: tuple[int, int, int] = KEY_COLOR) -> np.ndarray:
    """The frame sent while idle: one flat colour (RGB), ``(height, width, 3)`` uint8."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = color
    return frame
