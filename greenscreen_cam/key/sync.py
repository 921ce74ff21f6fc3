"""Frame-accurate keying: which mask keys which camera frame, and when the frame goes out.

A live tracker is slower than (or at best as fast as) the camera, so its masks
arrive after the frames they belong to. Keying each frame with the *newest*
mask (``off``, the lowest latency) lands a mask computed on an older frame on a
newer one: the key cuts into one side of a moving subject and leaves a band of
room on the other. :class:`KeyScheduler` instead holds the captured frames in a
short, bounded ring and releases each one keyed with its *own* mask when it was
tracked, or else with the mask of the *nearest* tracked frame (before or after
it) moved onto it by optical flow (:func:`warp_logits`). The picture is delayed
by about one tracker step; the delay is steady (a playout delay adapted to the
tracker) and capped.

Modes:

- ``off``: every frame leaves as soon as it is pushed, keyed with the newest
  mask (moved by optical flow from its frame when ``flow=True``).
- ``on``: frame-accurate, the delay is whatever the tracker needs, bounded only
  by ``hold_limit`` (a stalled tracker never makes anything grow).
- ``auto``: like ``on`` with the delay capped at ``max_delay``. When the
  tracker keeps up with the camera every frame is tracked and waits only for
  its own mask (one tracker step); when it cannot, frames wait for the nearest
  tracked frame's mask up to the cap, and past the cap leave with the best
  mask at hand.

The scheduler is pure logic with an injectable clock and no threads: a loop
feeds it frames (:meth:`KeyScheduler.push`) and tracker results
(:meth:`KeyScheduler.add_result`), asks it which frame to give the tracker
(:meth:`KeyScheduler.take_submission`) and takes the frames that are due
(:meth:`KeyScheduler.pop_ready`). The same code runs the live pipeline, on the
real clock, and the oracle benchmark (:mod:`greenscreen_cam.key.oracle`), on a
simulated one.

Trackers are driven through :class:`AsyncTracker`; :class:`ThreadedTracker`
runs a local step function on one worker thread.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from greenscreen_cam.config import SYNC_MODES
from greenscreen_cam.core import Frame, MaskResult, percentile
from greenscreen_cam.errors import ConfigError

Source = Literal["own", "flow", "newest", "none"]


# --------------------------------------------------------------------------- interfaces
class AsyncTracker(Protocol):
    """A tracker that works on its own time (a local worker thread, or a server over the network).

    It holds at most one frame besides the one being tracked: :meth:`submit` puts a frame in a
    newest-frame slot, replacing (and counting as dropped) a pending frame whose tracking has not
    started. It never queues.
    """

    def submit(self, frame: Frame) -> None:
        """Track ``frame`` next (replaces a pending, not yet started frame)."""
        ...

    def poll(self) -> list[MaskResult]:
        """Results completed since the last call, oldest first (never blocks)."""
        ...

    @property
    def busy(self) -> bool:
        """True while a frame is being tracked or is pending."""
        ...


@dataclass
class Keyed:
    """One output frame and the mask that keys it.

    Attributes:
        frame: The captured frame (``image`` is ``(H, W, 3)`` uint8 RGB).
        logits: ``(h, w)`` float32 logits to key it with (already moved by optical flow when
            ``source == "flow"``), or None (no mask: send the key colour).
        source: ``"own"`` (the frame's own mask), ``"flow"`` (another frame's mask moved by optical
            flow), ``"newest"`` (the newest mask as it is) or ``"none"``.
        delay: Seconds between the frame's capture and its release (the added delay).
        mask_index: :attr:`Frame.index` of the frame whose mask is used, or None.
        result: The tracker result that mask came from (visibility, object score), or None.
    """

    frame: Frame
    logits: np.ndarray | None
    source: Source
    delay: float
    mask_index: int | None = None
    result: MaskResult | None = None


class ThreadedTracker:
    """:class:`AsyncTracker` over a blocking step function, run on one daemon worker thread.

    The step function owns prompting (the pipeline's prompt / automatic selection / re-selection
    logic stays in the pipeline): it gets a frame and returns its :class:`MaskResult`, or None when
    the frame has no mask yet; None is reported as a result with ``logits=None`` so that the
    scheduler does not wait for it (``selected=False``: not a verdict on the subject's visibility).

    Args:
        step: ``step(frame) -> MaskResult | None``, called on the worker thread only.
        on_result: Called (on the worker thread) after each result, e.g. to wake the main loop.

    An exception raised by ``step`` stops the worker and is re-raised by the next :meth:`poll`.
    """

    def __init__(
        self,
        step: Callable[[Frame], MaskResult | None],
        *,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self._step = step
        self._on_result = on_result or (lambda: None)
        self._cond = threading.Condition()
        self._pending: Frame | None = None
        self._working = False
        self._done: list[MaskResult] = []
        self._closed = False
        self.error: BaseException | None = None
        self.dropped = 0
        self.tracked = 0
        self._thread = threading.Thread(target=self._loop, name="greencam-tracker", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> None:
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self.dropped += 1
            self._pending = frame
            self._cond.notify()

    def poll(self) -> list[MaskResult]:
        with self._cond:
            done, self._done = self._done, []
            error = self.error
        if error is not None:
            raise error
        return done

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._working or self._pending is not None

    def close(self, timeout: float = 0.5) -> None:
        """Stop the worker; a step in progress is not interrupted (the thread is a daemon)."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                frame, self._pending = self._pending, None
                self._working = True
            try:
                result = self._step(frame)  # type: ignore[arg-type]
            except BaseException as e:  # re-raised by poll() on the caller's thread
                with self._cond:
                    self.error = e
                    self._working = False
                    self._closed = True
                self._on_result()
                return
            if result is None:
                result = MaskResult(frame.index, frame.timestamp, None, False, -math.inf, selected=False)  # type: ignore[union-attr]
            with self._cond:
                self._done.append(result)
                self._working = False
                self.tracked += 1
            self._on_result()


# --------------------------------------------------------------------------- optical flow
class FlowWarper:
    """Moves mask logits from one frame onto another with OpenCV's DIS optical flow.

    The flow is computed between the two frames scaled so that their long side is at most
    ``max_side`` pixels, then resampled to the logits' grid, whose aspect ratio may differ from the
    frame's (SAM 2's logits are square). The defaults (ultrafast preset refined down to a 240 px
    grid, about 2-5 ms per flow on a laptop CPU core) were chosen with the oracle benchmark on
    DAVIS: the flow's resolution matters far more than the preset's effort.

    The steps are exposed separately so that a caller can cache them: :meth:`prepare` (a frame's
    small gray image), :meth:`flow` (between two prepared frames) and :meth:`apply` (move logits
    along a flow); :meth:`warp` does all three.

    Args:
        max_side: Long side of the images the flow is computed on.
        preset: A ``cv2.DISOPTICAL_FLOW_PRESET_*`` value.
        finest_scale: Pyramid level the flow is refined down to (0 = the prepared size, 1 = half).
            None: the coarsest level whose long side is still at least ``min_detail`` px.
        min_detail: See ``finest_scale``.

    One instance is not thread-safe; :func:`warp_logits` keeps one per thread.
    """

    def __init__(
        self,
        max_side: int = 480,
        preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        finest_scale: int | None = None,
        min_detail: int = 240,
    ) -> None:
        if max_side < 8:
            raise ConfigError(f"the optical flow needs images of 8 px or more, got {max_side}")
        self.max_side = max_side
        self.finest_scale = finest_scale
        self.min_detail = min_detail
        self._dis = cv2.DISOpticalFlow_create(preset)
        self._scale_set: int | None = None
        self._grid: np.ndarray | None = None

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB frame -> ``(h, w)`` uint8 gray with long side ``<= max_side``."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        height, width = gray.shape
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            size = (max(8, round(width * scale)), max(8, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(gray)

    def flow(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Per pixel of ``dst``, where its content was in ``src``.

        Args:
            src: Prepared (:meth:`prepare`) frame the content comes from.
            dst: Prepared frame of the same size the content goes to.

        Returns:
            ``(h, w, 2)`` float32 displacements ``(dx, dy)`` in pixels of the prepared grid.
        """
        level = self.finest_scale
        if level is None:
            level, side = 0, max(dst.shape[:2])
            while side // 2 >= self.min_detail:
                side //= 2
                level += 1
        if level != self._scale_set:
            self._dis.setFinestScale(level)
            self._scale_set = level
        return self._dis.calc(dst, src, None)

    def apply(self, logits: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """Move ``(h, w)`` float32 logits (or ``(n, h, w)``, each subject's plane) along a :meth:`flow`
        (resampled to the logits' grid)."""
        h, w = logits.shape[-2:]
        fh, fw = flow.shape[:2]
        if (fh, fw) != (h, w):
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
            flow[..., 0] *= w / fw
            flow[..., 1] *= h / fh
        else:
            flow = flow.copy()
        if self._grid is None or self._grid.shape[:2] != (h, w):
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid = np.dstack([gx, gy])
        flow += self._grid  # absolute source coordinates
        planes = logits.astype(np.float32, copy=False)
        if planes.ndim == 3:
            return np.stack(
                [cv2.remap(p, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for p in planes]
            )
        return cv2.remap(planes, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def warp(self, logits: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """``logits`` computed on frame ``src``, moved onto frame ``dst`` (both ``(H, W, 3)`` uint8 RGB)."""
        if src is dst:
            return logits
        return self.apply(logits, self.flow(self.prepare(src), self.prepare(dst)))


_local = threading.local()


def warp_logits(logits: np.ndarray, src_image: np.ndarray, dst_image: np.ndarray) -> np.ndarray:
    """Move mask logits computed on ``src_image`` onto ``dst_image`` by optical flow.

    Args:
        logits: ``(h, w)`` float32 logits at any resolution (the mask's grid).
        src_image: ``(H, W, 3)`` uint8 RGB frame the logits were computed on.
        dst_image: ``(H, W, 3)`` uint8 RGB frame to key.

    Returns:
        ``(h, w)`` float32 logits aligned with ``dst_image``.
    """
    warper = getattr(_local, "warper", None)
    if warper is None:
        warper = _local.warper = FlowWarper()
    return warper.warp(logits, src_image, dst_image)


# --------------------------------------------------------------------------- scheduler
@dataclass
class _Held:
    frame: Frame
    ready_at: float | None = None


@dataclass
class _Stored:
    result: MaskResult
    arrived: float


@dataclass
class _Counters:
    out: int = 0
    dropped: int = 0
    submitted: int = 0
    results: int = 0
    sources: dict[str, int] = field(default_factory=lambda: {"own": 0, "flow": 0, "newest": 0, "none": 0})


class KeyScheduler:
    """Decides when each captured frame is output and which mask keys it (see the module docstring).

    Args:
        mode: ``"off"``, ``"on"`` or ``"auto"``.
        clock: Seconds, same time base as :attr:`Frame.timestamp` (``time.perf_counter`` live, a
            simulated clock in the benchmark); used to stamp arriving results.
        max_delay: ``auto``: the cap on the added delay, seconds.
        hold_limit: ``on`` (and the hard bound of every mode): the longest a frame is held, seconds.
        flow: Move masks from their frame onto the keyed frame by optical flow. Default: on for
            ``on``/``auto``, off for ``off`` (``--flow``).
        max_held: Most frames held at once; beyond it the oldest are dropped (counted).
        window: Frames whose readiness sets the playout delay.
        quantile: Percentile of the recent readiness delays used as the playout delay.
        blend: When both the tracked frame before and the one after a frame have masks, blend the
            two flowed masks weighted by closeness (instead of using only the nearer).
        warper: The optical flow (default :class:`FlowWarper` with its defaults).
        chain: Move a mask frame by frame (each consecutive flow computed once and cached) rather
            than in one jump; far better over more than a frame or two.
        steady: Hold the playout delay in steps instead of letting it follow the percentile frame by
            frame (a delayed microphone follows the picture's delay, and each change of its delay
            skips or repeats some sound): the delay rises at once to ``headroom`` above the
            percentile when frames get later than it, and falls only after the percentile has stayed
            more than ``2 * headroom`` below it for ``window`` frames.
        headroom: See ``steady`` (seconds).

    Frames must be pushed in capture order (increasing :attr:`Frame.index`); output is in the same
    order. Memory is bounded: at most ``max_held`` frames plus the few tracked frames they need.
    """

    def __init__(
        self,
        mode: str = "auto",
        *,
        clock: Callable[[], float] = time.perf_counter,
        max_delay: float = 0.3,
        hold_limit: float = 1.0,
        flow: bool | None = None,
        max_held: int = 120,
        window: int = 48,
        quantile: float = 95.0,
        blend: bool = True,
        warper: FlowWarper | None = None,
        chain: bool = True,
        steady: bool = False,
        headroom: float = 0.04,
    ) -> None:
        if mode not in SYNC_MODES:
            raise ConfigError(f"--sync must be one of {', '.join(SYNC_MODES)}, got {mode!r}")
        if not max_delay >= 0:
            raise ConfigError(f"--max-delay must be 0 ms or more, got {max_delay * 1000:g} ms")
        if max_held < 1:
            raise ConfigError(f"the frame ring must hold at least one frame, got {max_held}")
        self.mode = mode
        self.clock = clock
        self.hold_limit = max(hold_limit, max_delay if mode == "auto" else 0.0)
        self.cap = min(max_delay, self.hold_limit) if mode == "auto" else self.hold_limit
        self.flow = (mode != "off") if flow is None else flow
        self.max_held = max_held
        self.quantile = quantile
        self.blend = blend
        self.chain = chain
        self._warper = warper if warper is not None else (FlowWarper() if self.flow else None)
        self._history = max_held + 64
        self._grays: dict[int, np.ndarray] = {}  # frame index -> prepared small gray (recent frames)
        self._flows: dict[tuple[int, int], np.ndarray] = {}  # (src, dst) -> flow between them
        self._chains: dict[tuple[int, int], np.ndarray] = {}  # (mask's frame, frame) -> moved logits
        self._held: deque[_Held] = deque()
        self._results: dict[int, _Stored] = {}
        self._order: list[int] = []  # indices of stored results, sorted
        self._inflight: dict[int, float] = {}  # submitted frame index -> submission time
        self._newest: Frame | None = None
        self._last_submitted = -1
        self._ready_delays: deque[float] = deque(maxlen=window)
        self._delays: deque[float] = deque(maxlen=600)
        self._recent_sources: deque[str] = deque(maxlen=window)
        self.target_delay = 0.0
        self.steady = steady
        self.headroom = headroom
        self._window = window
        self._below = 0  # steady: frames in a row whose percentile was well below the delay held
        self.counters = _Counters()

    # ------------------------------------------------------------------ feeding
    def push(self, frame: Frame) -> None:
        """A newly captured frame (in capture order)."""
        self._newest = frame
        self._held.append(_Held(frame))
        if self.flow and self._warper is not None:
            self._grays[frame.index] = self._warper.prepare(frame.image)
            _bound(self._grays, self._history)
        while len(self._held) > self.max_held:
            self._held.popleft()
            self.counters.dropped += 1

    def take_submission(self, busy: bool) -> Frame | None:
        """The frame to give the tracker now, if any: the newest captured one when the tracker is free.

        Args:
            busy: The tracker's :attr:`AsyncTracker.busy`.
        """
        frame = self._newest
        if busy or frame is None or frame.index <= self._last_submitted:
            return None
        self._last_submitted = frame.index
        self._inflight[frame.index] = self.clock()
        while len(self._inflight) > 4:  # results that never came (a tracker restart): forget the oldest
            self._inflight.pop(min(self._inflight))
        self.counters.submitted += 1
        return frame

    def add_result(self, result: MaskResult) -> None:
        """A tracker result (stamped with the clock on arrival).

        A tracker answers in submission order, so frames submitted before this one and still
        unanswered never will be (a remote tracker may drop them): nothing waits for them any more.
        """
        for index in [i for i in self._inflight if i <= result.frame_index]:
            del self._inflight[index]
        if result.frame_index not in self._results:
            bisect.insort(self._order, result.frame_index)
        self._results[result.frame_index] = _Stored(result, self.clock())
        self.counters.results += 1
        self._prune()

    # ------------------------------------------------------------------ output
    def pop_ready(self, now: float) -> list[Keyed]:
        """The frames due at ``now``, in capture order, each with the mask that keys it."""
        out: list[Keyed] = []
        if self.mode == "off":
            while self._held:
                out.append(self._release_off(self._held.popleft().frame, now))
            return out
        self._mark_ready(now)
        while self._held:
            head = self._held[0]
            ts = head.frame.timestamp
            if head.ready_at is not None:
                due = max(head.ready_at, ts + min(self.target_delay, self.cap))
            else:
                due = ts + self.cap
            if now + 1e-9 < due:
                break
            self._held.popleft()
            out.append(self._release(head, now))
        self._prune()
        return out

    def next_deadline(self) -> float | None:
        """When the oldest held frame falls due without any new event (None: nothing held)."""
        if not self._held:
            return None
        head = self._held[0]
        ts = head.frame.timestamp
        if self.mode == "off":
            return ts
        if head.ready_at is not None:
            return max(head.ready_at, ts + min(self.target_delay, self.cap))
        return ts + self.cap

    def flush(self, now: float) -> list[Keyed]:
        """Release every held frame at once with the best mask at hand (stopping, end of stream)."""
        if self.mode == "off":
            return self.pop_ready(now)
        self._mark_ready(now)
        out = []
        while self._held:
            out.append(self._release(self._held.popleft(), now))
        self._prune()
        return out

    def forget_masks(self, before: int | None = None) -> None:
        """Forget the masks of frames before index ``before`` (all masks with None).

        Call it when the subject changes (a re-selection, a tracker reset) with the index of the
        first frame tracked for the new subject, so that no held frame is keyed with the old
        subject's mask. Frames still held are then keyed with the new masks, or none.
        """
        drop = [i for i in self._order if before is None or i < before]
        for index in drop:
            del self._results[index]
        self._order = [i for i in self._order if i not in drop]
        self._chains = {k: v for k, v in self._chains.items() if k[0] in self._results}

    @property
    def held(self) -> int:
        """Frames held now."""
        return len(self._held)

    @property
    def stored_results(self) -> int:
        """Tracker results kept now (bounded by the held frames that may still need them)."""
        return len(self._results)

    # ------------------------------------------------------------------ stats
    def mode_in_force(self) -> str:
        """What the scheduler is doing now: ``off``, ``off+flow``, ``own`` (waiting for each frame's
        own mask), ``nearest`` (nearest tracked frame's mask by flow) or ``capped`` (at the cap)."""
        if self.mode == "off":
            return "off+flow" if self.flow else "off"
        if not self._recent_sources:
            return "own"
        own = sum(s == "own" for s in self._recent_sources) / len(self._recent_sources)
        if own >= 0.9:
            return "own"
        if self.target_delay >= self.cap - 1e-6:
            return "capped"
        return "nearest"

    def stats(self) -> dict[str, Any]:
        """Counters and the added delay (ms) for the status line and the summary."""
        c = self.counters
        delays = np.asarray(self._delays, dtype=np.float64) * 1000.0
        return {
            "sync": self.mode,
            "sync_in_force": self.mode_in_force(),
            "delay_ms_p50": percentile(delays, 50),
            "delay_ms_p95": percentile(delays, 95),
            "target_delay_ms": self.target_delay * 1000.0,
            "own_mask_share": c.sources["own"] / c.out if c.out else 0.0,
            "sources": dict(c.sources),
            "frames_out": c.out,
            "sync_dropped": c.dropped,
            "held": len(self._held),
        }

    # ------------------------------------------------------------------ internals
    def _neighbours(self, index: int) -> tuple[_Stored | None, _Stored | None]:
        """The stored results just before and just after ``index`` (exclusive)."""
        pos = bisect.bisect_left(self._order, index)
        before = self._results[self._order[pos - 1]] if pos > 0 else None
        if pos < len(self._order) and self._order[pos] == index:
            pos += 1
        after = self._results[self._order[pos]] if pos < len(self._order) else None
        return before, after

    def _next_tracked_bound(self, index: int) -> int:
        """A lower bound on the index of the next tracked frame after ``index``."""
        later = [i for i in self._inflight if i > index]
        if later:
            return min(later)
        newest = self._newest.index if self._newest is not None else index
        return max(newest, index + 1)

    def _mark_ready(self, now: float) -> None:
        """Stamp held frames whose preferred mask (own, or the nearest tracked frame's) is at hand."""
        for h in self._held:
            if h.ready_at is not None:
                continue
            i = h.frame.index
            own = self._results.get(i)
            if own is not None:
                h.ready_at = max(h.frame.timestamp, min(now, own.arrived))
                continue
            if i in self._inflight:
                continue  # its own mask is coming
            before, after = self._neighbours(i)
            d_before = i - before.result.frame_index if before is not None else math.inf
            if after is not None:
                d_after = after.result.frame_index - i
                best = before if d_before <= d_after else after
                h.ready_at = max(h.frame.timestamp, min(now, max(best.arrived, after.arrived)))  # type: ignore[union-attr]
                continue
            bound = self._next_tracked_bound(i) - i
            if before is not None and d_before <= bound:
                h.ready_at = max(h.frame.timestamp, min(now, before.arrived))

    def _release(self, held: _Held, now: float) -> Keyed:
        frame = held.frame
        ready_delay = (held.ready_at if held.ready_at is not None else now) - frame.timestamp
        self._ready_delays.append(min(ready_delay, self.cap))
        wanted = percentile(self._ready_delays, self.quantile)
        self.target_delay = self._steady_delay(wanted) if self.steady else wanted
        keyed = self._key(frame, now)
        self._count(keyed)
        return keyed

    def _steady_delay(self, wanted: float) -> float:
        """The playout delay in steps (``steady``): up at once, down only when it has been too long for a while."""
        held = self.target_delay
        if wanted > held:
            self._below = 0
            return min(wanted + self.headroom, self.cap)
        if wanted < held - 2 * self.headroom:
            self._below += 1
            if self._below >= self._window:
                self._below = 0
                return wanted + self.headroom
        else:
            self._below = 0
        return held

    def _key(self, frame: Frame, now: float) -> Keyed:
        i = frame.index
        delay = now - frame.timestamp
        own = self._results.get(i)
        if own is not None:
            return Keyed(
                frame, own.result.logits, "own" if own.result.logits is not None else "none", delay, i, own.result
            )
        before, after = self._neighbours(i)
        if before is None and after is None:
            return Keyed(frame, None, "none", delay)
        d_before = i - before.result.frame_index if before is not None else math.inf
        d_after = after.result.frame_index - i if after is not None else math.inf
        nearest = before if d_before <= d_after else after
        assert nearest is not None
        if (
            self.blend
            and self.flow
            and before is not None
            and after is not None
            and before.result.logits is not None
            and after.result.logits is not None
            and before.result.logits.shape == after.result.logits.shape
        ):
            a = self._moved(before, frame)
            b = self._moved(after, frame)
            wa = d_after / (d_before + d_after)
            logits = (wa * a + (1.0 - wa) * b).astype(np.float32)
            return Keyed(frame, logits, "flow", delay, nearest.result.frame_index, nearest.result)
        if nearest.result.logits is None:
            return Keyed(frame, None, "none", delay, nearest.result.frame_index, nearest.result)
        source: Source = "flow" if self._can_move(nearest) else "newest"
        return Keyed(frame, self._moved(nearest, frame), source, delay, nearest.result.frame_index, nearest.result)

    def _can_move(self, stored: _Stored) -> bool:
        return self.flow and self._warper is not None and stored.result.frame_index in self._grays

    def _flow(self, src: int, dst: int) -> np.ndarray:
        key = (src, dst)
        flow = self._flows.get(key)
        if flow is None:
            assert self._warper is not None
            flow = self._flows[key] = self._warper.flow(self._grays[src], self._grays[dst])
            _bound(self._flows, 32)
        return flow

    def _moved(self, stored: _Stored, frame: Frame) -> np.ndarray:
        """The stored mask moved onto ``frame`` (frame by frame through the recent frames when chaining)."""
        logits = stored.result.logits
        assert logits is not None
        src, dst = stored.result.frame_index, frame.index
        if src == dst or not self._can_move(stored) or dst not in self._grays:
            return logits
        assert self._warper is not None
        if not self.chain:
            return self._warper.apply(logits, self._flow(src, dst))
        step = 1 if dst > src else -1
        path = [k for k in range(src + step, dst, step) if k in self._grays] + [dst]
        at, current = src, logits
        for pos in range(len(path) - 1, -1, -1):  # resume from the furthest step already computed
            hit = self._chains.get((src, path[pos]))
            if hit is not None:
                at, current, path = path[pos], hit, path[pos + 1 :]
                break
        for k in path:
            current = self._warper.apply(current, self._flow(at, k))
            self._chains[(src, k)] = current
            at = k
        _bound(self._chains, 16)
        return current

    def _release_off(self, frame: Frame, now: float) -> Keyed:
        delay = now - frame.timestamp
        if not self._order:
            keyed = Keyed(frame, None, "none", delay)
        else:
            newest = self._results[self._order[-1]]
            r = newest.result
            if r.logits is None:
                keyed = Keyed(frame, None, "none", delay, r.frame_index, r)
            elif r.frame_index == frame.index:
                keyed = Keyed(frame, r.logits, "own", delay, r.frame_index, r)
            elif self._can_move(newest):
                keyed = Keyed(frame, self._moved(newest, frame), "flow", delay, r.frame_index, r)
            else:
                keyed = Keyed(frame, r.logits, "newest", delay, r.frame_index, r)
        self._count(keyed)
        self._prune()
        return keyed

    def _count(self, keyed: Keyed) -> None:
        self.counters.out += 1
        self.counters.sources[keyed.source] += 1
        self._recent_sources.append(keyed.source)
        self._delays.append(keyed.delay)

    def _prune(self) -> None:
        """Forget results no held frame can use: keep the newest, and everything from the last
        result before the oldest held frame onwards."""
        if len(self._order) <= 1:
            return
        if self._held:
            oldest = self._held[0].frame.index
            pos = bisect.bisect_right(self._order, oldest) - 1  # last result at or before the oldest
            keep_from = max(0, pos)
        else:
            keep_from = len(self._order) - 1
        keep_from = min(keep_from, len(self._order) - 1)
        for index in self._order[:keep_from]:
            del self._results[index]
        del self._order[:keep_from]


def _bound(cache: dict[Any, Any], size: int) -> None:
    """Drop the oldest entries of an insertion-ordered dict beyond ``size``."""
    while len(cache) > size:
        cache.pop(next(iter(cache)))
