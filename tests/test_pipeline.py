"""The real-time loop: live pacing with a slower tracker, lost subjects, optical flow, stats, stopping."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.compositor import Compositor, CompositorSettings
from greenscreen_cam.pipeline import Pipeline, _FlowWarper
from greenscreen_cam.segmenter import Prompt, StreamingTracker
from greenscreen_cam.sinks import MatteWriter, MultiSink, VirtualCameraSink
from greenscreen_cam.sources import ImageFolderSource

from .conftest import moving_disc_frames, write_jpeg_folder


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


def test_live_output_keeps_the_source_rate_while_the_tracker_is_slower(tiny_model, tmp_path, vcam_backend):
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
            on_status=statuses.append,
        )
        summary = pipe.run()
    cam = vcam_backend.instances[0]
    # Every frame the source delivered was keyed and sent, at the source's pace...
    assert summary["frames_out"] == len(cam.frames) == summary["frames_in"] >= 40
    assert np.median(np.diff(cam.times)) == pytest.approx(1 / 30, abs=0.012)
    # ...while SAM 2 ran on far fewer of them (it is much slower than 30 fps on this CPU).
    assert 1 <= summary["tracked"] < summary["frames_in"]
    assert summary["output_fps"] == pytest.approx(len(cam.frames) / summary["seconds"], rel=0.01)
    assert 20 < summary["output_fps"] < 40
    assert summary["latency_p95_ms"] >= summary["latency_p50_ms"] > 0
    assert statuses and statuses[-1]["subject"] == "tracking"
    # Until the first mask exists the output is the plain key colour; afterwards the subject shows.
    first = cam.frames[0].reshape(120, 160, 3)
    last = cam.frames[-1].reshape(120, 160, 3)
    assert (first == KEY_COLOR).all() and not (last == KEY_COLOR).all()


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
        runs.append(rec.frames)
    assert len(runs[0]) == 6 and all(np.array_equal(a, b) for a, b in zip(*runs))


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


def test_lost_subject_sends_key_then_recovers(tiny_model, tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(9))
    events: list[str] = []
    rec = _Recorder()
    tracker = StreamingTracker(tiny_model)
    pipe = Pipeline(
        ImageFolderSource(folder),
        tracker,
        Compositor(CompositorSettings()),
        rec,
        prompt=Prompt(box=(30, 25, 60, 70)),
        lost_after=0.0,
        on_event=events.append,
        max_frames=3,
    )
    pipe.run()
    assert not (rec.frames[-1] == KEY_COLOR).all()
    # The subject disappears (SAM 2's object score goes negative): key colour only, and it is said once.
    with _object_score_bias(tiny_model, -20.0):
        pipe.max_frames = 6
        pipe._stop.clear()
        pipe.run()
    assert all((f == KEY_COLOR).all() for f in rec.frames[3:6])
    assert sum("subject lost" in e for e in events) == 1 and pipe.stats.subject == "lost"
    pipe.max_frames = 9
    pipe._stop.clear()
    pipe.run()
    assert "subject is back" in events and not (rec.frames[-1] == KEY_COLOR).all()


def test_stop_from_another_thread_ends_a_live_run(tiny_model, tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(4) * 200)
    source = ImageFolderSource(folder, fps=30.0, realtime=True)
    pipe = Pipeline(
        source,
        StreamingTracker(tiny_model),
        Compositor(CompositorSettings()),
        _Recorder(),
        prompt=Prompt(box=(30, 25, 60, 70)),
    )
    threading.Timer(0.8, pipe.stop).start()
    start = time.perf_counter()
    summary = pipe.run()
    assert time.perf_counter() - start < 2.0
    assert 10 < summary["frames_out"] < 60


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


def test_flow_moves_the_mask_with_the_subject():
    frames = moving_disc_frames(2)
    a, b = frames[0], frames[1].copy()
    b[:] = np.roll(a, 8, axis=1)  # the whole scene moves 8 px right
    logits = np.full((60, 80), -5.0, np.float32)
    logits[20:40, 20:35] = 5.0
    warped = _FlowWarper().warp(logits, a, b)
    cols = np.nonzero((warped > 0).any(axis=0))[0]
    # 8 px at 160 wide = 4 px on the 80-wide mask
    assert cols.min() == pytest.approx(24, abs=2) and cols.max() == pytest.approx(38, abs=2)


def test_camera_lost_mid_stream_ends_the_run_with_a_clear_error(tiny_model, vcam_backend):
    from greenscreen_cam.errors import CameraLostError
    from greenscreen_cam.sources import Frame

    class Unplugged:
        width, height, fps, live = 160, 120, 30.0, True

        def __init__(self) -> None:
            self.frames = moving_disc_frames(5)
            self.i = 0
            self.closed = False

        def read(self):
            if self.i >= len(self.frames):
                raise CameraLostError("camera 0 stopped delivering frames and did not come back within 3 s")
            time.sleep(1 / 30)
            self.i += 1
            return Frame(self.frames[self.i - 1], self.i - 1)

        def close(self) -> None:
            self.closed = True

    source = Unplugged()
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
    pipe._hotkey(ord(" "), frame)  # pause keying: the camera passes through untouched
    pipe._emit(frame, mask)
    assert np.array_equal(rec.frames[-1], frame.image) and "keying paused (pass-through)" in events
    pipe._hotkey(ord(" "), frame)
    pipe._hotkey(ord("m"), frame)  # mask view: the alpha as a grey picture
    pipe._emit(frame, mask)
    view = rec.frames[-1]
    assert (view[..., 0] == view[..., 1]).all() and set(np.unique(view)) >= {0, 255}
    pipe._hotkey(ord("m"), frame)
    pipe._hotkey(ord("h"), frame)
    assert pipe._show_help
    pipe._hotkey(ord("a"), frame)  # automatic re-selection: face search on, tracker reset by the tracking thread
    assert pipe._auto and "automatic re-selection" in events
    assert pipe.tracker.is_prompted, "the hotkey itself never touches the tracker"
    assert pipe._track(frame) is None  # no face in this picture: searching, plain key colour
    assert not pipe.tracker.is_prompted
    assert not pipe.stopping
    pipe._hotkey(ord("q"), frame)
    assert pipe.stopping


def test_status_lines_in_a_log(capsys):
    from greenscreen_cam.cli import _status_printer

    show = _status_printer("tiny", "cpu", 256, interactive=False, every=5.0)
    snap = {
        "input_fps": 30.0,
        "output_fps": 30.0,
        "tracker_fps": 4.0,
        "latency_p50_ms": 8.0,
        "latency_p95_ms": 12.0,
        "mask_age_ms": 200.0,
        "subject": "tracking",
        "seconds": 0.5,
    }
    for t in (0.5, 1.0, 5.4, 5.6, 10.6):
        show(dict(snap, seconds=t))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("greencam: in")]
    assert len(lines) == 3 and "tracker   4.0 fps" in lines[0] and "tiny@256 on cpu" in lines[0]
