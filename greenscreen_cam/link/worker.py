"""The model worker of ``greencam serve``: one SAM 2 model, one thread, one batched step for all sessions.

Each session keeps only the newest decoded frame of its camera (older ones are dropped and
counted); every worker step takes the newest frame of every session that has one, runs the image
encoder on them as one batch, and then memory attention, mask decoder and memory encoder once for
every session whose memory bank is full (:class:`~greenscreen_cam.track.batched.SessionBatch`: the banks
stacked along the batch dimension, padded to a bucket of 1, 2, 4, 8 or 16 rows). Sessions being
prompted or still filling their bank run their own
:class:`~greenscreen_cam.track.segmenter.StreamingTracker` step beside it (all trackers share the one
model). The worker knows sessions only by id: it calls back with each mask message, on the
event loop it was started with.

A session may track several subjects (prompts with ``"add": true``, at most
:data:`~greenscreen_cam.track.multi.MAX_SUBJECTS`; ``"drop": n`` stops one): its first subject is
the tracker above, each further one a tracker of its own that steps after the batch on the same
image encoding (no second encoder run), and the session's mask is their union
(:func:`~greenscreen_cam.track.multi.union_result`), as the local :class:`~greenscreen_cam.track.multi.MultiTracker`
keys it: it goes down the link as one probability plane per subject, so that the client
upsamples each before they meet (the official predictor's order). A step's measured time includes
those extra steps.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from greenscreen_cam.errors import LinkProtocolError, PromptError
from greenscreen_cam.link.protocol import (
    STATE_LOST,
    STATE_NAMES,
    STATE_TRACKING,
    STATE_WAITING,
    encode_mask,
    parse_prompt,
    probability_u8,
    prompt_adds,
    prompt_drop,
)
from greenscreen_cam.track import tracking

if TYPE_CHECKING:
    import numpy as np

    from greenscreen_cam.config import ModelSettings
    from greenscreen_cam.track.batched import SessionBatch
    from greenscreen_cam.track.prompt import Prompt
    from greenscreen_cam.track.segmenter import Encoded, StreamingTracker, TrackResult

EventFn = Callable[[str], None]
DeliverFn = Callable[[bytes, str], None]
"""Called on the loop with one binary mask message and its state name."""
ErrorFn = Callable[[str], None]
"""Called on the loop with one error line for the session's client."""
PromptKind = Literal["new", "add", "drop"]
"""A queued prompt message: replaces every subject, adds one, or drops one."""


def load_serving_model(s: ModelSettings, *, random_weights: bool = False) -> tuple[Any, str, str, int]:
    """Load the model as ``s`` says, through the tracker backend registry: ``(net, name, device, resolution)``.

    The same factory as ``greencam start`` and ``greencam bench``
    (:func:`greenscreen_cam.track.tracking.open_model`); the worker's stacked step needs SAM 2's own
    network, so only the ``sam2`` backend is asked. With ``random_weights``, exactly the weights of
    ``greencam start --random-weights`` (seed 0, through the real loader) instead of a checkpoint.
    """
    loaded = tracking.open_model(s, random_weights=random_weights, backend="sam2")
    return loaded.net, loaded.name, loaded.device, loaded.resolution


def step_batch(
    trackers: list[StreamingTracker],
    encoded: list[Encoded],
    images: list[np.ndarray],
    prompts: list[Prompt | None],
    *,
    stacked: SessionBatch | None = None,
) -> list[TrackResult | PromptError]:
    """Memory attention, decoder and memory encoder for each session's frame already through :func:`encode_batch`.

    With ``stacked``, every full-bank session runs in one batched step (keyed by tracker); the
    others (and every session without it) run their tracker's own step.
    """
    if stacked is not None:
        return stacked.track(
            [
                (t, t, enc, img.shape[:2], prompt)
                for t, enc, img, prompt in zip(trackers, encoded, images, prompts, strict=True)
            ]
        )
    return tracking.step_encoded_batch(trackers, encoded, images, prompts)  # type: ignore[return-value]  # StreamingTracker answers TrackResults


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
    encoded = tracking.encode_batch(trackers, images, batch=batch)
    return step_batch(trackers, encoded, images, prompts, stacked=stacked)


@dataclass
class _Entry:
    """One session as the worker sees it. Fields from ``slot`` to ``subjects`` are guarded by the worker's lock.

    The first subject is ``tracker`` (the one that can run in the stacked step); every subject
    added after it (``"add": true``) has its own tracker in ``extras``, stepped on the same
    image encoding, and the session's mask is the union of all of them.
    """

    tracker: StreamingTracker
    deliver: DeliverFn
    error: ErrorFn
    slot: tuple[Any, int] | None = None
    prompts: list[tuple[dict[str, Any], PromptKind]] = field(default_factory=list)
    """Prompt messages for the next frame, each with its kind (a replacing ``"new"`` one is first)."""
    reset: bool = False
    subjects: int = 0
    """Subjects the session holds once its queued prompts are applied (what a new ``add`` or ``drop`` is checked against)."""
    seq: int = 0
    extras: list[StreamingTracker] = field(default_factory=list)
    """The trackers of the second and later subjects (worker thread only)."""

    def held(self) -> int:
        """Subjects the worker tracks for the session now (worker thread)."""
        return (1 if self.tracker.is_prompted else 0) + len(self.extras)

    def drop_extras(self) -> None:
        """Forget every subject but the first; their memory is freed now (worker thread)."""
        for t in self.extras:
            t.reset()
        self.extras = []


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
        from greenscreen_cam.track import models
        from greenscreen_cam.track.batched import SessionBatch
        from greenscreen_cam.track.engines import engine_for
        from greenscreen_cam.track.multi import MAX_SUBJECTS

        self.model = model
        self.model_name = model_name
        self.device = device
        self.resolution = resolution
        self.engine = engine_for(model) if model is not None else None
        """The OpenVINO engine (``--engine openvino``/``auto`` on a CPU): each session then steps on its own through
        it (one frame per encoder call, no stacked torch step); None: torch, batched as ``batch`` says."""
        self.batch = batch and self.engine is None
        self.autocast = models.autocast_dtype(device)
        self.on_event: EventFn = on_event or (lambda line: None)
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._retired: list[_Entry] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stacked = (
            SessionBatch(model, autocast=self.autocast, captured=captured) if self.batch and model is not None else None
        )
        self.step_times: dict[int, float] = {}
        """EWMA of the wall time in seconds of fully stacked worker steps, per bucket (batch=False: per session count)."""
        self.fill_times: dict[int, float] = {}
        """EWMA of the other steps' wall time, per session count."""
        self.steps = 0
        self.max_subjects = MAX_SUBJECTS
        """Subjects one session may track at once; one more ``add`` is refused."""

    # -------------------------------------------------------------- sessions (loop side)
    def add(self, sid: str, deliver: DeliverFn, error: ErrorFn) -> None:
        """Give session ``sid`` its own tracker over the shared model."""
        from greenscreen_cam.track.segmenter import StreamingTracker

        entry = _Entry(StreamingTracker(self.model, autocast=self.autocast, engine=self.engine), deliver, error)
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

    def set_prompt(self, sid: str, msg: dict[str, Any] | None) -> None:
        """Apply a prompt message, or None for a reset, to the session's next frame.

        A message with ``"add": true`` adds its subject to the session's others (the first
        subject when it has none); ``"drop": n`` stops tracking subject ``n`` (1-based, in the order
        they were selected; the next one becomes the first); any other prompt replaces them all,
        and a reset drops them all.

        Raises:
            PromptError: an ``add`` beyond ``max_subjects``, or a ``drop`` of a subject the session
                does not have; the session keeps its subjects.
            LinkProtocolError: a malformed ``add`` or ``drop``.
        """
        drop = prompt_drop(msg) if msg is not None else None
        add = msg is not None and drop is None and prompt_adds(msg)
        with self._cond:
            entry = self._entries.get(sid)
            if entry is None:
                return
            if msg is None:
                entry.prompts, entry.reset, entry.subjects = [], True, 0
            elif drop is not None:
                if drop > entry.subjects:
                    raise PromptError(f"no subject {drop} to drop: the session tracks {entry.subjects}")
                entry.prompts.append((msg, "drop"))
                entry.subjects -= 1
            elif add and entry.subjects > 0:
                if entry.subjects >= self.max_subjects:
                    raise PromptError(
                        f"already tracking {entry.subjects} subjects (the most is {self.max_subjects});"
                        " a plain prompt or a reset starts again"
                    )
                entry.prompts.append((msg, "add"))
                entry.subjects += 1
            else:
                entry.prompts, entry.reset, entry.subjects = [(msg, "new")], False, 1

    # -------------------------------------------------------------- admission
    def measured_step_times(self) -> dict[int, float]:
        """What admission goes by, in seconds per step: ``step_times`` once a stacked step was measured,
        until then ``fill_times`` (steps with sessions still filling their bank, per session count)."""
        return dict(self.step_times or self.fill_times)

    def _key(self, sessions: int) -> int:
        """The ``step_times`` key a step of ``sessions`` sessions is measured under: its bucket when stacked."""
        from greenscreen_cam.track.batched import BUCKETS, bucket_for

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

    @property
    def stopped_unexpectedly(self) -> bool:
        """True when the model thread was started and has died without :meth:`stop` (a replica's health check)."""
        thread = self._thread
        return thread is not None and not thread.is_alive()

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
                    jobs.append((e, frame, tag, e.prompts, e.reset))
                    e.slot, e.prompts, e.reset = None, [], False
            for e in retired:
                if self.stacked is not None:
                    self.stacked.leave(e.tracker)
                with contextlib.suppress(Exception):
                    e.tracker.reset()  # frees the session's memory now, not at garbage collection
                with contextlib.suppress(Exception):
                    e.drop_extras()
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

    def _prompts(
        self, e: _Entry, messages: list[tuple[dict[str, Any], PromptKind]], w: int, h: int
    ) -> tuple[Prompt | None, list[Prompt]]:
        """The session's queued prompt messages on a ``w x h`` frame: ``(prompt for the first subject, added subjects)``.

        A replacing prompt drops the extra subjects; an ``add`` with no subject left is the
        first; a ``drop`` forgets one subject (:meth:`_drop`). A message that does not fit the
        frame, an add beyond ``max_subjects`` or a drop of a subject not there is refused with its
        reason and changes nothing.
        """
        first: Prompt | None = None
        added: list[Prompt] = []
        for msg, kind in messages:
            try:
                if kind == "drop":
                    first = self._drop(e, int(msg["drop"]) - 1, first, added)
                    continue
                prompt = parse_prompt(msg, w, h)
                if kind == "add" and (first is not None or e.tracker.is_prompted):
                    held = 1 + len(e.extras) + len(added)
                    if held >= self.max_subjects:
                        raise PromptError(f"already tracking {held} subjects (the most is {self.max_subjects})")
                    added.append(prompt)
                else:
                    first, added = prompt, []
                    e.drop_extras()
            except (LinkProtocolError, PromptError) as ex:
                self._call(e.error, str(ex))
        return first, added

    def _drop(self, e: _Entry, index: int, first: Prompt | None, added: list[Prompt]) -> Prompt | None:
        """Forget subject ``index`` (0-based: the first, then ``extras``, then the ``added`` still to come).

        Dropping the first promotes the next subject: an extra tracker becomes the session's
        tracker (with its memory), or else the next added prompt becomes the first. Dropping the
        only subject leaves the session waiting for a prompt. ``added`` is changed in place; the
        prompt for the first subject is returned.
        """
        count = (1 if first is not None or e.tracker.is_prompted else 0) + len(e.extras) + len(added)
        if not 0 <= index < count:
            raise PromptError(f"no subject {index + 1} to drop: the session tracks {count}")
        if index > 0:
            if index - 1 < len(e.extras):
                e.extras.pop(index - 1).reset()  # its memory is freed now
            else:
                added.pop(index - 1 - len(e.extras))
            return first
        if self.stacked is not None:
            self.stacked.leave(e.tracker)
        e.tracker.reset()
        if first is None and e.extras:
            e.tracker = e.extras.pop(0)
            return None
        return added.pop(0) if added else None

    def _union(
        self, e: _Entry, first: TrackResult, encoded: Encoded, hw: tuple[int, int], added: list[Prompt]
    ) -> TrackResult:
        """The session's extra subjects (and ``added`` ones) on the first subject's encoding; the union mask."""
        from greenscreen_cam.track.multi import union_result
        from greenscreen_cam.track.segmenter import StreamingTracker

        results = [first] + [t.step_encoded(encoded, hw, None) for t in e.extras]
        for prompt in added:
            tracker = StreamingTracker(self.model, autocast=self.autocast, engine=self.engine)
            results.append(tracker.step_encoded(encoded, hw, prompt))
            e.extras.append(tracker)
        return union_result(results, first.frame_index, any(r.is_prompt_frame for r in results))

    def _step(self, jobs: list[tuple[_Entry, Any, int, list[tuple[dict[str, Any], PromptKind]], bool]]) -> None:
        """One worker step: the newest frame of every session with one, through the model.

        The first subject of every session runs in :func:`step_batch` (stacked when its bank is
        full); a session's other subjects then step on the same encoding, after the batch.
        """
        active: list[tuple[_Entry, int, Any, Prompt | None, list[Prompt]]] = []
        for e, frame, tag, messages, reset in jobs:
            if reset:
                if self.stacked is not None:
                    self.stacked.leave(e.tracker)
                e.tracker.reset()
                e.drop_extras()
            image = frame.to_ndarray(format="rgb24")
            h, w = image.shape[:2]
            prompt, added = self._prompts(e, messages, w, h)
            if prompt is None and not e.tracker.is_prompted:
                self._waiting_mask(e, tag)
                continue
            active.append((e, tag, image, prompt, added))
        try:
            if active:
                self._track(active)
        finally:
            with self._cond:  # what a new add is counted against: the subjects held, plus the adds queued since
                for e, *_ in jobs:
                    if not e.reset and all(kind != "new" for _, kind in e.prompts):
                        e.subjects = e.held() + sum(-1 if kind == "drop" else 1 for _, kind in e.prompts)

    def _track(self, active: list[tuple[_Entry, int, Any, Prompt | None, list[Prompt]]]) -> None:
        start = time.perf_counter()
        trackers = [e.tracker for e, *_ in active]
        images = [image for _, _, image, _, _ in active]
        encoded = tracking.encode_batch(trackers, images, batch=self.batch)
        results = step_batch(trackers, encoded, images, [p for *_, p, _ in active], stacked=self.stacked)
        for (e, tag, image, _, added), enc, result in zip(active, encoded, results, strict=True):
            if isinstance(result, PromptError):
                self._call(e.error, str(result))
                continue
            if e.extras or added:
                result = self._union(e, result, enc, image.shape[:2], added)
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
