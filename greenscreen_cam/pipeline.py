"""The real-time loop: capture -> track -> composite -> send.

Two modes, chosen by the source:

- **offline** (a video file or image folder without ``--realtime``): every frame
  is tracked and composited in order, deterministically; output frame ``i`` is
  input frame ``i`` keyed with its own mask.
- **live** (a camera, or ``--realtime``): a capture thread keeps only the newest
  frame; a tracker thread runs SAM 2 on the newest frame whenever it is free;
  the main thread composites *every* captured frame with the newest mask (warped
  by optical flow with ``--flow``) and sends it, so the output runs at the
  source's rate even when the tracker is slower.

Stopping: :meth:`Pipeline.stop` (called from a signal handler) ends the loop
within a frame; every device is released by the caller's context managers.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from greenscreen_cam.compositor import Compositor
from greenscreen_cam.errors import CameraLostError
from greenscreen_cam.segmenter import Prompt, StreamingTracker
from greenscreen_cam.sources import Frame, LatestFrameReader, PrefetchReader, Source

HOTKEYS = "r re-select  a auto re-select  space pause keying  m mask view  h help  q/Esc quit"


@dataclass
class MaskState:
    """The newest mask: low-resolution logits and the frame they were computed on."""

    logits: np.ndarray | None
    frame: Frame
    visible: bool
    object_score: float


@dataclass
class Stats:
    """Counters and timings of one run (times in seconds, ``perf_counter`` based)."""

    started: float = field(default_factory=time.perf_counter)
    frames_in: int = 0
    frames_out: int = 0
    tracked: int = 0
    dropped: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    track_times: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    compose_times: deque[float] = field(default_factory=lambda: deque(maxlen=600))
    mask_age: float = 0.0
    subject: str = "waiting"
    stopped: float | None = None

    def elapsed(self) -> float:
        return (self.stopped or time.perf_counter()) - self.started

    def snapshot(self) -> dict[str, Any]:
        secs = max(self.elapsed(), 1e-9)
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0 if lat else 0.0

        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "tracked": self.tracked,
            "dropped": self.dropped,
            "input_fps": self.frames_in / secs,
            "output_fps": self.frames_out / secs,
            "tracker_fps": self.tracked / secs,
            "latency_p50_ms": pct(0.50),
            "latency_p95_ms": pct(0.95),
            "mask_age_ms": self.mask_age * 1000.0,
            "track_ms": statistics.median(self.track_times) * 1000.0 if self.track_times else 0.0,
            "compose_ms": statistics.median(self.compose_times) * 1000.0 if self.compose_times else 0.0,
            "subject": self.subject,
            "seconds": secs,
        }


class _FlowWarper:
    """Moves a mask from the frame it was computed on to the current frame with DIS optical flow."""

    def __init__(self) -> None:
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    def warp(self, logits: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        h, w = logits.shape
        a = cv2.resize(cv2.cvtColor(src, cv2.COLOR_RGB2GRAY), (w, h), interpolation=cv2.INTER_AREA)
        b = cv2.resize(cv2.cvtColor(dst, cv2.COLOR_RGB2GRAY), (w, h), interpolation=cv2.INTER_AREA)
        flow = self._dis.calc(b, a, None)  # for each pixel of dst, where it was in src
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        return cv2.remap(
            logits, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )


class Pipeline:
    """Joins a source, the tracker, the compositor and the sinks.

    Args:
        source: Where frames come from.
        tracker: The streaming SAM 2 tracker.
        compositor: Mask -> keyed frame.
        sink: Where keyed frames go (usually a MultiSink).
        prompt: The user's selection (applied to the first frame), or None.
        auto: Find the subject with the face detector while there is no prompt.
        matte: Optional writer for each output frame's alpha.
        preview: Optional preview window (hotkeys, drag-to-select).
        max_frames: Stop after this many output frames.
        flow: Warp the newest mask to the current frame with optical flow (live mode).
        lost_after: Seconds of low visibility before the subject counts as lost.
        on_status: Called about twice a second with :meth:`Stats.snapshot`.
        on_event: Called with one-line messages (subject found/lost, re-selection).
    """

    def __init__(
        self,
        source: Source,
        tracker: StreamingTracker,
        compositor: Compositor,
        sink: Any,
        *,
        prompt: Prompt | None = None,
        auto: bool = False,
        matte: Any | None = None,
        preview: Any | None = None,
        max_frames: int | None = None,
        flow: bool = False,
        lost_after: float = 1.0,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.tracker = tracker
        self.compositor = compositor
        self.sink = sink
        self.matte = matte
        self.preview = preview
        self.max_frames = max_frames
        self.lost_after = lost_after
        self.on_status = on_status or (lambda s: None)
        self.on_event = on_event or (lambda m: None)
        self.stats = Stats()
        self._pending_prompt = prompt
        self._pending_reset = False
        self._auto = auto or prompt is None
        self._face_finder: Any = None
        self._said_searching = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._mask: MaskState | None = None
        self._invisible_since: float | None = None
        self._lost = False
        self._paused = False
        self._show_mask = False
        self._show_help = False
        self._warper = _FlowWarper() if flow else None
        self._last_status = 0.0
        self._ahead: list[Frame | None] = []
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to end (safe from signal handlers and other threads)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def reselect(self, prompt: Prompt | None) -> None:
        """Re-prompt on the next tracked frame; None = find the subject automatically.

        Safe from any thread: the tracker itself is only touched by the thread that tracks.
        """
        with self._lock:
            self._pending_prompt = prompt
            self._auto = prompt is None
            if prompt is None:
                self._pending_reset = True
                self._said_searching = False

    # ------------------------------------------------------------------ tracking
    def _track(self, frame: Frame) -> MaskState | None:
        """Run the tracker on ``frame`` (prompting first if a prompt is pending)."""
        with self._lock:
            prompt, self._pending_prompt = self._pending_prompt, None
            auto = self._auto
            reset, self._pending_reset = self._pending_reset, False
        if reset:
            self.tracker.reset()
            with self._lock:
                self._mask = None  # the old subject's mask must not be shown any more
        start = time.perf_counter()
        if prompt is not None:
            result = self.tracker.prompt(frame.image, prompt)
            self.compositor.reset()
            self.on_event(f"subject selected on frame {frame.index}")
        elif self.tracker.is_prompted:
            result = self.tracker.track(frame.image)
        elif auto:
            box = self._find_subject(frame)
            if box is None:
                if not self._said_searching:
                    self.on_event("no face found yet: sending the plain key colour and still looking")
                    self._said_searching = True
                self.stats.subject = "searching"
                return None
            self.on_event(f"found a face: selecting head and shoulders {box[0]},{box[1]},{box[2]},{box[3]}")
            result = self.tracker.prompt(frame.image, Prompt(box=tuple(float(v) for v in box)))  # type: ignore[arg-type]
            self.compositor.reset()
        else:
            return None
        state = MaskState(result.low_res_numpy(), frame, result.visible, result.object_score)
        self.stats.track_times.append(time.perf_counter() - start)
        self.stats.tracked += 1
        self._update_visibility(state.visible)
        return state

    def _find_subject(self, frame: Frame) -> tuple[int, int, int, int] | None:
        if self._face_finder is None:
            from greenscreen_cam.autoselect import FaceFinder

            self._face_finder = FaceFinder()
        return self._face_finder.subject_box(frame.image)

    def _update_visibility(self, visible: bool) -> None:
        now = time.perf_counter()
        if visible:
            self._invisible_since = None
            if self._lost:
                self._lost = False
                self.on_event("subject is back")
            self.stats.subject = "tracking"
            return
        if self._invisible_since is None:
            self._invisible_since = now
        if not self._lost and now - self._invisible_since >= self.lost_after:
            self._lost = True
            self.on_event("subject lost: sending the key colour until it returns")
        self.stats.subject = "lost" if self._lost else "tracking"

    # ------------------------------------------------------------------ output
    def _emit(self, frame: Frame, mask: MaskState | None) -> None:
        start = time.perf_counter()
        logits = None
        if mask is not None and mask.logits is not None and not self._lost:
            logits = mask.logits
            if self._warper is not None and mask.frame is not frame:
                logits = self._warper.warp(logits, mask.frame.image, frame.image)
            self.stats.mask_age = frame.timestamp - mask.frame.timestamp
        if self._paused:
            out, alpha = frame.image, np.full(frame.image.shape[:2], 255, np.uint8)
            if self.compositor.settings.mirror:
                out, alpha = cv2.flip(out, 1), alpha
        else:
            out, alpha = self.compositor.compose(frame.image, logits)
        if self._show_mask:
            out = cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB)
        self.stats.compose_times.append(time.perf_counter() - start)
        self.sink.send(out)
        if self.matte is not None:
            self.matte.send(alpha)
        if self.preview is not None:
            self.preview.overlay = [HOTKEYS] if self._show_help else []
            self.preview.send(out)
            self._hotkey(self.preview.last_key, frame)
        self.stats.frames_out += 1
        self.stats.latencies.append(time.perf_counter() - frame.timestamp)
        now = time.perf_counter()
        if now - self._last_status >= 0.5:
            self._last_status = now
            self.on_status(self.stats.snapshot())
        if self.max_frames is not None and self.stats.frames_out >= self.max_frames:
            self.stop()

    def _hotkey(self, key: int, frame: Frame) -> None:
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
            box = self.preview.select_box(frame.image)
            if box is not None:
                self.reselect(Prompt(box=tuple(float(v) for v in box)))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ loops
    def run(self) -> dict[str, Any]:
        """Run until the source ends, ``max_frames`` is reached or :meth:`stop`; return the summary."""
        try:
            if self.source.live:
                self._run_live()
            else:
                self._run_offline()
        finally:
            self.stats.stopped = time.perf_counter()
        return self.stats.snapshot()

    def _run_offline(self) -> None:
        reader = PrefetchReader(self.source, pending=self._ahead)  # decode frame i+1 while frame i is tracked
        try:
            while not self.stopping:
                frame = reader.read()
                if frame is None:
                    break
                frame.timestamp = time.perf_counter()
                self.stats.frames_in += 1
                mask = self._track(frame)
                self._emit(frame, mask)
        finally:
            self._ahead = reader.stop()  # joined: the caller may close the source now
        self.stats.dropped = int(getattr(self.source, "dropped", 0))

    def _run_live(self) -> None:
        inbox: list[Frame | None] = [None]
        wake = threading.Condition()

        def tracker_loop() -> None:
            while not self.stopping:
                with wake:
                    wake.wait_for(lambda: inbox[0] is not None or self.stopping, timeout=0.2)
                    frame, inbox[0] = inbox[0], None
                if frame is None:
                    continue
                try:
                    state = self._track(frame)
                except BaseException as e:  # surfaced by the main loop
                    self.error = e
                    self.stop()
                    return
                if state is not None:
                    with self._lock:
                        self._mask = state

        worker = threading.Thread(target=tracker_loop, name="greencam-tracker", daemon=True)
        reader = LatestFrameReader(self.source)
        worker.start()
        try:
            while not self.stopping:
                try:
                    frame = reader.get(timeout=0.25)
                except TimeoutError:
                    if reader.produced and time.perf_counter() - self._last_frame_time(reader) > 5.0:
                        raise CameraLostError("the camera stopped delivering frames for 5 s") from None
                    continue
                if frame is None:
                    break
                self.stats.frames_in += 1
                with wake:
                    inbox[0] = frame
                    wake.notify()
                with self._lock:
                    mask = self._mask
                self._emit(frame, mask)
        finally:
            self.stop()
            # A SAM 2 step can take seconds on a CPU at high resolution: do not hold the
            # devices for it. The worker is a daemon that only writes self._mask, so it is
            # safe to let it finish (or die with the process) after the sinks are closed.
            worker.join(timeout=0.5)
            self.stats.dropped = reader.dropped + int(getattr(self.source, "dropped", 0))
            reader.close()
        if self.error is not None:
            raise self.error

    @staticmethod
    def _last_frame_time(reader: LatestFrameReader) -> float:
        latest = reader._latest
        return latest.timestamp if latest is not None else time.perf_counter()
