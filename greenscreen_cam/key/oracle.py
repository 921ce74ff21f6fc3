"""The oracle benchmark of frame-accurate keying (``greencam bench FRAMES_DIR --oracle MASKS_DIR``).

It needs no checkpoint: a folder of frames is replayed as a camera at ``fps`` on a
*simulated* clock (deterministic, much faster than real time) through the real
:class:`~greenscreen_cam.key.sync.KeyScheduler` and optical-flow code, with an
:class:`OracleTracker` that answers each frame it is given with that frame's
ground-truth mask, ``tracker_ms`` of simulated time later. For every output
frame the mask that keyed it (thresholded at the compositor's 0.5 probability,
at full frame resolution) is compared with the frame's own ground truth.

The masks folder holds one PNG per frame with the frame's base name
(0 = background, > 127 = subject), like ``shared/data/davis/<seq>/masks``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from greenscreen_cam.core import Frame, LatestSlot, MaskResult, percentile
from greenscreen_cam.errors import ConfigError, SourceError
from greenscreen_cam.key.compositor import upsample_union
from greenscreen_cam.key.sync import AsyncTracker, Keyed, KeyScheduler
from greenscreen_cam.media.sources import IMAGE_SUFFIXES

BENCH_MODES: tuple[str, ...] = ("off", "off+flow", "on", "auto")
ORACLE_LOGIT = 10.0


class SimClock:
    """A settable clock for simulations: calling it returns :attr:`now` (seconds)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class OracleTracker:
    """An :class:`~greenscreen_cam.key.sync.AsyncTracker` that returns ground truth after a fixed time.

    Args:
        masks: Per frame index, the ``(H, W)`` bool ground truth (True = subject).
        clock: The simulated clock.
        tracker_s: Simulated seconds one frame takes.
        jitter: Each frame takes ``tracker_s * (1 + u)``, ``u`` uniform in ``[-jitter, jitter]``
            from a seeded generator (deterministic).
        scale: Size of the returned logits relative to the frame (1.0 = full resolution).

    Logits are ``+ORACLE_LOGIT`` on the subject and ``-ORACLE_LOGIT`` elsewhere (float32).
    """

    def __init__(
        self,
        masks: Sequence[np.ndarray],
        clock: SimClock,
        tracker_s: float,
        *,
        scale: float = 1.0,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        if tracker_s < 0:
            raise ConfigError(f"--tracker-ms must be 0 or more, got {tracker_s * 1000:g}")
        if not 0.0 <= jitter < 1.0:
            raise ConfigError(f"the tracker jitter must be in [0, 1), got {jitter:g}")
        self.jitter = jitter
        self._rng = np.random.default_rng(seed)
        self.masks = masks
        self.clock = clock
        self.tracker_s = tracker_s
        self.scale = scale
        self._current: tuple[Frame, float] | None = None  # frame, finish time
        self._pending: LatestSlot[Frame] = LatestSlot()  # the frame to track next (replaced, never queued)
        self._done: list[MaskResult] = []
        self.tracked = 0

    @property
    def dropped(self) -> int:
        """Frames replaced in the pending slot before tracking started."""
        return self._pending.dropped

    def _logits(self, index: int) -> np.ndarray:
        mask = self.masks[index]
        logits = np.where(mask, ORACLE_LOGIT, -ORACLE_LOGIT).astype(np.float32)
        if self.scale != 1.0:
            h, w = mask.shape
            size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            logits = cv2.resize(logits, size, interpolation=cv2.INTER_AREA)
        return logits

    def _advance(self) -> None:
        now = self.clock()
        while self._current is not None and self._current[1] <= now + 1e-12:
            frame, finish = self._current
            self._done.append(MaskResult(frame.index, frame.timestamp, self._logits(frame.index), True, 10.0))
            self.tracked += 1
            self._current = None
            if (pending := self._pending.take_nowait()) is not None:
                self._current = (pending, finish + self._duration(pending))

    def _duration(self, frame: Frame) -> float:
        """Simulated seconds ``frame`` takes (``inf``: the tracker stalls on it for good)."""
        if self.jitter == 0.0:
            return self.tracker_s
        return self.tracker_s * (1.0 + float(self._rng.uniform(-self.jitter, self.jitter)))

    def next_done(self) -> float | None:
        """Simulated time at which the frame being tracked completes (None: idle, or stalled for good)."""
        if self._current is None or not math.isfinite(self._current[1]):
            return None
        return self._current[1]

    def submit(self, frame: Frame) -> None:
        self._advance()
        if self._current is None:
            self._current = (frame, self.clock() + self._duration(frame))
            return
        self._pending.put(frame)

    def poll(self) -> list[MaskResult]:
        self._advance()
        done, self._done = self._done, []
        return done

    @property
    def busy(self) -> bool:
        self._advance()
        return self._current is not None or self._pending.pending


def _natural_key(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def load_sequence(frames_dir: Path, masks_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (``(H, W, 3)`` uint8 RGB) and their ground truth (``(H, W)`` bool), in natural order.

    Raises:
        SourceError: a missing folder, no images, a frame without a mask, or mismatched sizes.
    """
    frames_dir, masks_dir = Path(frames_dir), Path(masks_dir)
    for folder, what in ((frames_dir, "frames"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise SourceError(f"{what} folder not found: {folder}")
    paths = sorted((p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not paths:
        raise SourceError(f"no images (.jpg/.png) in {frames_dir}")
    frames, masks = [], []
    for p in paths:
        m = masks_dir / f"{p.stem}.png"
        if not m.is_file():
            raise SourceError(f"no mask for frame {p.name}: expected {m}")
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            raise SourceError(f"cannot read {p if image is None else m}")
        if mask.shape != image.shape[:2]:
            raise SourceError(
                f"mask {m.name} is {mask.shape[1]}x{mask.shape[0]}, its frame {image.shape[1]}x{image.shape[0]}"
            )
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        masks.append(mask > 127)
    return frames, masks


def iou(logits: np.ndarray | None, truth: np.ndarray) -> float:
    """IoU of the keyed subject (logits > 0, i.e. probability > 0.5, at the frame's size) with ``truth``.

    ``(n, h, w)`` logits are n subjects: each is upsampled, then they meet (:func:`upsample_union`).

    Two empty masks agree perfectly (1.0); no logits means an empty mask.
    """
    size = (truth.shape[0], truth.shape[1])
    pred = np.zeros_like(truth) if logits is None else upsample_union(logits, size) > 0.0
    union = np.count_nonzero(pred | truth)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & truth) / union)


def simulate(
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    mode: str,
    tracker_ms: float,
    fps: float,
    max_delay_ms: float = 300.0,
    hold_limit_ms: float = 1000.0,
    scale: float = 1.0,
    jitter: float = 0.0,
    **scheduler_options: Any,
) -> list[Keyed]:
    """Replay ``frames`` as a camera at ``fps`` through a :class:`KeyScheduler` and an oracle tracker.

    Args:
        frames: ``(H, W, 3)`` uint8 RGB frames.
        masks: Their ``(H, W)`` bool ground truth.
        mode: ``off``, ``off+flow``, ``on`` or ``auto``.
        tracker_ms: Simulated milliseconds per tracked frame.
        fps: Camera rate; frame ``i`` is captured at ``i / fps`` s.
        max_delay_ms: ``auto``'s cap on the added delay.
        hold_limit_ms: ``on``'s bound on the added delay.
        scale: Oracle logits' size relative to the frame.
        jitter: Relative spread of the tracker's time per frame (seeded, deterministic).
        **scheduler_options: Passed to :class:`KeyScheduler`.

    Returns:
        Every output frame in output order (all frames, unless the scheduler dropped some).
    """
    if mode not in BENCH_MODES:
        raise ConfigError(f"unknown benchmark mode {mode!r}; choose from {', '.join(BENCH_MODES)}")
    if not fps > 0:
        raise ConfigError(f"--fps must be above 0, got {fps:g}")
    clock = SimClock()
    sync_mode, flow = ("off", mode == "off+flow") if mode.startswith("off") else (mode, None)
    scheduler = KeyScheduler(
        sync_mode,
        clock=clock,
        max_delay=max_delay_ms / 1000.0,
        hold_limit=hold_limit_ms / 1000.0,
        flow=flow,
        **scheduler_options,
    )
    tracker = OracleTracker(masks, clock, tracker_ms / 1000.0, scale=scale, jitter=jitter)
    return replay(frames, scheduler, tracker, clock, fps)


class SimTracker(AsyncTracker, Protocol):
    """An :class:`~greenscreen_cam.key.sync.AsyncTracker` on a simulated clock that says when it next completes."""

    def next_done(self) -> float | None:
        """Simulated time of the next completion (None: nothing will complete on its own)."""
        ...


def replay(
    frames: Sequence[np.ndarray],
    scheduler: KeyScheduler,
    tracker: SimTracker,
    clock: SimClock,
    fps: float,
    *,
    until: float | None = None,
    flush: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[Keyed]:
    """Drive ``scheduler`` and ``tracker`` like the live loop, with frame ``i`` captured at ``i / fps`` s.

    The clock jumps from event to event (a capture, a tracker completion, a frame falling due);
    at each event the loop does what the live loop does: collect results, push the new frame,
    give the tracker the frame the scheduler picks, and send the frames that are due.

    Args:
        frames: ``(H, W, 3)`` uint8 RGB frames.
        scheduler: The scheduler under test (built with ``clock=clock``).
        tracker: The simulated tracker (built with the same clock).
        clock: The simulated clock, advanced here.
        fps: Camera rate.
        until: Stop at this simulated time (as if the user quit), whatever is still in flight.
        flush: On stopping, hand out the frames still held (as a stopping loop does); False leaves
            them in the scheduler.
        on_step: Called after each event with the number of frames captured so far (e.g. to
            record the scheduler's state as the run goes).

    Returns:
        The output frames in output order.
    """
    n = len(frames)
    out: list[Keyed] = []
    i = 0
    for _ in range(20 * n + 1000):  # every step consumes at least one event; bounded for safety
        if i >= n and scheduler.held == 0:
            break
        events = [
            t for t in (i / fps if i < n else None, tracker.next_done(), scheduler.next_deadline()) if t is not None
        ]
        if not events:
            break
        if until is not None and min(events) > until:
            clock.now = max(clock.now, until)
            break
        clock.now = max(clock.now, min(events))
        for result in tracker.poll():
            scheduler.add_result(result)
        while i < n and i / fps <= clock.now + 1e-12:
            scheduler.push(Frame(frames[i], i, i / fps))
            i += 1
        submission = scheduler.take_submission(tracker.busy)
        if submission is not None:
            tracker.submit(submission)
        out.extend(scheduler.pop_ready(clock.now))
        if on_step is not None:
            on_step(i)
    if flush:
        out.extend(scheduler.flush(clock.now))
    return out


def summarize(keyed: Sequence[Keyed], masks: Sequence[np.ndarray]) -> dict[str, Any]:
    """Mean/min IoU, added delay p50/p95 (ms), own-mask share and output gaps of one simulated run.

    ``mean_iou_after_first_mask`` leaves out the frames sent before any mask existed (the key colour
    alone, IoU 0), which only ``off`` sends.
    """
    ious = np.array([iou(k.logits, masks[k.frame.index]) for k in keyed], dtype=np.float64)
    delays = np.array([k.delay for k in keyed], dtype=np.float64) * 1000.0
    release = np.array([k.frame.timestamp + k.delay for k in keyed], dtype=np.float64)
    gaps = np.diff(release) * 1000.0 if len(release) > 1 else np.zeros(1)
    sources = {s: sum(k.source == s for k in keyed) for s in ("own", "flow", "newest", "none")}
    first = next((n for n, k in enumerate(keyed) if k.result is not None), len(keyed))
    steady = ious[first:]
    return {
        "mean_iou": round(float(ious.mean()), 4) if ious.size else 0.0,
        "min_iou": round(float(ious.min()), 4) if ious.size else 0.0,
        "delay_ms_p50": round(percentile(delays, 50), 1),
        "delay_ms_p95": round(percentile(delays, 95), 1),
        "delay_ms_max": round(float(delays.max()), 1) if delays.size else 0.0,
        "own_mask_share": round(sources["own"] / len(keyed), 4) if keyed else 0.0,
        "mean_iou_after_first_mask": round(float(steady.mean()), 4) if steady.size else 0.0,
        "frames_before_first_mask": first,
        "output_gap_ms_max": round(float(gaps.max()), 1),
        "frames_out": len(keyed),
        "sources": sources,
    }


def run_oracle_bench(
    frames_dir: str | Path,
    masks_dir: str | Path,
    *,
    tracker_ms: float,
    fps: float,
    modes: Sequence[str] = BENCH_MODES,
    max_delay_ms: float = 300.0,
    hold_limit_ms: float = 1000.0,
    scale: float = 1.0,
    jitter: float = 0.0,
) -> dict[str, Any]:
    """The oracle benchmark: every mode on one sequence.

    Args:
        frames_dir: Folder of frames (JPEG/PNG, natural order).
        masks_dir: Folder of ground-truth PNGs with the frames' base names.
        tracker_ms: Simulated milliseconds the tracker takes per frame.
        fps: Camera rate to replay the frames at.
        modes: Any of ``off``, ``off+flow``, ``on``, ``auto``.
        max_delay_ms: ``auto``'s cap on the added delay.
        hold_limit_ms: ``on``'s bound on the added delay.
        scale: Oracle logits' size relative to the frame (1.0: full resolution).
        jitter: Relative spread of the tracker's time per frame (seeded, deterministic); 0.2 means
            each frame takes ``tracker_ms`` +/- up to 20 %.

    Returns:
        ``{"modes": {mode: {"mean_iou", "min_iou", "delay_ms_p50", "delay_ms_p95", "own_mask_share",
        ...}}, "frames": n, "tracker_ms": ..., "fps": ..., "max_delay_ms": ...}``.

    Raises:
        SourceError: unreadable or mismatched folders.
        ConfigError: a bad mode, rate or tracker time.
    """
    if not math.isfinite(tracker_ms) or tracker_ms < 0:
        raise ConfigError(f"--tracker-ms must be 0 or more, got {tracker_ms:g}")
    for mode in modes:
        if mode not in BENCH_MODES:
            raise ConfigError(f"unknown benchmark mode {mode!r}; choose from {', '.join(BENCH_MODES)}")
    frames, masks = load_sequence(Path(frames_dir), Path(masks_dir))
    results = {}
    for mode in modes:
        keyed = simulate(
            frames,
            masks,
            mode=mode,
            tracker_ms=tracker_ms,
            fps=fps,
            max_delay_ms=max_delay_ms,
            hold_limit_ms=hold_limit_ms,
            scale=scale,
            jitter=jitter,
        )
        results[mode] = summarize(keyed, masks)
    return {
        "kind": "oracle",
        "modes": results,
        "frames": len(frames),
        "tracker_ms": tracker_ms,
        "fps": fps,
        "max_delay_ms": max_delay_ms,
        "jitter": jitter,
    }


def print_oracle(result: dict[str, Any], console: Any) -> None:
    """Print a :func:`run_oracle_bench` result as a table on a Rich console."""
    from rich.table import Table

    table = Table(
        title=(
            f"oracle tracker {result['tracker_ms']:g} ms/frame, camera {result['fps']:g} fps, "
            f"{result['frames']} frames, auto caps the delay at {result['max_delay_ms']:g} ms"
        )
    )
    for column in ("mode", "mean IoU", "min IoU", "delay p50 ms", "delay p95 ms", "own mask"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, stats in result["modes"].items():
        table.add_row(
            mode,
            f"{stats['mean_iou']:.3f}",
            f"{stats['min_iou']:.3f}",
            f"{stats['delay_ms_p50']:.0f}",
            f"{stats['delay_ms_p95']:.0f}",
            f"{100 * stats['own_mask_share']:.1f}%",
        )
    console.print(table)
