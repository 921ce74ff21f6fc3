"""The model worker of ``greencam serve``: one SAM 2 model, one thread, one batched step for all sessions.

Each session keeps only the newest decoded frame of its camera (older ones are dropped and
counted); every worker step takes the newest frame of every session that has one, runs the image
encoder on them as one batch, and then memory attention, mask decoder and memory encoder once for
every session whose memory bank is full (:class:`~greenscreen_cam.batched.SessionBatch`: the banks
stacked along the batch dimension, padded to a bucket of 1, 2, 4, 8 or 16 rows). Sessions being
prompted or still filling their bank run their own
:class:`~greenscreen_cam.segmenter.StreamingTracker` step beside it (all trackers share the one
model). The worker knows sessions only by id: it calls back with each mask message, on the
event loop it was started with.

The per-session slots are not :class:`~greenscreen_cam.core.LatestSlot`: the worker waits for a
frame in *any* session, so all slots share one condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenscreen_cam.errors import LinkProtocolError, PromptError
from greenscreen_cam.link.protocol import (
    STATE_LOST,
    STATE_NAMES,
    STATE_TRACKING,
    STATE_WAITING,
    encode_mask,
    parse_prompt,
    probability_u8,
)

if TYPE_CHECKING:
    import numpy as np

    from greenscreen_cam.batched import SessionBatch
    from greenscreen_cam.config import ModelSettings
    from greenscreen_cam.prompt import Prompt
    from greenscreen_cam.segmenter import StreamingTracker, TrackResult

EventFn = Callable[[str], None]
DeliverFn = Callable[[bytes, str], None]
"""Called on the loop with one binary mask message and its state name."""
ErrorFn = Callable[[str], None]
"""Called on the loop with one error line for the session's client."""


def load_serving_model(s: ModelSettings, *, random_weights: bool = False) -> tuple[Any, str, str, int]:
    """Load the model as ``s`` says, through the tracker backend registry: ``(net, name, device, resolution)``.

    The same factory as ``greencam start`` and ``greencam bench``
    (:func:`greenscreen_cam.tracking.open_model`); the worker's stacked step needs SAM 2's own
    network, so only the ``sam2`` backend is asked. With ``random_weights``, exactly the weights of
    ``greencam start --random-weights`` (seed 0, through the real loader) instead of a checkpoint.
    """
    from greenscreen_cam import tracking

    loaded = tracking.open_model(s, random_weights=random_weights, backend="sam2")
    return loaded.net, loaded.name, loaded.device, loaded.resolution


def track_batch(
    trackers: list[StreamingTracker],
    images: list[np.ndarray],
    prompts: list[Prompt | None],
    *,
    batch: bool = True,
    stacked: SessionBatch | None = None,
) -> list[TrackResult | PromptError]:
    """One frame for each of several trackers that share one model.

    Args:
        trackers: One :class:`StreamingTracker` per session, all over the same model.
        images: Each session's newest frame, RGB uint8 ``(H, W, 3)`` (sizes may differ).
        prompts: A prompt (in that frame's pixels) to make it a conditioning frame, or None to track.
        batch: Run the image encoder on all frames as one batch; False runs it frame by frame.
        stacked: Run every full-bank session's memory attention, decoder and memory encoder in one
            batched step (keyed by tracker); None runs each tracker's own step.

    Returns:
        Per session its :class:`TrackResult`, or the PromptError its step raised.
    """
    import torch

    pre = [t.preprocess(img) for t, img in zip(trackers, images, strict=True)]
    if batch and len(pre) > 1:
        encoded = trackers[0].encode(torch.cat(pre, dim=0))
    else:
        encoded = [t.encode(p)[0] for t, p in zip(trackers, pre, strict=True)]
    if stacked is not None:
        return stacked.track(
            [
                (t, t, enc, img.shape[:2], prompt)
                for t, enc, img, prompt in zip(trackers, encoded, images, prompts, strict=True)
            ]
        )
    out: list[TrackResult | PromptError] = []
    for t, enc, img, prompt in zip(trackers, encoded, images, prompts, strict=True):
        try:
            out.append(t.step_encoded(enc, img.shape[:2], prompt))
        except PromptError as e:
            out.append(e)
    return out


@dataclass
class _Entry:
    """One session as the worker sees it. Fields after ``error`` are guarded by the worker's lock."""

    tracker: StreamingTracker
    deliver: DeliverFn
    error: ErrorFn
    slot: tuple[Any, int] | None = None
    prompt: dict[str, Any] | None = None
    reset: bool = False
    seq: int = 0


class ModelWorker:
    """The shared model and the thread that steps every session's newest frame through it.

    Args:
        model: A loaded SAM 2 model (``SAM2Base``), or None for a worker that is never started (tests).
        model_name: Its registry name (``tiny``...), for ``/health``.
        device: Its torch device.
        resolution: Its input size in pixels.
        batch: Run the image encoder on all sessions' frames as one batch, and every full-bank
            session's memory attention, decoder and memory encoder in one stacked step (False: one by one).
        captured: Replay the stacked step as one CUDA graph per bucket (CUDA only).
        on_event: One line per event (a failed step).

    ``step_times`` (and so ``/health``'s ``step_ms`` and ``--min-fps`` admission) holds, per bucket,
    the measured wall time of worker steps in which every session ran in the stacked step; until a
    bucket has one, steps with sessions still filling their bank stand in (``fill_times``, per
    session count).
    """

    def __init__(
        self,
        model: Any,
        *,
        model_name: str,
        device: str,
        resolution: int,
        batch: bool = True,
        captured: bool = False,
        on_event: EventFn | None = None,
    ) -> None:
        from greenscreen_cam import models
        from greenscreen_cam.batched import SessionBatch

        self.model = model
        self.model_name = model_name
        self.device = device
        self.resolution = resolution
        self.batch = batch
        self.autocast = models.autocast_dtype(device)
        self.on_event: EventFn = on_event or (lambda line: None)
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._retired: list[_Entry] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stacked = (
            SessionBatch(model, autocast=self.autocast, captured=captured) if batch and model is not None else None
        )
        self.step_times: dict[int, float] = {}
        """EWMA of the wall time in seconds of fully stacked worker steps, per bucket (batch=False: per session count)."""
        self.fill_times: dict[int, float] = {}
        """EWMA of the other steps' wall time, per session count."""
        self.steps = 0

    # -------------------------------------------------------------- sessions (loop side)
    def add(self, sid: str, deliver: DeliverFn, error: ErrorFn) -> None:
        """Give session ``sid`` its own tracker over the shared model."""
        from greenscreen_cam.segmenter import StreamingTracker

        entry = _Entry(StreamingTracker(self.model, autocast=self.autocast), deliver, error)
        with self._cond:
            self._entries[sid] = entry

    def remove(self, sid: str) -> None:
        """Forget session ``sid``; its tracker's memory is freed on the worker thread."""
        with self._cond:
            entry = self._entries.pop(sid, None)
            if entry is not None:
                entry.slot = None
                self._retired.append(entry)
                self._cond.notify()

    def put_frame(self, sid: str, frame: Any, tag: int) -> bool:
        """Make ``frame`` (an ``av.VideoFrame`` with RTP tag ``tag``) the session's newest; True if one was dropped."""
        with self._cond:
            entry = self._entries.get(sid)
            if entry is None:
                return False
            dropped = entry.slot is not None
            entry.slot = (frame, tag)
            self._cond.notify()
            return dropped

    def set_prompt(self, sid: str, msg: dict[str, Any] | None, *, reset: bool) -> None:
        """Apply a prompt message (or a reset) to the session's next frame."""
        with self._cond:
            entry = self._entries.get(sid)
            if entry is not None:
                entry.prompt, entry.reset = msg, reset

    # -------------------------------------------------------------- admission
    def measured_step_times(self) -> dict[int, float]:
        """What admission goes by, in seconds per step: ``step_times`` once a stacked step was measured,
        until then ``fill_times`` (steps with sessions still filling their bank, per session count)."""
        return dict(self.step_times or self.fill_times)

    def _key(self, sessions: int) -> int:
        """The ``step_times`` key a step of ``sessions`` sessions is measured under: its bucket when stacked."""
        from greenscreen_cam.batched import BUCKETS, bucket_for

        return bucket_for(sessions) if self.batch and sessions <= BUCKETS[-1] else sessions

    def predicted_fps(self, sessions: int) -> float | None:
        """Masks per second each of ``sessions`` sessions would get, from measured step times (None: unknown).

        A step pads to its bucket, so ``sessions`` costs what its bucket was measured at: a new
        camera that stays within the current bucket costs nothing more. A bucket not measured yet
        is scaled from the largest measured one below it (linearly: an upper bound where batching
        helps), or else takes the smallest measured one above it.
        """
        times = self.step_times or self.fill_times  # as measured_step_times(), keeping the identity test below
        if not times or sessions < 1:
            return None
        key = self._key(sessions) if times is self.step_times else sessions
        if key in times:
            t = times[key]
        elif any(k < key for k in times):
            n = max(k for k in times if k < key)
            t = times[n] * key / n
        else:
            t = times[min(times)]
        return 1.0 / t if t > 0 else None

    # -------------------------------------------------------------- lifecycle
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; mask messages are delivered on ``loop``."""
        self._loop = loop
        self._running = True
        self._thread = threading.Thread(target=self._work, name="greencam-serve-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for a running step)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None

    def release(self) -> None:
        """Drop the model and every tracker (frees GPU memory)."""
        with self._cond:
            self._entries.clear()
            self._retired.clear()
        self.model = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # -------------------------------------------------------------- worker thread
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(fn, *args)

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._retired and not any(e.slot for e in self._entries.values()):
                    self._cond.wait()
                if not self._running:
                    return
                retired, self._retired = self._retired, []
                jobs = []
                for e in self._entries.values():
                    if e.slot is None:
                        continue
                    frame, tag = e.slot
                    jobs.append((e, frame, tag, e.prompt, e.reset))
                    e.slot, e.prompt, e.reset = None, None, False
            for e in retired:
                if self.stacked is not None:
                    self.stacked.leave(e.tracker)
                with contextlib.suppress(Exception):
                    e.tracker.reset()  # frees the session's memory now, not at garbage collection
            if jobs:
                try:
                    self._step(jobs)
                except Exception as ex:  # noqa: BLE001 - keep serving the other sessions
                    self.on_event(f"model step failed: {type(ex).__name__}: {ex}")
                    for e, *_ in jobs:
                        self._call(e.error, f"the server's model step failed ({type(ex).__name__})")

    def _waiting_mask(self, e: _Entry, tag: int) -> None:
        import numpy as np

        side = self.resolution // 4
        e.seq += 1
        msg = encode_mask(tag, e.seq, STATE_WAITING, 0.0, np.zeros((side, side), np.uint8))
        self._call(e.deliver, msg, STATE_NAMES[STATE_WAITING])

    def _step(self, jobs: list[tuple[_Entry, Any, int, dict[str, Any] | None, bool]]) -> None:
        """One worker step: the newest frame of every session with one, through the model."""
        active: list[tuple[_Entry, int, Any, Prompt | None]] = []
        for e, frame, tag, prompt_msg, reset in jobs:
            if reset:
                if self.stacked is not None:
                    self.stacked.leave(e.tracker)
                e.tracker.reset()
            image = frame.to_ndarray(format="rgb24")
            h, w = image.shape[:2]
            prompt = None
            if prompt_msg is not None:
                try:
                    prompt = parse_prompt(prompt_msg, w, h)
                except (LinkProtocolError, PromptError) as ex:
                    self._call(e.error, str(ex))
            if prompt is None and not e.tracker.is_prompted:
                self._waiting_mask(e, tag)
                continue
            active.append((e, tag, image, prompt))
        if not active:
            return
        start = time.perf_counter()
        results = track_batch(
            [e.tracker for e, *_ in active],
            [image for _, _, image, _ in active],
            [prompt for *_, prompt in active],
            batch=self.batch,
            stacked=self.stacked,
        )
        for (e, tag, _, _), result in zip(active, results, strict=True):
            if isinstance(result, PromptError):
                self._call(e.error, str(result))
                continue
            state = STATE_TRACKING if result.visible else STATE_LOST
            e.seq += 1
            msg = encode_mask(tag, e.seq, state, result.object_score, probability_u8(result.low_res_numpy()))
            self._call(e.deliver, msg, STATE_NAMES[state])
        elapsed = time.perf_counter() - start
        n = len(active)
        stacked = self.stacked
        if stacked is None:
            times, key = self.step_times, n
        elif all(e.tracker in stacked for e, *_ in active):
            times, key = self.step_times, stacked.bucket
        else:
            times, key = self.fill_times, n
        old = times.get(key)
        times[key] = elapsed if old is None else 0.8 * old + 0.2 * elapsed
        self.steps += 1
