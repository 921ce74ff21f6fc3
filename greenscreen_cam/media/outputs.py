"""Outputs: a registry of output kinds chosen by what ``--output`` says, and sinks on threads of their own.

What ``--output`` says picks the kind:

- a registered keyword (``virtual``: the virtual camera);
- ``SCHEME://...``: the kind registered for that scheme (``file://`` is a file); an unknown
  scheme is refused with one line that lists what is supported, instead of being taken as a
  file name (so a future ``rtmp://`` or ``ndi://`` output plugs in with :func:`register_output`);
- anything else: a video file path.

Each output sink is wrapped in a :class:`ThreadedSink`, so that a slow output (a network stream,
a busy disk) never stalls keying. The policy depends on the run (see
:func:`greenscreen_cam.app.open_pipeline`):

- ``drop`` (live runs: a camera, ``--realtime``): the sink's thread takes the newest frame from
  a one-frame :class:`~greenscreen_cam.core.LatestSlot`; frames it could not take in time are
  dropped and counted (:func:`sink_counts`, the summary's ``sink_dropped``).
- ``buffer`` (files written during a live run: a recording, mattes): up to ``depth`` frames wait
  in order (about a second, see :func:`buffer_depth`), so a disk that pauses for a moment loses
  nothing; past that the oldest waiting frame is dropped and counted. The loop never waits.
- ``block`` (offline runs: a file rendered as fast as possible): every frame reaches every output,
  in order; the keying loop waits when an output is ``depth`` frames behind.

An error raised on a sink's thread (a full disk is a :class:`~greenscreen_cam.errors.SinkError`)
is raised again by the next :meth:`ThreadedSink.send` (or :meth:`ThreadedSink.close`) on the
keying thread, so it ends the run with its one-line message and exit code.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from greenscreen_cam.core import LatestSlot
from greenscreen_cam.errors import SinkError
from greenscreen_cam.media.sinks import ClosingSink, Sink, abort_sink

Policy = Literal["drop", "buffer", "block"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class OutputTarget:
    """One ``--output`` value, parsed.

    Attributes:
        text: What the user typed.
        kind: The registry name of the kind that handles it.
        path: The file it writes, for kinds that write a file (checked before anything opens).
    """

    text: str
    kind: str
    path: Path | None = None


@dataclass(frozen=True)
class OutputContext:
    """What an output opener gets besides its target.

    Attributes:
        width, height, fps: The format of the frames it will be sent (``(height, width, 3)`` uint8 RGB).
        overwrite: ``--overwrite``.
        virtual_device: ``--virtual-device``.
        virtual_backend: A pyvirtualcam backend name (tests), or None.
        say: Reports a one-line event (e.g. which device was opened).
    """

    width: int
    height: int
    fps: float
    overwrite: bool = False
    virtual_device: str | None = None
    virtual_backend: str | None = None
    say: Callable[[str], None] = lambda line: None


Opener = Callable[[OutputTarget, OutputContext], Sink]


@dataclass(frozen=True)
class OutputKind:
    """One kind of output.

    Attributes:
        name: Registry name (``virtual``, ``file``...).
        open: ``open(target, context) -> Sink``.
        help: What it is, for error messages (``"virtual (the virtual camera)"``).
        keyword: The exact ``--output`` word it claims, if any.
        schemes: The URL schemes it claims (``"rtmp"`` claims ``rtmp://...``).
        writes_file: Its target is a file path: checked by :func:`greenscreen_cam.media.sinks.check_outputs`
            before anything opens, and kept only when the run completed.
    """

    name: str
    open: Opener
    help: str
    keyword: str | None = None
    schemes: tuple[str, ...] = ()
    writes_file: bool = False


def _open_virtual(target: OutputTarget, ctx: OutputContext) -> Sink:
    from greenscreen_cam.media.frame_size import EvenSizeSink, even_size
    from greenscreen_cam.media.sinks import VirtualCameraSink

    vw, vh, rounded = even_size(ctx.width, ctx.height)  # 4:2:0 needs even sizes (Chrome refuses odd ones)
    if rounded:
        ctx.say(rounded)
    vcam = VirtualCameraSink(vw, vh, ctx.fps, device=ctx.virtual_device, backend=ctx.virtual_backend)
    ctx.say(f"sending to virtual camera {vcam.device} ({vw}x{vh} @ {ctx.fps:g} fps)")
    return EvenSizeSink(vcam, vw, vh)


def _open_file(target: OutputTarget, ctx: OutputContext) -> Sink:
    from greenscreen_cam.media.sinks import VideoFileSink

    assert target.path is not None
    return VideoFileSink(target.path, ctx.width, ctx.height, ctx.fps, overwrite=ctx.overwrite)


_KINDS: dict[str, OutputKind] = {}
FILE_KIND = "file"
"""The kind of every ``--output`` that is neither a keyword nor a URL."""


def register_output(kind: OutputKind) -> None:
    """Add (or replace, by name) an output kind."""
    _KINDS[kind.name] = kind


def unregister_output(name: str) -> None:
    _KINDS.pop(name, None)


def output_kinds() -> list[OutputKind]:
    return list(_KINDS.values())


register_output(OutputKind("virtual", _open_virtual, "virtual (the virtual camera)", keyword="virtual"))
register_output(
    OutputKind(
        FILE_KIND, _open_file, "a video file (.mp4, .m4v, .mov, .avi, .mkv)", schemes=("file",), writes_file=True
    )
)


def parse_output(text: str) -> OutputTarget:
    """Which kind handles ``text`` (fast, nothing opens).

    Raises:
        SinkError: a ``SCHEME://`` no registered kind handles.
    """
    for kind in _KINDS.values():
        if kind.keyword is not None and text == kind.keyword:
            return OutputTarget(text, kind.name)
    match = _SCHEME.match(text)
    if match is None:
        return OutputTarget(text, FILE_KIND, Path(text).expanduser())
    scheme = match.group(1).lower()
    for kind in _KINDS.values():
        if scheme in kind.schemes:
            rest = text[match.end() :]
            return OutputTarget(text, kind.name, Path(rest).expanduser() if kind.writes_file else None)
    supported = "; ".join(
        k.help + (f" ({', '.join(s + '://' for s in k.schemes)})" if k.schemes else "") for k in _KINDS.values()
    )
    raise SinkError(f"--output {text}: no output handles {scheme}:// here; supported: {supported}")


def parse_outputs(texts: list[str]) -> list[OutputTarget]:
    """:func:`parse_output` for every ``--output``."""
    return [parse_output(t) for t in texts]


def writes_file(target: OutputTarget) -> bool:
    return _KINDS[target.kind].writes_file


def open_output(target: OutputTarget, ctx: OutputContext) -> Sink:
    """Open ``target`` with its kind's opener (raises its SinkError when the output cannot be opened)."""
    return _KINDS[target.kind].open(target, ctx)


# --------------------------------------------------------------------------- sinks on their own threads
_END = object()


class ThreadedSink(ClosingSink):
    """Runs ``sink.send`` on a thread of its own, so that a slow output never stalls the caller.

    Args:
        sink: The output (``send``/``close``, optionally ``abort``).
        name: Its name in :func:`sink_counts` (the ``--output`` value).
        policy: ``"drop"``: keep only the newest frame not taken yet (a
            :class:`~greenscreen_cam.core.LatestSlot`), dropping and counting the rest; ``"buffer"``:
            up to ``depth`` frames wait in order and :meth:`send` never waits (a full buffer drops
            its oldest frame, counted); ``"block"``: every frame, in order, :meth:`send` waits while
            ``depth`` frames are pending.
        depth: Frames that may wait with ``"buffer"`` and ``"block"``.
        close_timeout: Seconds :meth:`close` waits for the pending frames to go out.

    Frames are handed over, not copied: the caller must not modify a frame after sending it (the
    compositor makes a new array for every frame). An exception raised by ``sink.send`` stops the
    thread and is raised again by the next :meth:`send` or by :meth:`close`.
    """

    def __init__(
        self, sink: Any, *, name: str, policy: Policy = "drop", depth: int = 2, close_timeout: float = 30.0
    ) -> None:
        if policy not in ("drop", "buffer", "block"):
            raise ValueError(f"unknown sink policy {policy!r}")
        self.sink = sink
        self.name = name
        self.policy = policy
        self.close_timeout = close_timeout
        self.sent = 0
        self.lags: deque[float] = deque(maxlen=30)
        """Seconds from :meth:`send` to the wrapped sink's ``send`` returning, for the recent frames."""
        self._overflow = 0
        self.error: BaseException | None = None
        self._slot: LatestSlot[tuple[np.ndarray, float]] = LatestSlot()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stopped = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"greencam-sink-{name}", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Frames that never went out: replaced by a newer one (``"drop"``) or pushed out of a full buffer."""
        return self._slot.dropped + self._overflow

    def send(self, frame: np.ndarray) -> None:
        """Hand ``frame`` to the sink's thread (``"drop"``: never waits)."""
        self._raise_failure()
        if self._closed:
            raise SinkError(f"output {self.name} is already closed")
        item = (frame, time.perf_counter())
        if self.policy == "drop":
            self._slot.put(item)
            return
        if self.policy == "buffer":
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:  # the output is a second behind: its oldest waiting frame goes
                        self._queue.get_nowait()
                        self._overflow += 1
                    except queue.Empty:
                        pass
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self._raise_failure()  # a sink that died while the queue was full must not hang the loop

    def _next(self) -> Any:
        if self.policy == "drop":
            item = self._slot.take()
            return _END if item is None else item
        return self._queue.get()

    def _loop(self) -> None:
        try:
            while not self._stopped.is_set():
                item = self._next()
                if item is _END or self._stopped.is_set():
                    return
                frame, handed = item
                self.sink.send(frame)
                self.lags.append(time.perf_counter() - handed)
                self.sent += 1
        except BaseException as e:  # raised again on the caller's thread
            self.error = e
            self._stopped.set()
            while True:  # unblock a sender waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def _raise_failure(self) -> None:
        error = self.error
        if error is None:
            return
        if isinstance(error, SinkError) or not isinstance(error, Exception):
            raise error
        raise SinkError(f"output {self.name} failed: {type(error).__name__}: {error}") from error

    def _finish(self, timeout: float) -> bool:
        """Let the pending frames go out and stop the thread; False when it did not stop in ``timeout`` s."""
        self._closed = True
        deadline = time.monotonic() + timeout
        if self.policy == "drop":
            self._slot.close()
        else:
            while self._thread.is_alive() and time.monotonic() < deadline:
                try:
                    self._queue.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def close(self) -> None:
        """Send what is pending, then close the sink; an error of its thread is raised (and the sink aborted)."""
        if self._closed:
            return
        if not self._finish(self.close_timeout):
            self._stopped.set()
            raise SinkError(f"output {self.name} did not finish within {self.close_timeout:g} s")
        if self.error is not None:
            abort_sink(self.sink)
            self._raise_failure()
        self.sink.close()

    def abort(self) -> None:
        """Stop at once (pending frames are dropped) and abort the sink: files keep their old content."""
        if not self._closed:
            self._stopped.set()
            self._slot.clear()
            self._finish(
                5.0
            )  # a frame being written finishes first; a send stuck in a hung device is left to its thread
        abort_sink(self.sink)

    def __getattr__(self, name: str) -> Any:  # the wrapped sink's own attributes (device, frames_written...)
        if name == "sink":
            raise AttributeError(name)
        return getattr(self.sink, name)


def buffer_depth(width: int, height: int, fps: float, budget_bytes: int = 256 << 20) -> int:
    """Frames a ``buffer`` output may hold: about one second at ``fps``, at most ``budget_bytes`` of RGB frames."""
    frame_bytes = max(1, width * height * 3)
    return max(2, min(round(fps or 30.0), budget_bytes // frame_bytes))


def threaded_outputs(sink: object) -> Iterator[ThreadedSink]:
    """Each :class:`ThreadedSink` under ``sink`` (a MultiSink, a ThreadedSink or anything else)."""
    children = getattr(sink, "sinks", None)
    if isinstance(sink, ThreadedSink):
        yield sink
    elif isinstance(children, list):
        for child in children:
            yield from threaded_outputs(child)


def sink_lag(sink: object) -> float:
    """Seconds (median of the recent frames) a frame handed to ``sink`` takes to be out: the slowest
    live output under it (``drop`` policy: the virtual camera, streams; files that buffer do not
    count); 0.0 when none is threaded (the send itself was the output)."""
    lags = [list(out.lags) for out in threaded_outputs(sink) if out.policy == "drop"]
    return max((float(np.median(recent)) for recent in lags if recent), default=0.0)


def sink_counts(sink: object) -> dict[str, dict[str, int]]:
    """Per threaded output under ``sink`` (a MultiSink, a ThreadedSink or anything else): frames sent and dropped."""
    return {out.name: {"sent": out.sent, "dropped": out.dropped} for out in threaded_outputs(sink)}
