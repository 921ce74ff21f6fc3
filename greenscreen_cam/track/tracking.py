"""One tracker interface, and the registry of backends that load a model and make trackers from it.

Two objects, kept apart on purpose (as sam2's ``build_sam.py`` keeps the model apart from each
video's ``inference_state``):

- a :class:`LoadedModel`: the weights on a device, loaded **once** per process (``greencam start``,
  ``greencam bench``, a ``greencam serve`` machine or a cluster replica);
- many :class:`Tracker` states made from it with :meth:`LoadedModel.new_tracker`: one per camera,
  per serve session, or per benchmark run. A tracker holds one subject's prompt and memory only.

Backends are chosen by a registry keyed by the model's spec (its ``family``), in the manner of
pyvirtualcam's backend registry: :func:`load_model` tries every backend registered for the
family in order and, when none can load the model, raises one :class:`TrackerBackendError` that
says why each candidate failed. ``start``, ``bench`` and ``serve`` all load through it.

Adding a backend means one new module with a factory (see :mod:`greenscreen_cam.track.sam2_backend`)
and one entry in :data:`_BUILTIN` (or a :func:`register_backend` call, e.g. from a test)::

    def load(choice: ModelChoice, options: LoadOptions) -> LoadedModel: ...

    register_backend("my-backend", load, family="sam2", first=True)

Frames given to trackers are ``(H, W, 3)`` uint8 **RGB** numpy arrays. Nothing heavy is imported
here: a backend's module is imported only when a model of its family is loaded.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from greenscreen_cam.core import Frame, MaskResult
from greenscreen_cam.errors import GreencamError, PromptError, TrackerBackendError
from greenscreen_cam.track.prompt import Prompt, Selection

if TYPE_CHECKING:
    from greenscreen_cam.config import ModelSettings
    from greenscreen_cam.track.models import ModelSpec

__all__ = [
    "AsyncTracking",
    "BatchedTracker",
    "LoadOptions",
    "LoadedModel",
    "ModelChoice",
    "TrackOutput",
    "Tracker",
    "backend_names",
    "is_async",
    "load_model",
    "open_model",
    "register_backend",
    "resolve_model",
    "encode_batch",
    "step_encoded_batch",
    "track_batch",
    "unregister_backend",
]


# --------------------------------------------------------------------------- the interface
class TrackOutput(Protocol):
    """What a tracker returns for one frame (:class:`greenscreen_cam.track.segmenter.TrackResult` for SAM 2)."""

    @property
    def visible(self) -> bool:
        """The tracker's verdict that the subject is in the frame."""
        ...

    @property
    def object_score(self) -> float:
        """The visibility logit (``> 0`` = visible)."""
        ...

    def low_res_numpy(self) -> np.ndarray:
        """``(h, w)`` float32 mask logits at the tracker's resolution covering the whole frame, ``> 0`` = subject.

        ``(n, h, w)`` for a union of ``n`` subjects: one plane each, for the key to upsample one
        by one before they meet (the official predictor's order).
        """
        ...


class Tracker(Protocol):
    """One subject tracked through one stream of frames: a per-session state over a shared model.

    Use :meth:`prompt` on the frame where the subject is selected, then :meth:`track` on every
    following frame. Calling :meth:`prompt` again is a re-prompt (re-selection): the earlier
    subject and its memory are dropped. :meth:`reset` forgets the subject until the next prompt.
    A tracker is used by one thread at a time.
    """

    @property
    def is_prompted(self) -> bool:
        """True once a subject is selected (until :meth:`reset`)."""
        ...

    def prompt(self, frame: np.ndarray, prompt: Prompt) -> TrackOutput:
        """Select (or re-select) the subject on ``frame`` (``prompt`` in its pixels).

        Raises:
            PromptError: the prompt does not fit the frame.
        """
        ...

    def track(self, frame: np.ndarray) -> TrackOutput:
        """Track the subject into the next frame.

        Raises:
            PromptError: no subject is selected yet.
        """
        ...

    def reset(self) -> None:
        """Forget the subject and all memory."""
        ...


@runtime_checkable
class BatchedTracker(Tracker, Protocol):
    """A tracker whose step splits into a batchable, model-only part and a per-session part.

    ``greencam serve`` runs :meth:`encode` once on the frames of all its sessions (they share one
    model) and then each session's :meth:`step_encoded` (see :func:`track_batch`). Optional: a
    backend without it is stepped session by session.
    """

    model: Any

    def preprocess(self, frame: np.ndarray) -> Any:
        """A frame -> the backend's ``(1, ...)`` model input."""
        ...

    def encode(self, images: Any) -> list[Any]:
        """The model-only part for a batch of preprocessed frames (concatenated on the first axis)."""
        ...

    def step_encoded(self, encoded: Any, frame_hw: tuple[int, int], prompt: Prompt | None) -> TrackOutput:
        """The per-session part for one encoded frame; ``prompt`` makes it a (re-)prompt."""
        ...


@runtime_checkable
class AsyncTracking(Protocol):
    """A tracker that works on its own time and owns its prompt: remote (``greencam start --server``,
    :class:`greenscreen_cam.link.client.RemoteTracker`) or on a thread or process of its own.

    The pipeline hands it frames with :meth:`submit` (it keeps only the newest pending one, never
    a queue) and collects results with :meth:`poll`; offline it uses :meth:`track_sync` for every
    frame in order. Results are :class:`greenscreen_cam.core.MaskResult` s.
    """

    def submit(self, frame: Frame) -> None: ...

    def poll(self) -> Sequence[MaskResult]:
        """Results completed since the last call, oldest first (never blocks)."""
        ...

    @property
    def busy(self) -> bool: ...

    def reselect(self, prompt: Prompt | Selection | None) -> None:
        """Prompt on the next frame tracked (a Selection: several subjects); None forgets the subject."""
        ...

    def track_sync(self, frame: Frame, timeout: float = 60.0) -> MaskResult:
        """Track ``frame`` and wait for its own result (offline files: every frame, in order)."""
        ...

    def close(self) -> None: ...


def is_async(tracker: object) -> bool:
    """True for an :class:`AsyncTracking` (it owns prompting and timing), False for a plain :class:`Tracker`."""
    return isinstance(tracker, AsyncTracking)


# --------------------------------------------------------------------------- model and its trackers
@dataclass(frozen=True)
class ModelChoice:
    """A checked model selection: registry entry, torch device, input size and checkpoint file."""

    spec: ModelSpec
    device: str
    resolution: int
    checkpoint: Path
    captured: bool = False
    """Replay the steady-state step as a CUDA graph (``--compile``, see :func:`greenscreen_cam.track.steady.resolve_compile`)."""
    engine: str = "torch"
    """``torch`` or ``openvino`` (``--engine``, resolved by :func:`greenscreen_cam.track.engines.resolve_engine`)."""
    openvino_device: str = "CPU"
    """OpenVINO's device for the ``openvino`` engine (``--openvino-device``)."""
    openvino_precision: str = "f32"
    """OpenVINO's inference precision, ``f32`` or ``bf16`` (``--openvino-precision``)."""

    def describe(self) -> str:
        engine = f", OpenVINO {self.openvino_device} {self.openvino_precision}" if self.engine == "openvino" else ""
        return f"SAM 2 {self.spec.name} at {self.resolution} px on {self.device}{engine}"


def resolve_model(s: ModelSettings, *, random_weights: Path | None = None) -> ModelChoice:
    """Check the model name, device, resolution and checkpoint file (fast: nothing is loaded).

    With ``random_weights`` (a folder), a checkpoint of seeded random weights is
    written there instead of looking for the real file (tests and benchmarks).
    """
    from greenscreen_cam.track import models
    from greenscreen_cam.track.engines import resolve_engine
    from greenscreen_cam.track.steady import resolve_compile

    spec, dev, res = models.choose(s.model, s.device, s.resolution)
    captured = resolve_compile(s.compile, dev)
    engine = resolve_engine(getattr(s, "engine", "torch"), dev)
    if random_weights is not None:
        path = models.save_random_checkpoint(spec, random_weights / spec.filename)
    else:
        path = models.resolve_checkpoint(spec, Path(s.checkpoint).expanduser() if s.checkpoint else None)
    return ModelChoice(
        spec,
        dev,
        res,
        path,
        captured,
        engine,
        getattr(s, "openvino_device", "CPU").upper(),
        getattr(s, "openvino_precision", "f32"),
    )


@dataclass(frozen=True)
class LoadOptions:
    """How a backend loads its model.

    Attributes:
        compile_mode: ``torch.compile`` the image encoder: True, or a compile mode such as
            ``"reduce-overhead"`` (CUDA graphs); False: eager.
    """

    compile_mode: bool | str = False
    notify: Callable[[str], None] | None = None
    """Receives progress lines while loading (the OpenVINO engine's conversion and compilation)."""


@dataclass
class LoadedModel:
    """One loaded model, shared by every tracker made from it (a server loads one, a replica one).

    Attributes:
        backend: The registry name of the backend that loaded it.
        name: The model's name (``tiny``...).
        device: The torch device it runs on.
        resolution: Its input size in pixels.
        net: The backend's model object (a sam2 ``SAM2Base`` for the SAM 2 backend).
        mask_side: Side of the square low-resolution logits its trackers return (``resolution // 4``
            for SAM 2): the size of an empty mask.
        make_tracker: ``make_tracker(profile)`` -> a new :class:`Tracker` state over :attr:`net`.
    """

    backend: str
    name: str
    device: str
    resolution: int
    net: Any
    mask_side: int
    make_tracker: Callable[[bool], Tracker]
    engine: Any = None
    """The backend's compiled engine shared by its trackers (the OpenVINO engine), or None (torch)."""

    def new_tracker(self, *, profile: bool = False) -> Tracker:
        """A fresh per-session tracker (no subject, no memory) over this model.

        Args:
            profile: Record per-stage wall times where the backend supports it (benchmarks).
        """
        return self.make_tracker(profile)

    def describe(self) -> str:
        return f"{self.name} at {self.resolution} px on {self.device} ({self.backend})"


BackendFactory = Callable[[ModelChoice, LoadOptions], LoadedModel]
"""``factory(choice, options) -> LoadedModel``; raises (anything) when it cannot load ``choice``."""


@dataclass
class _Entry:
    factory: BackendFactory | str  # "module:function" is imported on first use
    family: str


_BUILTIN: dict[str, _Entry] = {
    "sam2": _Entry("greenscreen_cam.track.sam2_backend:load", "sam2"),
}
"""The backends that ship with greencam, in order of preference per family."""

_BACKENDS: dict[str, _Entry] = dict(_BUILTIN)


def register_backend(name: str, factory: BackendFactory | str, *, family: str = "sam2", first: bool = False) -> None:
    """Make ``factory`` a candidate for models of ``family`` (the spec's ``family``).

    Args:
        name: The backend's name (shown in errors and :attr:`LoadedModel.backend`); an existing
            entry of that name is replaced.
        factory: ``factory(choice, options) -> LoadedModel``, or ``"module:function"`` imported on first use.
        family: The model family it loads (``ModelSpec.family``).
        first: Try it before the backends already registered for the family (default: after them).
    """
    _BACKENDS.pop(name, None)
    entry = _Entry(factory, family)
    if first:
        items = list(_BACKENDS.items())
        _BACKENDS.clear()
        _BACKENDS[name] = entry
        _BACKENDS.update(items)
    else:
        _BACKENDS[name] = entry


def unregister_backend(name: str) -> None:
    """Remove a backend (a built-in one comes back in its place with :func:`register_backend`)."""
    _BACKENDS.pop(name, None)


def backend_names(family: str | None = None) -> list[str]:
    """The registered backends (for ``family`` only, if given), in the order they are tried."""
    return [n for n, e in _BACKENDS.items() if family is None or e.family == family]


def _factory(entry: _Entry) -> BackendFactory:
    if callable(entry.factory):
        return entry.factory
    module, _, attr = entry.factory.partition(":")
    fn: BackendFactory = getattr(importlib.import_module(module), attr)
    return fn


def load_model(choice: ModelChoice, *, backend: str | None = None, options: LoadOptions | None = None) -> LoadedModel:
    """Load ``choice`` with the first backend that can (slow): the one factory of start, bench and serve.

    Args:
        choice: What :func:`resolve_model` checked.
        backend: Use only this backend (default: every backend registered for the spec's family, in order).
        options: Loading options (compilation).

    Raises:
        GreencamError: the one candidate's own error when a single backend was tried (a
            CheckpointError stays a CheckpointError); otherwise a :class:`TrackerBackendError`
            whose message says why each candidate failed.
    """
    opts = options or LoadOptions()
    family = getattr(choice.spec, "family", "sam2")
    names = [backend] if backend is not None else backend_names(family)
    if backend is not None and backend not in _BACKENDS:
        known = ", ".join(backend_names()) or "none"
        raise TrackerBackendError(f"unknown tracker backend {backend!r}; registered: {known}")
    if not names:
        raise TrackerBackendError(f"no tracker backend is registered for {family} models such as {choice.spec.name}")
    failures: list[tuple[str, BaseException]] = []
    for name in names:
        try:
            loaded = _factory(_BACKENDS[name])(choice, opts)
        except Exception as e:  # noqa: BLE001 - every candidate's reason goes into one message
            failures.append((name, e))
            continue
        loaded.backend = name
        return loaded
    if len(failures) == 1 and isinstance(failures[0][1], GreencamError):
        raise failures[0][1]
    reasons = "; ".join(f"{name}: {_reason(e)}" for name, e in failures)
    error = TrackerBackendError(f"no tracker backend could load {choice.describe()} ({reasons})")
    codes = {e.exit_code for _, e in failures if isinstance(e, GreencamError)}
    if len(codes) == 1:
        error.exit_code = codes.pop()
    raise error from failures[-1][1]


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, GreencamError) else f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_model(
    s: ModelSettings,
    *,
    random_weights: bool = False,
    backend: str | None = None,
    options: LoadOptions | None = None,
) -> LoadedModel:
    """:func:`resolve_model` then :func:`load_model`, for a process that serves many sessions.

    With ``random_weights`` the seeded random weights of ``greencam start --random-weights`` are
    written to a temporary folder, loaded, and the folder is removed.
    """
    if not random_weights:
        return load_model(resolve_model(s), backend=backend, options=options)
    with tempfile.TemporaryDirectory(prefix="greencam-weights-") as tmp:
        return load_model(resolve_model(s, random_weights=Path(tmp)), backend=backend, options=options)


# --------------------------------------------------------------------------- many sessions, one step
def track_batch(
    trackers: Sequence[Tracker],
    images: Sequence[np.ndarray],
    prompts: Sequence[Prompt | None],
    *,
    batch: bool = True,
) -> list[TrackOutput | PromptError]:
    """One frame for each of several trackers (sessions) over one loaded model.

    When every tracker is a :class:`BatchedTracker` over the same model (and ``batch``), the
    model-only part runs once on all frames; otherwise each tracker steps on its own
    (:meth:`Tracker.prompt` with a prompt, else :meth:`Tracker.track`).

    Args:
        trackers: One per session.
        images: Each session's newest frame, ``(H, W, 3)`` uint8 RGB (sizes may differ).
        prompts: A prompt (in that frame's pixels) to (re-)select the subject, or None to track.
        batch: Allow the batched model step.

    Returns:
        Per session its result, or the PromptError its step raised.
    """
    if all(isinstance(t, BatchedTracker) for t in trackers):
        return _track_encoded(list(trackers), images, prompts, batch=batch)  # type: ignore[arg-type]
    out: list[TrackOutput | PromptError] = []
    for t, img, prompt in zip(trackers, images, prompts, strict=True):
        try:
            out.append(t.prompt(img, prompt) if prompt is not None else t.track(img))
        except PromptError as e:
            out.append(e)
    return out


def _track_encoded(
    trackers: list[BatchedTracker],
    images: Sequence[np.ndarray],
    prompts: Sequence[Prompt | None],
    *,
    batch: bool,
) -> list[TrackOutput | PromptError]:
    return step_encoded_batch(trackers, encode_batch(trackers, images, batch=batch), images, prompts)


def encode_batch(trackers: Sequence[BatchedTracker], images: Sequence[np.ndarray], *, batch: bool = True) -> list[Any]:
    """The model-only part for each tracker's frame: one batch when ``batch`` and they share one model."""
    pre = [t.preprocess(img) for t, img in zip(trackers, images, strict=True)]
    if batch and len(pre) > 1 and all(t.model is trackers[0].model for t in trackers):
        import torch

        return trackers[0].encode(torch.cat(pre, dim=0))
    return [t.encode(p)[0] for t, p in zip(trackers, pre, strict=True)]


def step_encoded_batch(
    trackers: Sequence[BatchedTracker],
    encoded: Sequence[Any],
    images: Sequence[np.ndarray],
    prompts: Sequence[Prompt | None],
) -> list[TrackOutput | PromptError]:
    """Each tracker's own step on its frame already through :func:`encode_batch`; its result or PromptError."""
    out: list[TrackOutput | PromptError] = []
    for t, enc, img, prompt in zip(trackers, encoded, images, prompts, strict=True):
        try:
            out.append(t.step_encoded(enc, (int(img.shape[0]), int(img.shape[1])), prompt))
        except PromptError as e:
            out.append(e)
    return out
