"""Several subjects: one streaming SAM 2 tracker state per subject over one model and one image encoding.

Since December 2024 sam2's official ``SAM2VideoPredictor`` tracks the objects of a video one by
one on shared image features: every object has its own memory (``output_dict_per_obj``) and
reads nothing of the others. :class:`MultiTracker` does the same live: each subject is a
:class:`~greenscreen_cam.track.segmenter.StreamingTracker` (its own bounded memory) and every frame
goes through the image encoder once, whatever the number of subjects; each subject then runs
memory attention, the mask decoder and the memory encoder on those features.

The key keeps the union of the subjects: :meth:`MultiTracker.track` answers one
:class:`~greenscreen_cam.track.segmenter.TrackResult` holding every subject's own result; the key
upsamples each subject's logits and only then takes their per-pixel maximum (``> 0`` wherever
any subject is), the official predictor's order, so a bystander that nobody selected stays keyed
out. It has the methods the pipeline calls on a single tracker (``prompt``, ``track``,
``reset``, ``is_prompted``), so it drops in where a :class:`StreamingTracker` was used.

Frames are ``(H, W, 3)`` uint8 RGB numpy arrays; prompts are in that frame's pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from greenscreen_cam.errors import PromptError
from greenscreen_cam.track.prompt import Prompt, Selection
from greenscreen_cam.track.segmenter import StreamingTracker, TrackResult

__all__ = ["MAX_SUBJECTS", "MultiTracker", "union_result"]

MAX_SUBJECTS = 8
"""Subjects one camera may track at once: each costs one tracker step per frame."""


def union_result(results: Sequence[TrackResult], frame_index: int, is_prompt_frame: bool) -> TrackResult:
    """One result whose mask is the union of ``results``, taken in the official predictor's order.

    ``SAM2VideoPredictor`` upsamples every object's logits to the video size and only then takes
    their union. Taking the maximum of the low-resolution logits first and upsampling it once
    differs wherever two subjects meet (IoU down to 0.986 over a clip), so the result keeps each
    subject (``parts``): its :attr:`~TrackResult.logits` and :meth:`~TrackResult.low_res_numpy`
    planes are upsampled one by one before they meet. ``low_res_logits`` is their low-resolution
    maximum, for a quick look (which subject is where), not for keying.

    Its object score is the highest of the subjects', so it is visible when any subject is.
    """
    if not results:
        raise ValueError("union of no results")
    if len(results) == 1:
        return dataclasses.replace(results[0], frame_index=frame_index, is_prompt_frame=is_prompt_frame)
    low = results[0].low_res_logits
    for r in results[1:]:
        low = torch.maximum(low, r.low_res_logits)
    return TrackResult(
        frame_index,
        low,
        results[0].frame_hw,
        max(r.object_score for r in results),
        is_prompt_frame,
        parts=tuple(results),
    )


class MultiTracker:
    """Track up to ``max_subjects`` subjects through one stream with one shared SAM 2 model.

    Args:
        model: A sam2 ``SAM2Base`` shared by every subject.
        autocast: As :class:`StreamingTracker`.
        profile: As :class:`StreamingTracker` (the image encoder is timed once per frame).
        max_subjects: Most subjects held at once; one more is a :class:`PromptError`.
        engine: The OpenVINO engine (``--engine openvino``) the encoder and every subject step
            through, or None (torch).

    Example:
        >>> tracker = MultiTracker(model)                      # doctest: +SKIP
        >>> tracker.prompt(frame0, [Prompt(box=(10, 10, 50, 80)), Prompt(points=((120, 40),), labels=(1,))])
        >>> key = tracker.track(frame1)                         # union of both subjects
        >>> tracker.last_results[1].visible                     # the second subject alone
    """

    def __init__(
        self,
        model: Any,
        *,
        autocast: torch.dtype | None = None,
        profile: bool = False,
        max_subjects: int = MAX_SUBJECTS,
        engine: Any = None,
    ) -> None:
        if max_subjects < 1:
            raise ValueError("max_subjects must be >= 1")
        self.model = model
        self.autocast = autocast
        self.profile = profile
        self.max_subjects = max_subjects
        self.engine = engine
        """The OpenVINO engine every subject steps through (``--engine``), or None: torch."""
        self._encoder = StreamingTracker(model, autocast=autocast, profile=profile, engine=engine)
        """Preprocesses and encodes frames (its own memory stays empty); its timings hold those stages."""
        self.subjects: list[StreamingTracker] = []
        self.last_results: list[TrackResult] = []
        """Per subject, in order, the results of the last frame."""
        self._frame_index = -1
        self._pending_add: list[Prompt] = []

    # ------------------------------------------------------------------ state
    @property
    def is_prompted(self) -> bool:
        return bool(self.subjects)

    @property
    def frame_index(self) -> int:
        return self._frame_index

    @property
    def timings(self) -> dict[str, list[float]]:
        """Per-stage times: the shared stages once per frame, the per-subject stages once per subject."""
        merged: dict[str, list[float]] = {k: list(v) for k, v in self._encoder.timings.items()}
        for sub in self.subjects:
            for k, v in sub.timings.items():
                merged.setdefault(k, []).extend(v)
        return merged

    def reset(self) -> None:
        """Drop every subject; the next frame must be a :meth:`prompt`."""
        self.subjects = []
        self.last_results = []
        self._frame_index = -1

    def stored_bytes(self) -> list[int]:
        """Bytes of memory each subject holds (bounded: see :meth:`StreamingTracker.stored_bytes`)."""
        return [s.stored_bytes() for s in self.subjects]

    # ------------------------------------------------------------------ public API
    def prompt(self, frame: np.ndarray, prompt: Prompt | Selection | Sequence[Prompt]) -> TrackResult:
        """Select the subject(s) on ``frame``, replacing any earlier selection; the union result.

        Args:
            frame: ``(H, W, 3)`` uint8 RGB.
            prompt: One :class:`Prompt` (one subject), a :class:`Selection` or a sequence of prompts
                (one subject each).
        """
        if isinstance(prompt, Prompt):
            prompts = [prompt]
        elif isinstance(prompt, Selection):
            prompts = list(prompt.prompts)
        else:
            prompts = list(prompt)
        if not prompts:
            raise PromptError("a selection needs at least one subject")
        if len(prompts) > self.max_subjects:
            raise PromptError(f"{len(prompts)} subjects selected; at most {self.max_subjects} can be tracked at once")
        h, w = frame.shape[:2]
        for p in prompts:
            p.validate(w, h)
        self.reset()
        return self._step(frame, keep=False, new=prompts)

    def add(self, frame: np.ndarray, prompt: Prompt) -> TrackResult:
        """Add one subject on ``frame`` while the others keep tracking; the union result for ``frame``."""
        h, w = frame.shape[:2]
        prompt.validate(w, h)
        if len(self.subjects) >= self.max_subjects:
            raise PromptError(f"already tracking {len(self.subjects)} subjects (the most is {self.max_subjects})")
        return self._step(frame, keep=True, new=[prompt])

    def drop(self, index: int) -> None:
        """Stop tracking subject ``index`` (0-based, in the order they were added)."""
        if not 0 <= index < len(self.subjects):
            raise PromptError(f"no subject {index + 1}: {len(self.subjects)} tracked")
        del self.subjects[index]
        if index < len(self.last_results):
            del self.last_results[index]

    def subject_at(self, x: float, y: float) -> int | None:
        """Index of the subject whose last mask covers frame pixel ``(x, y)`` most surely, or None."""
        best, best_logit = None, 0.0
        for i, r in enumerate(self.last_results):
            h, w = r.frame_hw
            lh, lw = r.low_res_logits.shape[-2:]
            ix = min(lw - 1, max(0, int(x * lw / w)))
            iy = min(lh - 1, max(0, int(y * lh / h)))
            value = float(r.low_res_logits[0, 0, iy, ix])
            if value > best_logit:
                best, best_logit = i, value
        return best

    def track(self, frame: np.ndarray) -> TrackResult:
        """Track every subject into ``frame``; the union result."""
        if not self.subjects:
            raise PromptError("the tracker has no prompt yet; select a subject first")
        return self._step(frame, keep=True, new=[])

    # ------------------------------------------------------------------ core
    def _step(self, frame: np.ndarray, *, keep: bool, new: list[Prompt]) -> TrackResult:
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        with self._encoder.stage("preprocess"):
            image = self._encoder.preprocess(frame)
        encoded = self._encoder.encode(image)[0]
        results: list[TrackResult] = []
        if keep:
            results = [sub.step_encoded(encoded, hw, None) for sub in self.subjects]
        for p in new:
            sub = StreamingTracker(self.model, autocast=self.autocast, profile=self.profile, engine=self.engine)
            results.append(sub.step_encoded(encoded, hw, p))
            self.subjects.append(sub)
        self._frame_index += 1
        self.last_results = results
        return union_result(results, self._frame_index, bool(new))
