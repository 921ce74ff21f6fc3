"""The real-time loop: capture -> track -> composite -> send.

Two modes, chosen by the source:

- **offline** (a video file or image folder without ``--realtime``): every frame
  is tracked and composited in order, deterministically; output frame ``i`` is
  input frame ``i`` keyed with its own mask.
- **live** (a camera, ``--realtime``, or a remote tracker): a capture thread keeps
  only the newest frame; the tracker runs on the newest frame whenever it is free
  (on a thread of its own, or on a ``greencam serve`` machine); the main thread
  keys every captured frame and sends it, so the output runs at the source's rate
  even when the tracker is slower. Which mask keys which frame, and how long a
  frame may wait for its own mask, is the :class:`~greenscreen_cam.key.sync.KeyScheduler`'s
  decision (``--sync``).

The output never stalls: while the camera is reconnecting the last picture (or
the key colour) keeps going out at the source's rate.

Stopping: :meth:`Pipeline.stop` (called from a signal handler) ends the loop
within a frame; every device is released by the caller's context managers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from greenscreen_cam.core import Frame, MaskResult, percentile
from greenscreen_cam.errors import GreencamError, PromptError, TrackerError
from greenscreen_cam.key.compositor import Compositor
from greenscreen_cam.key.sync import AsyncTracker, Keyed, KeyScheduler, ThreadedTracker
from greenscreen_cam.live.idle import IDLE_LABEL, IdleGate, placeholder_frame
from greenscreen_cam.media.outputs import sink_counts, sink_lag
from greenscreen_cam.media.sinks import Sink
from greenscreen_cam.media.sources import LatestFrameReader, PrefetchReader, Source
from greenscreen_cam.track.prompt import Prompt, Selection
from greenscreen_cam.track.tracking import AsyncTracking, Tracker, is_async

if TYPE_CHECKING:
    from greenscreen_cam.media.sinks import PreviewSink

RemoteTracking = AsyncTracking
"""The former name of :class:`greenscreen_cam.track.tracking.AsyncTracking` (a tracker that owns its prompt)."""


HOTKEYS = (
    "r add a subject (drag)  d drop the one under the cursor  a auto re-select  space pause  m mask  h help  q quit"
)


@dataclass
class Stats:
    """Counters and timings of one run (times in seconds, ``perf_counter`` based)."""

    started: float = field(default_factory=time.perf_counter)
    frames_in: int = 0
    frames_out: int = 0
    tracked: int = 0
    dropped: int = 0
    filler: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    delays: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    track_times: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    compose_times: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    own_masks: int = 0
    keyed: int = 0
    """Output frames keyed with a mask of the subject (0 at the end: the subject was never found)."""
    mask_age: float = 0.0
    subject: str = "waiting"
    sync: str = "exact"
    completed: bool = False
    stopped: float | None = None
    audio_delay_ms: float | None = None
    """The greencam microphone's delay in force (``--audio-delay``), None while the sound is not delayed."""
    output_lag: float = 0.0
    """Seconds a frame handed to the live outputs takes to be out (their threads, the device's pacing)."""
    sinks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per output on a thread of its own: frames ``sent`` and ``dropped`` (see :mod:`greenscreen_cam.media.outputs`)."""
    idle_periods: int = 0
    """Times the run went idle because no app had the virtual camera open."""
    idle_seconds: float = 0.0
    idle_frames: int = 0
    """Placeholder frames sent while idle."""
    resume_times: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    """Per resume: seconds from deciding to resume (a viewer opened the device) to the first frame sent
    that was keyed with a mask of a frame captured after the resume (the subject's or, if SAM 2 no
    longer sees it, the key colour)."""

    def elapsed(self) -> float:
        return (self.stopped or time.perf_counter()) - self.started

    def snapshot(self) -> dict[str, Any]:
        """The figures the status line and the summary show (``*_ms`` in milliseconds)."""
        secs = max(self.elapsed(), 1e-9)

        def ms(values: deque[float], q: float) -> float:
            return percentile(values, q) * 1000.0

        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "tracked": self.tracked,
            "dropped": self.dropped,
            "filler_frames": self.filler,
            "input_fps": self.frames_in / secs,
            "output_fps": self.frames_out / secs,
            "tracker_fps": self.tracked / secs,
            "latency_p50_ms": ms(self.latencies, 50),
            "latency_p95_ms": ms(self.latencies, 95),
            "delay_p50_ms": ms(self.delays, 50),
            "delay_p95_ms": ms(self.delays, 95),
            "latency_recent_ms": percentile(list(self.latencies)[-30:], 50) * 1000.0,  # about the last second
            "output_lag_ms": self.output_lag * 1000.0,
            "own_mask_share": self.own_masks / self.frames_out if self.frames_out else 0.0,
            "keyed_frames": self.keyed,
            "mask_age_ms": self.mask_age * 1000.0,
            "track_ms": ms(self.track_times, 50),
            "compose_ms": ms(self.compose_times, 50),
            "subject": self.subject,
            "sync": self.sync,
            "completed": self.completed,
            "seconds": secs,
            "idle_periods": self.idle_periods,
            "idle_seconds": self.idle_seconds,
            "idle_frames": self.idle_frames,
            "resume_ms": ms(self.resume_times, 50),
            "audio_delay_ms": self.audio_delay_ms,
            "sink_dropped": sum(c["dropped"] for c in self.sinks.values()),
            "sinks": {name: dict(c) for name, c in self.sinks.items()},
        }


class _Visibility:
    """SAM 2's object score over time -> tracking / lost, with a grace period that keeps the last mask.

    The grace period is in seconds of frame timestamps for live sources and in
    frames for offline files (so the output does not depend on machine speed).
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.lost = False
        self._missing_since: float | None = None
        self._last_visible: np.ndarray | None = None

    def reset(self) -> None:
        self.lost = False
        self.after_gap()

    def after_gap(self) -> None:
        """The picture stopped for a while (idle): the last mask is stale and the grace period starts over."""
        self._missing_since = None
        self._last_visible = None

    def update(self, result: MaskResult, clock: float) -> tuple[np.ndarray | None, str | None]:
        """``(logits to show, event)`` for a new tracker result at ``clock`` (frame index or seconds)."""
        if result.visible:
            self._missing_since = None
            self._last_visible = result.logits
            if self.lost:
                self.lost = False
                return result.logits, "subject is back"
            return result.logits, None
        if self._missing_since is None:
            self._missing_since = clock
        if not self.lost and clock - self._missing_since >= self.grace:
            self.lost = True
            return None, "subject lost: sending the key colour until it returns"
        return (None if self.lost else self._last_visible), None

    @property
    def state(self) -> str:
        return "lost" if self.lost else "tracking"


class Pipeline:
    """Joins a source, the tracker, the compositor and the sinks.

    Args:
        source: Where frames come from.
        tracker: The one tracker: a local :class:`~greenscreen_cam.track.tracking.Tracker` (the pipeline
            prompts it, runs it inline offline and on a thread of its own live), or an
            :class:`~greenscreen_cam.track.tracking.AsyncTracking` that works on its own time and takes
            prompts through ``reselect`` (``greencam start --server``'s remote tracker).
        compositor: Mask -> keyed frame.
        sink: Where keyed frames go (usually a MultiSink).
        prompt: The user's selection (applied to the first frame), or None.
        auto: Find the subject with the face detector while there is no prompt.
        matte: Optional writer for each output frame's alpha (``(H, W)`` uint8).
        preview: Optional preview window (hotkeys, drag-to-select).
        max_frames: Stop after exactly this many output frames (live: frames the key scheduler
            still holds and keep-alive repeats count too).
        sync: ``auto``, ``on`` or ``off``: how live frames wait for their own mask (see :mod:`greenscreen_cam.key.sync`).
        max_delay: Most seconds a live frame may be held for its mask.
        flow: With ``sync="off"``, warp the newest mask to the current frame with optical flow.
        lost_after: Seconds (frames at the source's fps, offline) of low visibility before the
            subject counts as lost; the last visible mask is kept meanwhile.
        on_status: Called about twice a second with :meth:`Stats.snapshot`.
        on_event: Called with one-line messages (subject found/lost, re-selection).
        idle: Live only: while this gate says idle (no app has the virtual camera open), release
            the camera (the source must have ``suspend()``/``resume()``, as
            :class:`~greenscreen_cam.media.sources.CameraSource` has), run no tracker step and send a
            placeholder frame ``idle_fps`` times a second; resume when it says active again.
        idle_fps: Placeholder frames per second while idle.
        steady_delay: Hold the live playout delay steady, moving it only in steps (what a delayed
            microphone needs, ``--audio-delay``: see :class:`~greenscreen_cam.key.sync.KeyScheduler`).
    """

    def __init__(
        self,
        source: Source,
        tracker: Tracker | AsyncTracking,
        compositor: Compositor,
        sink: Sink,
        *,
        prompt: Prompt | Selection | None = None,
        auto: bool = False,
        matte: Sink | None = None,
        preview: PreviewSink | None = None,
        max_frames: int | None = None,
        sync: str = "auto",
        max_delay: float = 0.09,
        flow: bool = False,
        lost_after: float = 1.0,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        idle: IdleGate | None = None,
        idle_fps: float = 2.0,
        steady_delay: bool = False,
    ) -> None:
        if idle is not None and not (callable(getattr(source, "suspend", None)) and source.live):
            raise ValueError("idle needs a live source that can be suspended (a camera)")
        self.source = source
        self.idle = idle
        self.idle_fps = idle_fps
        self._resumed_at: float | None = None
        self._resume_index = 0
        """Index of the first frame captured after the latest resume (see ``Stats.resume_times``)."""
        self.tracker = tracker
        self._async: AsyncTracking | None = tracker if is_async(tracker) else None  # type: ignore[assignment]
        self._local: Tracker | None = None if self._async is not None else tracker  # type: ignore[assignment]
        self.compositor = compositor
        self.sink = sink
        self.matte = matte
        self.preview = preview
        self.max_frames = max_frames
        self.sync = sync
        self.max_delay = max_delay
        self.steady_delay = steady_delay
        self.flow = flow
        self.on_status = on_status or (lambda s: None)
        self.on_event = on_event or (lambda m: None)
        self.stats = Stats()
        live = bool(source.live)
        grace = lost_after * (source.fps or 30.0) if not live else lost_after
        self._visibility = _Visibility(grace)
        self._pending_prompt = prompt
        self._pending_reset = False
        self._auto = auto or prompt is None
        self._face_finder: Any = None
        self._said_searching = False
        self._said_capped = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._paused = False
        self._show_mask = False
        self._show_help = False
        self._last_status = 0.0
        self._last_out: np.ndarray | None = None
        self._last_send = 0.0
        self._new_subject_at: int | None = None
        """Frame index of the latest (re-)selection: masks of earlier frames belong to another subject."""
        self._subject_ops: list[tuple[str, Any]] = []
        """Subjects to add (``("add", Prompt)``) or drop (``("drop", (x, y))``), applied by the tracking thread."""
        self._soon: list[Callable[[], None]] = []
        """Changes from other threads (``greencam ctl``), applied between two frames (see :meth:`call_soon`)."""
        self.initial_prompt = prompt
        self.error: BaseException | None = None
        if self._async is not None and prompt is not None:  # it applies to the first frame it tracks
            self._async.reselect(prompt)

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to end (safe from signal handlers and other threads)."""
        self._stop.set()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the pipeline's thread after the next frame is sent (safe from any thread)."""
        with self._lock:
            self._soon.append(fn)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        """Keying paused: the camera's picture goes out untouched (the preview's space, ``greencam ctl pause``)."""
        return self._paused

    def set_paused(self, paused: bool) -> None:
        """Pause or resume keying; call it on the pipeline's thread (:meth:`call_soon` from any other)."""
        self._paused = paused

    def reselect(self, prompt: Prompt | Selection | None) -> None:
        """Re-prompt on the next tracked frame; None = find the subject automatically.

        Safe from any thread: the tracker itself is only touched by the thread that tracks.
        """
        if self._async is not None:
            self._async.reselect(prompt)
        with self._lock:
            self._pending_prompt = prompt
            self._auto = prompt is None
            if prompt is None:
                self._pending_reset = True
                self._said_searching = False

    def add_subject(self, prompt: Prompt) -> None:
        """Track one more subject from the next tracked frame on (the first one is a selection); any thread.

        Needs a tracker of several subjects (:class:`~greenscreen_cam.track.multi.MultiTracker`); any
        other tracker re-selects instead.
        """
        if not self._can_add_subjects:
            self.reselect(prompt)
            self.on_event("re-selecting the subject")
        elif self._async is not None:
            self._async.add_subject(prompt)  # type: ignore[attr-defined]
            self.on_event("adding a subject")
        else:
            with self._lock:
                self._subject_ops.append(("add", prompt))

    @property
    def _can_add_subjects(self) -> bool:
        """Whether the tracker takes more subjects: a remote one with ``add_subject``, a local one with ``add``."""
        if self._async is not None:
            return callable(getattr(self._async, "add_subject", None))
        return callable(getattr(self._local, "add", None))

    def drop_subject_at(self, x: float, y: float) -> None:
        """Stop tracking the subject whose mask covers frame pixel ``(x, y)``; any thread."""
        remote = self._async
        if remote is None:
            with self._lock:
                self._subject_ops.append(("drop", (x, y)))
            return
        subject_at, drop = getattr(remote, "subject_at", None), getattr(remote, "drop_subject", None)
        if not callable(subject_at) or not callable(drop):
            self.on_event("this tracker cannot drop one subject: press r to select again")
            return
        index = subject_at(x, y)
        if index is None:
            self.on_event(f"no subject under the cursor at {x:.0f},{y:.0f}: nothing dropped")
            return
        left = drop(index)
        self.on_event(
            f"subject {index + 1} dropped; {left} left" if left else "last subject dropped: press r to select one"
        )

    def _apply_drops(self, tracker: Tracker, points: list[tuple[float, float]], frame: Frame) -> None:
        for x, y in points:
            index = tracker.subject_at(x, y) if callable(getattr(tracker, "subject_at", None)) else None  # type: ignore[attr-defined]
            if index is None:
                self.on_event(f"no subject under the cursor at {x:.0f},{y:.0f}: nothing dropped")
                continue
            tracker.drop(index)  # type: ignore[attr-defined]
            with self._lock:
                self._new_subject_at = frame.index  # held frames must not show the dropped subject
            left = len(getattr(tracker, "subjects", ()))
            if left:
                self.on_event(f"subject {index + 1} dropped; {left} left")
            else:
                tracker.reset()
                with self._lock:
                    self._auto = False  # the user dropped it: do not pick a face on our own
                self.on_event("last subject dropped: sending the key colour; press r to select one")

    # ------------------------------------------------------------------ tracking
    def _track(self, frame: Frame) -> MaskResult | None:
        """Run the local tracker on ``frame`` (prompting first if a prompt is pending); None = no subject yet."""
        tracker = self._local
        assert tracker is not None
        with self._lock:
            prompt, self._pending_prompt = self._pending_prompt, None
            auto = self._auto
            reset, self._pending_reset = self._pending_reset, False
            drops = [arg for kind, arg in self._subject_ops if kind == "drop"]
            adds: list[Prompt] = [arg for kind, arg in self._subject_ops if kind == "add"]
            self._subject_ops = [("add", p) for p in adds[1:]]  # one new subject per frame; the rest wait
        add = adds[0] if adds else None
        self._apply_drops(tracker, drops, frame)
        if reset:
            with self._lock:
                self._new_subject_at = frame.index
            tracker.reset()
            self._visibility.reset()
            if self._face_finder is not None:
                self._face_finder.reset()  # a new search: earlier sightings must not confirm a face
        start = time.perf_counter()
        if prompt is None and not tracker.is_prompted and add is not None:
            prompt, add = add, None  # the first subject of an empty tracker is a selection
        if prompt is None and not tracker.is_prompted:
            if not auto:
                return None
            box = self._find_subject(frame)
            if box is None:
                if not self._said_searching:
                    self.on_event("no face found yet: sending the plain key colour and still looking")
                    self._said_searching = True
                self.stats.subject = "searching"
                return None
            self.on_event(f"found a face: selecting head and shoulders {box[0]},{box[1]},{box[2]},{box[3]}")
            prompt = Prompt.from_box(box)
        if prompt is not None:
            with self._lock:
                self._new_subject_at = frame.index
            result = tracker.prompt(frame.image, prompt)  # type: ignore[arg-type]  # a Selection goes to a MultiTracker
            self.compositor.reset()
            self._visibility.reset()
            self.on_event(f"subject selected on frame {frame.index}")
            if add is not None:  # a re-selection took this frame: the new subject joins on the next one
                with self._lock:
                    self._subject_ops.insert(0, ("add", add))
        elif add is not None:
            result = self._add(tracker, frame, add)
        else:
            result = tracker.track(frame.image)
        self.stats.track_times.append(time.perf_counter() - start)
        self.stats.tracked += 1
        return MaskResult(frame.index, frame.timestamp, result.low_res_numpy(), result.visible, result.object_score)

    def _add(self, tracker: Tracker, frame: Frame, prompt: Prompt) -> Any:
        """Add ``prompt``'s subject on ``frame`` (the frame is tracked for the others too); its union result."""
        try:
            result = tracker.add(frame.image, prompt)  # type: ignore[attr-defined]
        except PromptError as e:  # too many subjects, or a box off the frame: say so and keep tracking
            self.on_event(f"subject not added: {e}")
            return tracker.track(frame.image)
        self.on_event(f"subject {len(getattr(tracker, 'subjects', ()))} added on frame {frame.index}")
        return result

    def _track_remote(self, frame: Frame) -> MaskResult | None:
        """Offline with a tracker of its own time (over the link): send ``frame`` and wait for its own mask."""
        assert self._async is not None
        start = time.perf_counter()
        result = self._async.track_sync(frame)
        self.stats.track_times.append(time.perf_counter() - start)
        self.stats.tracked += 1
        return result if result.selected else None

    def _find_subject(self, frame: Frame) -> tuple[int, int, int, int] | None:
        if self._face_finder is None:
            from greenscreen_cam.track.autoselect import FaceFinder

            self._face_finder = FaceFinder()
        return self._face_finder.subject_box(frame.image)

    def _shown(self, result: MaskResult | None, clock: float) -> np.ndarray | None:
        """The logits to key with for a new tracker result (the grace period applied), and its events."""
        if result is None:
            return None
        logits, event = self._visibility.update(result, clock)
        if event:
            self.on_event(event)
        if self.stats.subject != "reconnecting":
            self.stats.subject = self._visibility.state
        return logits

    # ------------------------------------------------------------------ output
    def _emit(self, frame: Frame, logits: np.ndarray | None, *, own: bool = True) -> None:
        """Key ``frame`` with ``logits`` and send it everywhere; then status, hotkeys and the frame limit."""
        if self._limit_reached():  # frames the scheduler still held when the limit was reached
            return
        start = time.perf_counter()
        out, alpha = self._compose(frame, logits)
        self.stats.compose_times.append(time.perf_counter() - start)
        self._send(out, alpha)
        self.stats.frames_out += 1
        self.stats.own_masks += int(own and logits is not None)
        self.stats.keyed += int(logits is not None)
        self.stats.latencies.append(time.perf_counter() - frame.timestamp)
        self._after_send()

    def _compose(self, frame: Frame, logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self._paused:
            out, alpha = frame.image, np.full(frame.image.shape[:2], 255, np.uint8)
            if self.compositor.settings.mirror:
                out = cv2.flip(out, 1)
        else:
            out, alpha = self.compositor.compose(frame.image, logits)
        if self._show_mask:
            out = cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB)
        return out, alpha

    def _send(self, out: np.ndarray, alpha: np.ndarray | None) -> None:
        self.sink.send(out)
        self._last_out = out
        self._last_send = time.perf_counter()
        if self.matte is not None and alpha is not None:
            self.matte.send(alpha)
        if self.preview is not None:
            self._update_preview(out)

    def _update_preview(self, out: np.ndarray) -> None:
        preview = self.preview
        assert preview is not None
        s = self.stats.snapshot()
        state = [
            f"{s['subject']} | tracker {s['tracker_fps']:.1f} fps | out {s['output_fps']:.1f} fps | sync {s['sync']}"
        ]
        if self._paused:
            state.append("keying paused (space)")
        preview.overlay = state + ([HOTKEYS] if self._show_help else ["h: help"])
        preview.send(out)
        box = preview.take_selection()
        if box is not None:
            self.add_subject(Prompt.from_box(box))
        self._hotkey(preview.last_key)

    def _after_send(self) -> None:
        with self._lock:
            soon, self._soon = self._soon, []
        for fn in soon:
            fn()
        now = time.perf_counter()
        if now - self._last_status >= 0.5:
            self._last_status = now
            self._count_sinks()
            self.on_status(self.stats.snapshot())
        if self._limit_reached():
            self.stats.completed = True
            self.stop()

    def _limit_reached(self) -> bool:
        """Whether ``max_frames`` frames went out (keep-alive repeats count: the sinks got them too)."""
        return self.max_frames is not None and self.stats.frames_out + self.stats.filler >= self.max_frames

    def _hotkey(self, key: int) -> None:
        if key in (ord("q"), 27):
            self.stop()
        elif key == ord(" "):
            self._paused = not self._paused
            self.on_event("keying paused (pass-through)" if self._paused else "keying resumed")
        elif key == ord("m"):
            self._show_mask = not self._show_mask
        elif key == ord("h"):
            self._show_help = not self._show_help
        elif key == ord("a"):
            self.reselect(None)
            self.on_event("automatic re-selection")
        elif key == ord("r") and self.preview is not None:
            self.preview.begin_select()  # the output keeps running while the user drags
            what = "subject to add" if self._can_add_subjects else "subject"
            self.on_event(f"drag a box around the {what} in the preview window")
        elif key == ord("d") and self.preview is not None:
            cursor = self.preview.cursor
            if cursor is None:
                self.on_event("point at a subject in the preview window, then press d")
            else:
                self.drop_subject_at(*cursor)

    # ------------------------------------------------------------------ loops
    def run(self) -> dict[str, Any]:
        """Run until the source ends, ``max_frames`` is reached or :meth:`stop`; return the summary.

        The summary's ``completed`` is True when the source ended or ``max_frames``
        was reached (offline), or when a live run was stopped without an error.
        """
        try:
            if self.source.live:
                self._run_live()
                self.stats.completed = self.error is None
            else:
                self._run_offline()
        finally:
            self.stats.stopped = time.perf_counter()
            self._count_sinks()
        return self.stats.snapshot()

    def _count_sinks(self) -> None:
        counts = sink_counts(self.sink)
        self.stats.output_lag = sink_lag(self.sink)
        if self.matte is not None:
            counts.update(sink_counts(self.matte))
        self.stats.sinks = counts

    def _run_offline(self) -> None:
        reader = PrefetchReader(self.source)  # decode frame i+1 while frame i is tracked
        try:
            while not self.stopping:
                frame = reader.read()
                if frame is None:
                    self.stats.completed = True
                    break
                frame.timestamp = time.perf_counter()
                self.stats.frames_in += 1
                result = self._track(frame) if self._async is None else self._track_remote(frame)
                self._emit(frame, self._shown(result, frame.index))
        finally:
            reader.stop()  # joined: the caller may close the source now
        self.stats.dropped = int(getattr(self.source, "dropped", 0))

    def _run_live(self) -> None:
        tracker: AsyncTracking | ThreadedTracker = self._async or ThreadedTracker(self._track)
        scheduler = KeyScheduler(self.sync, max_delay=self.max_delay, flow=self.flow or None, steady=self.steady_delay)
        interval = 1.0 / (self.source.fps or 30.0)
        reader = LatestFrameReader(self.source)
        quiet = max(3 * interval, 0.1)  # a gap this long is no jitter: the camera is away
        source_error: GreencamError | None = None
        try:
            while not self.stopping:
                if self.idle is not None and self.idle.idle:
                    self._go_idle(reader, scheduler, tracker)
                    continue
                now = time.perf_counter()
                wait = interval
                if tracker.busy:
                    wait = min(wait, 0.005)  # pick up a finished mask promptly: it may release a held frame
                deadline = scheduler.next_deadline()
                if deadline is not None:
                    wait = min(wait, max(0.001, deadline - now))
                try:
                    frame = reader.get(timeout=wait)
                except TimeoutError:
                    last = reader.last_frame_time  # None until the camera's first frame: nothing to repeat yet
                    if last is not None and time.perf_counter() - max(last, self._last_send) >= quiet:
                        self._keep_alive(reader)
                except GreencamError as e:  # camera lost for good: send what was captured, then report it
                    source_error = e
                    break
                else:
                    if frame is None:
                        break
                    if self.stats.subject == "reconnecting":
                        self.stats.subject = self._visibility.state
                    self.stats.frames_in += 1
                    scheduler.push(frame)
                self._pump(tracker, scheduler)
            if self.error is None:
                for keyed in scheduler.flush(time.perf_counter()):  # held frames go out with the best mask at hand
                    self._emit_keyed(keyed)
        finally:
            self.stop()
            tracker.close()
            self.stats.dropped = reader.dropped + int(getattr(self.source, "dropped", 0)) + scheduler.counters.dropped
            reader.close()
        if self.error is not None:
            raise self.error
        if source_error is not None:
            raise source_error

    def _go_idle(
        self, reader: LatestFrameReader, scheduler: KeyScheduler, tracker: AsyncTracker | AsyncTracking
    ) -> None:
        """Nobody watches: release the camera, stop tracking, send placeholders; come back when somebody does."""
        gate = self.idle
        assert gate is not None
        for keyed in scheduler.flush(time.perf_counter()):  # frames held for their masks go out first
            self._emit_keyed(keyed)
        self.source.suspend()  # type: ignore[attr-defined]
        settle = time.perf_counter() + 30.0
        while tracker.busy and not self.stopping and time.perf_counter() < settle:
            time.sleep(0.01)  # the step in flight finishes; no new one starts while idle
        self._take_results(tracker, scheduler)
        with suppress(TimeoutError, GreencamError):  # a frame captured as the camera was let go is stale by then
            reader.get(timeout=0)
        last = reader.last_frame
        self.stats.subject = IDLE_LABEL
        self.stats.idle_periods += 1
        self.on_event(f"{IDLE_LABEL}: no app has the virtual camera open, so the camera and the tracker are off")
        placeholder = placeholder_frame(self.source.width, self.source.height, self.compositor.settings.rgb)
        self._last_out = placeholder
        period = 1.0 / max(self.idle_fps, 0.1)
        began = time.perf_counter()
        while not self.stopping and gate.idle:
            self.sink.send(placeholder)
            self._last_send = time.perf_counter()
            self.stats.idle_frames += 1
            self._after_send()  # the status line and greencam ctl keep working
            until = self._last_send + period
            while not self.stopping and gate.idle and (left := until - time.perf_counter()) > 0:
                gate.wait_viewer(min(left, 0.25))
        self.stats.idle_seconds += time.perf_counter() - began
        if self.stopping:
            return
        self._resumed_at = time.perf_counter()
        self.source.resume()  # type: ignore[attr-defined]
        self._resume_index = last.index + 1 if last is not None else 0
        scheduler.forget_masks(before=self._resume_index)  # no frame after the gap gets a mask from before it
        self._visibility.after_gap()
        self.compositor.reset()
        self.stats.subject = self._visibility.state
        self.on_event("an app opened the virtual camera: the camera and the tracker are back on")

    def _keep_alive(self, reader: LatestFrameReader) -> None:
        """No camera frame for a while: say why, and send the last picture again (or the key colour)."""
        if self._limit_reached():
            return
        if reader.reconnecting:
            self.stats.subject = "reconnecting"
        if self._last_out is None:
            self._last_out = placeholder_frame(self.source.width, self.source.height, self.compositor.settings.rgb)
        self.sink.send(self._last_out)
        self._last_send = time.perf_counter()
        if self.preview is not None:
            self._update_preview(self._last_out)
        self.stats.filler += 1
        self._after_send()

    def _pump(self, tracker: AsyncTracker | AsyncTracking, scheduler: KeyScheduler) -> None:
        """Take the tracker's results, hand it its next frame, and send the frames the scheduler releases."""
        if not self._take_results(tracker, scheduler):
            return
        nxt = scheduler.take_submission(tracker.busy)
        if nxt is not None:
            tracker.submit(nxt)
        for keyed in scheduler.pop_ready(time.perf_counter()):
            self._emit_keyed(keyed)
        self.stats.sync = scheduler.mode_in_force()
        if self.stats.sync == "capped" and not self._said_capped:
            self._said_capped = True
            self.on_event(
                f"the tracker is slower than --max-delay {self.max_delay * 1000:g} ms allows: frames wait at most "
                "that long (lip sync is kept) and are keyed with the nearest mask moved by optical flow, so the "
                "edges trail fast motion; for a recording or OBS (with its audio sync offset) use --sync on"
            )

    def _take_results(self, tracker: AsyncTracker | AsyncTracking, scheduler: KeyScheduler) -> bool:
        """Hand the tracker's finished results to the scheduler; False when the tracker failed."""
        try:
            results = tracker.poll()
        except BaseException as e:  # the tracker thread failed: end the run with one line
            self._fail(e)
            return False
        with self._lock:  # set by the tracking thread
            fresh, self._new_subject_at = self._new_subject_at, None
        if fresh is not None:
            scheduler.forget_masks(before=fresh)  # held frames must not get the old subject's mask
        if self._async is not None:  # a local tracker counts its own steps in _track
            self.stats.tracked += sum(1 for r in results if r.selected)
        for result in results:
            if result.selected:
                result = replace(result, logits=self._shown(result, result.timestamp))
            scheduler.add_result(result)  # no subject yet (still searching): nothing to judge
        return True

    def _emit_keyed(self, keyed: Keyed) -> None:
        after_gap = keyed.result is not None and (keyed.mask_index or 0) >= self._resume_index
        if self._resumed_at is not None and after_gap:  # the first frame keyed with a mask from after the gap
            self.stats.resume_times.append(time.perf_counter() - self._resumed_at)
            self._resumed_at = None
        self.stats.delays.append(keyed.delay)
        if keyed.result is not None:
            self.stats.mask_age = keyed.frame.timestamp - keyed.result.timestamp
        self._emit(keyed.frame, keyed.logits, own=keyed.source == "own")

    def _fail(self, failure: BaseException) -> None:
        """Surface a failure of the tracker thread as one clear error that ends the run."""
        if self.error is not None:
            return
        if isinstance(failure, GreencamError):
            self.error = failure
        else:
            self.error = TrackerError(f"the tracker failed: {type(failure).__name__}: {failure}")
            self.error.__cause__ = failure
        self.stop()
