"""The tracker interface and its backend registry: one model, many tracker states, one factory, one error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from greenscreen_cam.config import ModelSettings, Settings
from greenscreen_cam.errors import CheckpointError, GreencamError, PromptError, TrackerBackendError
from greenscreen_cam.track import models, tracking
from greenscreen_cam.track.prompt import Prompt
from greenscreen_cam.track.segmenter import StreamingTracker

from .conftest import moving_disc_frames, write_video


# ----------------------------------------------------------------- a test backend: one class, one registration
@dataclass
class _Out:
    logits: np.ndarray
    visible: bool = True
    object_score: float = 5.0

    def low_res_numpy(self) -> np.ndarray:
        return self.logits


class BoxTracker:
    """A backend's tracker that says "the subject is the prompted box", at 16x16 logits."""

    def __init__(self) -> None:
        self.box: tuple[float, float, float, float] | None = None
        self.calls: list[str] = []

    @property
    def is_prompted(self) -> bool:
        return self.box is not None

    def _out(self, frame: np.ndarray) -> _Out:
        assert self.box is not None
        h, w = frame.shape[:2]
        x, y, bw, bh = self.box
        ys, xs = (np.mgrid[0:16, 0:16] + 0.5) / 16
        inside = (xs * w >= x) & (xs * w < x + bw) & (ys * h >= y) & (ys * h < y + bh)
        return _Out(np.where(inside, 8.0, -8.0).astype(np.float32))

    def prompt(self, frame: np.ndarray, prompt: Prompt) -> _Out:
        prompt.validate(frame.shape[1], frame.shape[0])
        assert prompt.box is not None
        self.box = prompt.box
        self.calls.append("prompt")
        return self._out(frame)

    def track(self, frame: np.ndarray) -> _Out:
        if self.box is None:
            raise PromptError("no prompt yet")
        self.calls.append("track")
        return self._out(frame)

    def reset(self) -> None:
        self.box = None


made: list[BoxTracker] = []


def load_box(choice: tracking.ModelChoice, options: tracking.LoadOptions) -> tracking.LoadedModel:
    def make(profile: bool) -> BoxTracker:
        made.append(BoxTracker())
        return made[-1]

    return tracking.LoadedModel("box", choice.spec.name, choice.device, choice.resolution, None, 16, make)


@pytest.fixture()
def box_backend():
    made.clear()
    tracking.register_backend("box", load_box, family="sam2", first=True)
    yield made
    tracking.unregister_backend("box")


@pytest.fixture()
def registry():
    """Restore the registry after a test that changes it."""
    saved = dict(tracking._BACKENDS)
    yield
    tracking._BACKENDS.clear()
    tracking._BACKENDS.update(saved)


def _choice(tiny_checkpoint: Path) -> tracking.ModelChoice:
    return tracking.resolve_model(
        ModelSettings(model="tiny", checkpoint=str(tiny_checkpoint), device="cpu", resolution=256)
    )


# ----------------------------------------------------------------- the registry
def test_sam2_is_the_builtin_backend_and_trackers_are_states_over_one_model(tiny_checkpoint):
    loaded = tracking.load_model(_choice(tiny_checkpoint))
    assert (loaded.backend, loaded.name, loaded.device, loaded.resolution, loaded.mask_side) == (
        "sam2",
        "tiny",
        "cpu",
        256,
        64,
    )
    a, b = loaded.new_tracker(), loaded.new_tracker()
    assert isinstance(a, StreamingTracker) and isinstance(a, tracking.BatchedTracker)
    assert a is not b and a.model is b.model is loaded.net, "one model, two session states"
    frame = moving_disc_frames(1)[0]
    out = a.prompt(frame, Prompt(box=(30, 25, 60, 70)))
    assert a.is_prompted and not b.is_prompted, "prompting one session leaves the other alone"
    assert out.low_res_numpy().shape == (loaded.mask_side, loaded.mask_side)


def test_a_registered_backend_is_what_start_uses(tmp_path, tiny_checkpoint, box_backend):
    """Adding a backend is one factory and one registry entry: ``greencam start`` then runs on it."""
    from greenscreen_cam.app import open_pipeline

    frames = moving_disc_frames(5)
    src = write_video(tmp_path / "in.mp4", frames)
    s = Settings(
        source=str(src),
        outputs=[str(tmp_path / "out.mp4")],
        bbox="20,20,40,40",
        checkpoint=str(tiny_checkpoint),
        device="cpu",
        resolution=256,
    )
    with open_pipeline(s) as pipe:
        summary = pipe.run()
    assert summary["completed"] and summary["frames_out"] == 5
    (tracker,) = box_backend
    assert tracker.calls == ["prompt"] + ["track"] * 4
    assert (tmp_path / "out.mp4").exists()


def test_backends_are_tried_in_order_and_the_first_that_loads_wins(tiny_checkpoint, registry):
    def broken(choice, options):
        raise ImportError("No module named 'tensorrt'")

    tracking.register_backend("trt", broken, first=True)
    assert tracking.backend_names("sam2") == ["trt", "sam2"]
    loaded = tracking.load_model(_choice(tiny_checkpoint))
    assert loaded.backend == "sam2" and isinstance(loaded.new_tracker(), StreamingTracker)


def test_when_every_backend_fails_one_error_says_why_each_did(tiny_checkpoint, registry):
    def no_trt(choice, options):
        raise ImportError("No module named 'tensorrt'")

    def no_file(choice, options):
        raise CheckpointError("checkpoint x.pt is truncated")

    tracking.register_backend("trt", no_trt, first=True)
    tracking.register_backend("sam2", no_file)
    with pytest.raises(TrackerBackendError) as info:
        tracking.load_model(_choice(tiny_checkpoint))
    message = str(info.value)
    assert message.startswith("no tracker backend could load SAM 2 tiny at 256 px on cpu")
    assert "trt: ImportError: No module named 'tensorrt'" in message
    assert "sam2: checkpoint x.pt is truncated" in message
    assert "\n" not in message
    assert info.value.exit_code == 3, "the exit code is the candidates' own where they agree"


def test_one_candidate_keeps_its_own_error(tiny_checkpoint, registry):
    def no_file(choice, options):
        raise CheckpointError("checkpoint x.pt is truncated")

    tracking.register_backend("sam2", no_file)
    with pytest.raises(CheckpointError, match="truncated"):
        tracking.load_model(_choice(tiny_checkpoint))


def test_unknown_backend_and_unknown_family_are_one_line_errors(tiny_checkpoint, registry):
    choice = _choice(tiny_checkpoint)
    with pytest.raises(TrackerBackendError, match="unknown tracker backend 'nope'; registered: sam2"):
        tracking.load_model(choice, backend="nope")
    other = tracking.ModelChoice(
        models.ModelSpec("efficient", "x.yaml", "x.pt", "", None, None, 1, 1, family="efficienttam"),
        "cpu",
        256,
        tiny_checkpoint,
    )
    with pytest.raises(TrackerBackendError, match="no tracker backend is registered for efficienttam models"):
        tracking.load_model(other)


def test_a_backend_that_fails_with_a_bug_is_reported_not_raised_raw(tiny_checkpoint, registry):
    def buggy(choice, options):
        raise RuntimeError("CUDA driver too old")

    tracking.register_backend("sam2", buggy)
    with pytest.raises(TrackerBackendError, match=r"sam2: RuntimeError: CUDA driver too old") as info:
        tracking.load_model(_choice(tiny_checkpoint))
    assert isinstance(info.value, GreencamError)


def test_open_model_with_random_weights_is_start_random_weights(tiny_model):
    """``serve --random-weights`` loads through the same factory, with the same seeded weights."""
    loaded = tracking.open_model(ModelSettings(model="tiny", device="cpu", resolution=256), random_weights=True)
    assert (loaded.backend, loaded.name, loaded.resolution) == ("sam2", "tiny", 256)
    mine, theirs = loaded.net.state_dict(), tiny_model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


# ----------------------------------------------------------------- many sessions, one step
def test_track_batch_matches_stepping_each_session_alone(tiny_model):
    from greenscreen_cam.track.sam2_backend import wrap

    loaded = wrap(tiny_model, "tiny", "cpu", 256)
    frames = moving_disc_frames(3)
    shifted = [np.roll(f, 7, axis=1) for f in frames]
    box = Prompt(box=(30, 25, 60, 70))
    together = [loaded.new_tracker(), loaded.new_tracker()]
    alone = [loaded.new_tracker(), loaded.new_tracker()]
    for i in range(3):
        prompts = [box if i == 0 else None, box if i == 0 else None]
        batched = tracking.track_batch(together, [frames[i], shifted[i]], prompts)
        single = [
            t.prompt(img, box) if i == 0 else t.track(img)
            for t, img in zip(alone, [frames[i], shifted[i]], strict=True)
        ]
        for b, s in zip(batched, single, strict=True):
            assert not isinstance(b, PromptError)
            np.testing.assert_allclose(b.low_res_numpy(), s.low_res_numpy(), atol=1e-4)
            assert b.visible == s.visible
    assert not np.allclose(batched[0].low_res_numpy(), batched[1].low_res_numpy()), "two sessions, two subjects"


def test_track_batch_steps_plain_trackers_one_by_one_and_returns_prompt_errors():
    a, b = BoxTracker(), BoxTracker()
    frame = moving_disc_frames(1)[0]
    out = tracking.track_batch([a, b], [frame, frame], [Prompt(box=(0, 0, 80, 60)), None])
    assert isinstance(out[1], PromptError) and not isinstance(out[0], PromptError)
    assert (out[0].low_res_numpy()[:8, :8] > 0).all() and (out[0].low_res_numpy()[8:, 8:] < 0).all()


def test_async_and_plain_trackers_are_told_apart():
    from greenscreen_cam.link.client import RemoteTracker

    assert not tracking.is_async(BoxTracker())
    assert tracking.is_async(RemoteTracker("http://127.0.0.1:1", "t" * 16, width=4, height=4))


# ----------------------------------------------------------------- the pipeline takes one tracker object
class OwnTimeTracker:
    """An :class:`~greenscreen_cam.track.tracking.AsyncTracking` on a thread of its own that takes its
    prompts itself, as the remote tracker of ``start --server`` does."""

    def __init__(self) -> None:
        import threading

        from greenscreen_cam.key.sync import ThreadedTracker

        self.inner = BoxTracker()
        self.prompts: list[Prompt | None] = []
        self._pending: list[Prompt | None] = []
        self._lock = threading.Lock()
        self._thread = ThreadedTracker(self._step)
        self.closed = False

    def _step(self, frame):
        from greenscreen_cam.core import MaskResult

        with self._lock:
            pending, self._pending = self._pending, []
        for p in pending:
            self.inner.reset()
            if p is not None:
                self.inner.box = p.box
        if not self.inner.is_prompted:
            return None
        out = self.inner.track(frame.image)
        return MaskResult(frame.index, frame.timestamp, out.low_res_numpy(), out.visible, out.object_score)

    def submit(self, frame) -> None:
        self._thread.submit(frame)

    def poll(self):
        return self._thread.poll()

    @property
    def busy(self) -> bool:
        return self._thread.busy

    def reselect(self, prompt: Prompt | None) -> None:
        self.prompts.append(prompt)
        with self._lock:
            self._pending.append(prompt)

    def track_sync(self, frame, timeout: float = 60.0):
        from greenscreen_cam.core import MaskResult

        result = self._step(frame)
        return result or MaskResult(frame.index, frame.timestamp, None, False, 0.0, selected=False)

    def close(self) -> None:
        self.closed = True
        self._thread.close()


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("realtime", [False, True])
def test_a_tracker_of_its_own_time_is_one_argument_and_gets_the_prompt(tmp_path, realtime):
    from greenscreen_cam import KEY_COLOR
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.sources import ImageFolderSource

    from .conftest import write_jpeg_folder

    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(6 if not realtime else 20))
    tracker = OwnTimeTracker()
    assert tracking.is_async(tracker)
    rec = _Recorder()
    box = Prompt(box=(0, 0, 80, 120))
    pipe = Pipeline(
        ImageFolderSource(folder, fps=30.0, realtime=realtime),
        tracker,
        Compositor(CompositorSettings(smooth=0)),
        rec,
        prompt=box,
        sync="off",
    )
    assert tracker.prompts == [box], "the pipeline hands the initial prompt to a tracker that owns its prompt"
    summary = pipe.run()
    assert summary["tracked"] >= 1 and rec.frames
    last = rec.frames[-1]
    assert (last[:, 100:] == KEY_COLOR).all(), "right of the box: keyed out"
    assert not (last[:, :70] == KEY_COLOR).all(axis=-1).any(), "inside the box: the picture"
    if not realtime:
        assert len(rec.frames) == 6 and summary["tracked"] == 6
    else:
        assert tracker.closed, "a live run closes the tracker it drove"
    pipe.reselect(None)
    assert tracker.prompts == [box, None]


def test_track_batch_is_a_drop_in_for_the_serve_workers_own(tiny_model):
    """link/worker.py's track_batch can call tracking.track_batch: the same numbers, bit for bit."""
    from greenscreen_cam.link.worker import track_batch as worker_track_batch
    from greenscreen_cam.track.sam2_backend import wrap

    loaded = wrap(tiny_model, "tiny", "cpu", 256)
    frames = moving_disc_frames(3)
    box = Prompt(box=(30, 25, 60, 70))
    mine, theirs = [loaded.new_tracker(), loaded.new_tracker()], [loaded.new_tracker(), loaded.new_tracker()]
    for i in range(3):
        images = [frames[i], np.ascontiguousarray(frames[i][::-1])]
        prompts = [box if i == 0 else None] * 2
        a = tracking.track_batch(mine, images, prompts)
        b = worker_track_batch(theirs, images, prompts)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.low_res_logits, y.low_res_logits) and x.object_score == y.object_score  # type: ignore[union-attr]
