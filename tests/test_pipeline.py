"""The real-time loop: live pacing with a slower tracker, lost subjects, optical flow, stats, stopping."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.core import Frame
from greenscreen_cam.key.compositor import Compositor, CompositorSettings
from greenscreen_cam.live.pipeline import Pipeline
from greenscreen_cam.media.sinks import MatteWriter, MultiSink, VirtualCameraSink
from greenscreen_cam.media.sources import ImageFolderSource
from greenscreen_cam.track.segmenter import Prompt, StreamingTracker

from .conftest import moving_disc_frames, write_jpeg_folder


class _Recorder:
    def __init__(self, on_frame: Callable[[int], object] | None = None) -> None:
        self.frames: list[np.ndarray] = []
        self.on_frame = on_frame

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame)
        if self.on_frame is not None:
            self.on_frame(len(self.frames))

    def close(self) -> None:
        pass


class _FakeCamera:
    """A live 160x120 source delivering ``frames`` at 30 fps, as a camera does.

    Before frame ``gap_at`` it is unplugged for ``gap_s`` s (``reconnecting`` is True meanwhile,
    as :class:`~greenscreen_cam.media.sources.CameraSource` reports while reopening the device). After
    the last frame it ends (None), or raises ``lost``.
    """

    width, height, fps, live = 160, 120, 30.0, True

    def __init__(
        self, frames: list[np.ndarray], *, gap_at: int | None = None, gap_s: float = 0.0, lost: Exception | None = None
    ) -> None:
        self.frames, self.gap_at, self.gap_s, self.lost = frames, gap_at, gap_s, lost
        self.i = 0
        self.reconnecting = False
        self.closed = False

    def read(self) -> Frame | None:
        if self.i >= len(self.frames):
            if self.lost is not None:
                raise self.lost
            return None
        if self.i == self.gap_at:
            self.reconnecting = True
            time.sleep(self.gap_s)  # the simulated device is away: this is the camera's time, not a wait
            self.reconnecting = False
        time.sleep(1 / self.fps)
        self.i += 1
        return Frame(self.frames[self.i - 1], self.i - 1)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("sync", ["off", "on"])
@pytest.mark.slow
def test_live_output_keeps_the_source_rate_while_the_tracker_is_slower(tiny_model, tmp_path, vcam_backend, sync):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(45))
    source = ImageFolderSource(folder, fps=30.0, realtime=True)  # a 1.5 s "camera" at 30 fps
    statuses: list[dict] = []
    with VirtualCameraSink(160, 120, 30.0, backend="greencam-test") as vcam:
        pipe = Pipeline(
            source,
            StreamingTracker(tiny_model),
            Compositor(CompositorSettings()),
            MultiSink([vcam]),
            prompt=Prompt(box=(30, 25, 60, 70)),
            sync=sync,
            on_status=statuses.append,
        )
        summary = pipe.run()
    cam = vcam_backend.instances[0]
    # Every frame the source delivered was keyed and sent, at the source's pace (plus the last
    # picture again whenever the source paused for more than 0.1 s, which a loaded CPU can cause)...
    assert summary["frames_out"] == summary["frames_in"] >= 30
    assert summary["frames_in"] + summary["dropped"] == 45, "every frame is sent or counted as dropped"
    assert len(cam.frames) == summary["frames_out"] + summary["filler_frames"]
    assert np.median(np.diff(cam.times)) == pytest.approx(1 / 30, abs=0.012)
    # ...while SAM 2 ran on far fewer of them (it is much slower than 30 fps on this CPU).
    assert 1 <= summary["tracked"] < summary["frames_in"]
    assert summary["output_fps"] == pytest.approx(len(cam.frames) / summary["seconds"], rel=0.01)
    # At the rate the source delivered (30 fps, less what a loaded machine's reader had to drop:
    # 15 of 45 at a load of 9 on 2 cores), never the tracker's few fps.
    out_rate = (len(cam.frames) - 1) / (cam.times[-1] - cam.times[0])
    assert 0.8 * summary["input_fps"] < out_rate < 40, (out_rate, summary["input_fps"])
    assert summary["input_fps"] > 2 * summary["tracked"] / summary["seconds"], "the tracker must be the slower one"
    assert summary["latency_p95_ms"] >= summary["latency_p50_ms"] > 0
    assert statuses and statuses[-1]["subject"] == "tracking"
    last = cam.frames[-1].reshape(120, 160, 3)
    assert not (last == KEY_COLOR).all()
    if sync == "off":
        # Until the first mask exists the output is the plain key colour; no frame waits.
        assert (cam.frames[0].reshape(120, 160, 3) == KEY_COLOR).all()
        assert summary["delay_p95_ms"] < 5 and summary["sync"] == "off"
    else:
        # Frames wait (a bounded time) for their own mask or the nearest tracked frame's: tracked
        # frames are keyed with their own mask, and no frame waits longer than the hold limit.
        assert 0 < summary["own_mask_share"] < 1
        assert 0 < summary["delay_p50_ms"] <= summary["delay_p95_ms"] <= 1000 + 50


@pytest.mark.slow
def test_offline_is_deterministic(tiny_model, tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(6))
    runs = []
    for _ in range(2):
        rec = _Recorder()
        Pipeline(
            ImageFolderSource(folder),
            StreamingTracker(tiny_model),
            Compositor(CompositorSettings(smooth=0.3)),
            rec,
            prompt=Prompt(box=(30, 25, 60, 70)),
        ).run()
        runs.append([f.reshape(120, 160, 3) for f in rec.frames])
    assert len(runs[0]) == len(runs[1]) == 6 and all(np.array_equal(a, b) for a, b in zip(*runs))
    # What repeats is real keying, not a constant: every frame keeps part of the picture and paints
    # the rest the key colour, and the output follows the moving disc from frame to frame.
    for out in runs[0]:
        assert 0.02 < (out == KEY_COLOR).all(axis=-1).mean() < 0.98
    assert not any(np.array_equal(a, b) for a, b in zip(runs[0], runs[0][1:]))


@contextlib.contextmanager
def _object_score_bias(model, value: float):
    head = model.sam_mask_decoder.pred_obj_score_head
    layer = head.layers[-1] if hasattr(head, "layers") else head
    saved = layer.bias.detach().clone()
    with torch.no_grad():
        layer.bias.fill_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            layer.bias.copy_(saved)


class _Occluded:
    """The real tracker, with SAM 2's object-score head biased (as an occluder drives it) on some frames."""

    def __init__(self, tracker: StreamingTracker, hidden: set[int]) -> None:
        self.tracker = tracker
        self.hidden = hidden

    def __getattr__(self, name):
        return getattr(self.tracker, name)

    def track(self, image):
        if self.tracker.frame_index + 1 in self.hidden:
            with _object_score_bias(self.tracker.model, -20.0):
                return self.tracker.track(image)
        return self.tracker.track(image)


def _run_occluded(
    tiny_model, tmp_path, hidden: set[int], lost_after: float, events: list[str], matte: _Recorder | None = None
) -> list[np.ndarray]:
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(9))
    rec = _Recorder()
    Pipeline(
        ImageFolderSource(folder, fps=10.0),
        _Occluded(StreamingTracker(tiny_model), hidden),  # type: ignore[arg-type]
        Compositor(CompositorSettings(smooth=0)),
        rec,
        prompt=Prompt(box=(30, 25, 60, 70)),
        lost_after=lost_after,
        matte=matte,
        on_event=events.append,
    ).run()
    assert len(rec.frames) == 9
    return rec.frames


@pytest.mark.slow
def test_lost_subject_sends_key_then_recovers(tiny_model, tmp_path):
    events: list[str] = []
    frames = _run_occluded(tiny_model, tmp_path, {3, 4, 5}, 0.0, events)
    assert not (frames[2] == KEY_COLOR).all()
    # The subject disappears (SAM 2's object score goes negative): key colour only, and it is said once.
    assert all((f == KEY_COLOR).all() for f in frames[3:6])
    assert sum("subject lost" in e for e in events) == 1
    assert "subject is back" in events and not (frames[-1] == KEY_COLOR).all()


@pytest.mark.slow
def test_short_occlusion_within_lost_after_keeps_the_last_mask(tiny_model, tmp_path):
    """--lost-after 0.3 at 10 fps = 3 frames of grace: a 2-frame occlusion never blanks the picture."""
    events: list[str] = []
    alphas = _Recorder()
    frames = _run_occluded(tiny_model, tmp_path / "a", {3, 4}, 0.3, events, alphas)
    assert not any((f == KEY_COLOR).all() for f in frames)
    a = alphas.frames
    assert np.array_equal(a[3], a[2]) and np.array_equal(a[4], a[2]), "frames 3 and 4 are keyed with frame 2's mask"
    assert not np.array_equal(a[5], a[2]), "frame 5 (visible again) has its own mask"
    assert not any("subject lost" in e for e in events)
    # ...while a longer one is reported once the grace period has passed (frame 3 + 3 frames = frame 6).
    events.clear()
    frames = _run_occluded(tiny_model, tmp_path / "b", {3, 4, 5, 6, 7}, 0.3, events)
    assert not (frames[5] == KEY_COLOR).all() and (frames[6] == KEY_COLOR).all()
    assert sum("subject lost" in e for e in events) == 1


@pytest.mark.slow
def test_tracker_failure_in_live_mode_ends_the_run_with_one_error(tiny_model, tmp_path):
    from greenscreen_cam.errors import TrackerError

    class Broken(StreamingTracker):
        def track(self, frame):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(4) * 600)  # 80 s of frames at 30 fps
    pipe = Pipeline(
        ImageFolderSource(folder, fps=30.0, realtime=True),
        Broken(tiny_model),
        Compositor(CompositorSettings()),
        _Recorder(),
        prompt=Prompt(box=(30, 25, 60, 70)),
    )
    start = time.perf_counter()
    with pytest.raises(TrackerError, match="the tracker failed: RuntimeError: CUDA error"):
        pipe.run()
    assert time.perf_counter() - start < 20.0  # ended by the failure, long before the clip's end


@pytest.mark.slow
def test_stop_from_another_thread_ends_a_live_run(tiny_model, tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(4) * 200)  # 27 s of frames at 30 fps
    source = ImageFolderSource(folder, fps=30.0, realtime=True)
    twenty_sent = threading.Event()
    pipe = Pipeline(
        source,
        StreamingTracker(tiny_model),
        Compositor(CompositorSettings()),
        _Recorder(on_frame=lambda n: n == 20 and twenty_sent.set()),
        prompt=Prompt(box=(30, 25, 60, 70)),
    )
    stopped: list[float] = []

    def stop_after_twenty() -> None:
        if twenty_sent.wait(60):
            stopped.append(time.perf_counter())
            pipe.stop()

    threading.Thread(target=stop_after_twenty, daemon=True).start()
    summary = pipe.run()
    assert stopped, "the run ended before 20 frames were sent"
    # Promptly: within the tracker step in flight and the threads' joins (3 s leaves room for a
    # loaded 2-core machine; running on would take the clip's 27 s).
    assert time.perf_counter() - stopped[0] < 3.0
    assert 20 <= summary["frames_out"] < 20 + 90, "it stopped within 3 s of 30 fps frames"


@pytest.mark.slow
def test_matte_and_output_stay_in_step(tiny_model, tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(5))
    rec = _Recorder()
    with MatteWriter(tmp_path / "m") as matte:
        Pipeline(
            ImageFolderSource(folder),
            StreamingTracker(tiny_model),
            Compositor(CompositorSettings()),
            rec,
            prompt=Prompt(box=(30, 25, 60, 70)),
            matte=matte,
        ).run()
    assert len(rec.frames) == 5 == len(list((tmp_path / "m").glob("*.png")))


@pytest.mark.slow
def test_camera_lost_mid_stream_ends_the_run_with_a_clear_error(tiny_model, vcam_backend):
    from greenscreen_cam.errors import CameraLostError

    lost = CameraLostError("camera 0 stopped delivering frames and did not come back within 3 s")
    source = _FakeCamera(moving_disc_frames(5), lost=lost)
    with VirtualCameraSink(160, 120, 30.0, backend="greencam-test", pace=False) as vcam:
        pipe = Pipeline(
            source,
            StreamingTracker(tiny_model),
            Compositor(CompositorSettings()),
            vcam,
            prompt=Prompt(box=(30, 25, 60, 70)),
        )
        with pytest.raises(CameraLostError, match="stopped delivering"):
            pipe.run()
    assert source.closed and vcam_backend.instances[0].closed == 1
    assert len(vcam_backend.instances[0].frames) == 5


@pytest.mark.slow
def test_preview_hotkeys(tiny_model, tmp_path):
    """The preview's keys change the loop's state: pass-through, mask view, help, auto re-select, quit."""
    frames = moving_disc_frames(3)
    rec = _Recorder()
    events: list[str] = []
    pipe = Pipeline(
        ImageFolderSource(write_jpeg_folder(tmp_path / "f", frames)),
        StreamingTracker(tiny_model),
        Compositor(CompositorSettings()),
        rec,
        prompt=Prompt(box=(30, 25, 60, 70)),
        on_event=events.append,
    )
    frame = pipe.source.read()
    mask = pipe._track(frame)
    assert mask is not None and mask.logits is not None
    pipe._hotkey(ord(" "))  # pause keying: the camera passes through untouched
    pipe._emit(frame, mask.logits)
    assert np.array_equal(rec.frames[-1], frame.image) and "keying paused (pass-through)" in events
    pipe._hotkey(ord(" "))
    pipe._hotkey(ord("m"))  # mask view: the alpha as a grey picture
    pipe._emit(frame, mask.logits)
    view = rec.frames[-1]
    assert (view[..., 0] == view[..., 1]).all() and set(np.unique(view)) >= {0, 255}
    pipe._hotkey(ord("m"))
    pipe._hotkey(ord("h"))
    assert pipe._show_help
    pipe._hotkey(ord("a"))  # automatic re-selection: face search on, tracker reset by the tracking thread
    assert pipe._auto and "automatic re-selection" in events
    assert pipe.tracker.is_prompted, "the hotkey itself never touches the tracker"
    assert pipe._track(frame) is None  # no face in this picture: searching, plain key colour
    assert not pipe.tracker.is_prompted
    assert not pipe.stopping
    pipe._hotkey(ord("q"))
    assert pipe.stopping


def test_status_lines_in_a_log():
    import io

    from rich.console import Console

    from greenscreen_cam.config import Settings
    from greenscreen_cam.live.status import StatusLine

    buf = io.StringIO()
    status = StatusLine(Console(file=buf, width=300), Settings(device="cpu", resolution=256), interactive=False)
    snap = {
        "input_fps": 30.0,
        "output_fps": 30.0,
        "tracker_fps": 4.0,
        "latency_p50_ms": 8.0,
        "latency_p95_ms": 12.0,
        "delay_p50_ms": 120.0,
        "delay_p95_ms": 250.0,
        "sync": "nearest",
        "subject": "tracking",
        "seconds": 0.5,
    }
    with status:
        for t in (0.5, 1.0, 5.4, 5.6, 10.6):
            status.show(dict(snap, seconds=t))
        status.event("subject lost")
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("greencam: in")]
    assert len(lines) == 3 and "tracker   4.0 fps" in lines[0] and "tiny@256 cpu" in lines[0]
    assert "sync nearest +120/250 ms" in lines[0]
    assert buf.getvalue().splitlines()[-1] == "greencam: subject lost"


@pytest.mark.slow
def test_output_keeps_flowing_while_the_camera_reconnects(tiny_model, vcam_backend):
    """A camera that goes away for 0.6 s: the virtual camera keeps receiving frames, the status says
    "reconnecting", and keyed frames resume when the camera is back."""
    statuses: list[dict] = []
    with VirtualCameraSink(160, 120, 30.0, backend="greencam-test") as vcam:
        pipe = Pipeline(
            _FakeCamera(moving_disc_frames(30), gap_at=10, gap_s=0.6),
            StreamingTracker(tiny_model),
            Compositor(CompositorSettings()),
            vcam,
            prompt=Prompt(box=(30, 25, 60, 70)),
            sync="off",
            on_status=statuses.append,
        )
        summary = pipe.run()
    cam = vcam_backend.instances[0]
    assert summary["frames_out"] == 30 and summary["filler_frames"] >= 5
    assert len(cam.frames) == 30 + summary["filler_frames"]
    gaps = np.diff(cam.times)
    assert gaps.max() < 0.25, "the virtual camera never went a quarter second without a frame"
    assert "reconnecting" in [s["subject"] for s in statuses]
    assert statuses[-1]["subject"] != "reconnecting"
