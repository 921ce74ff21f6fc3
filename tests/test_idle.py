"""Idle when no app watches: a stand-in device file, a second process that opens and closes it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.bench.idle import LoopingWebcam
from greenscreen_cam.live import idle

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and inotify (Linux)")

VIEWER = """
import sys, time
path, hold, gap, times = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
for _ in range(times):
    with open(path, "rb"):
        time.sleep(hold)
    time.sleep(gap)
"""


def viewer(path: Path, hold: float, gap: float = 0.0, times: int = 1) -> subprocess.Popen[bytes]:
    """A second process that opens ``path``, holds it ``hold`` s, closes it, waits ``gap`` s; ``times`` times."""
    return subprocess.Popen([sys.executable, "-c", VIEWER, str(path), str(hold), str(gap), str(times)])


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture()
def device(tmp_path: Path) -> Path:
    path = tmp_path / "video10"
    path.write_bytes(b"\0")
    return path


def test_readers_leave_out_our_own_handle(device):
    with open(device, "rb"):  # greencam's own writer handle
        assert idle.readers(device) == []
        import os

        assert os.getpid() in idle.readers(device, exclude=())
    proc = viewer(device, hold=3.0)
    try:
        assert wait_for(lambda: idle.readers(device) == [proc.pid])
    finally:
        proc.kill()
        proc.wait(5)
    assert idle.readers(device) == []


def test_watch_sees_open_and_close_from_events(device):
    counts: list[int] = []
    with open(device, "rb"), idle.ViewerWatch(device, poll_s=30.0, on_change=counts.append) as watch:
        assert watch.inotify, "inotify must be available on Linux"
        assert watch.count == 0
        proc = viewer(device, hold=0.5)
        assert wait_for(lambda: watch.count == 1, 10.0)  # seen from the open event, not the 30 s poll
        proc.wait(5)
        assert wait_for(lambda: watch.count == 0, 10.0)
        assert watch.events >= 2 and watch.scans < 10
    assert counts == [1, 0]


def test_gate_holds_off_a_reader_that_opens_and_closes_often():
    now = [0.0]
    gate = idle.IdleGate(hold_off=5.0, clock=lambda: now[0])
    assert not gate.idle  # nobody yet, but within the start-up hold-off
    now[0] = 5.0
    assert gate.idle
    for t in range(6, 30, 3):  # Discord-like: open for 1 s every 3 s
        now[0] = float(t)
        gate.update(1)
        assert not gate.idle
        now[0] = t + 1.0
        gate.update(0)
        now[0] = t + 2.9
        assert not gate.idle, f"flapped at {t}"
    now[0] += 5.0
    assert gate.idle


def test_support_says_when_it_cannot_tell():
    ok, why = idle.support("darwin", "OBS Virtual Camera")
    assert not ok and "cannot tell" in why
    ok, why = idle.support("win32", None)
    assert not ok and "cannot tell" in why
    assert idle.support("linux", "/dev/video10") == (True, "")


def test_placeholder_is_flat_and_sized():
    frame = idle.placeholder_frame(64, 48)
    assert tuple(frame[0, 0]) == KEY_COLOR
    assert frame.shape == (48, 64, 3) and frame.dtype.name == "uint8"
    assert (frame == frame[0, 0]).all()


# --------------------------------------------------------------------------- the live loop, idle for real
# LoopingWebcam: a stand-in webcam (a capture factory playing frames at 30 fps) that counts its opens.
def test_camera_source_suspend_releases_the_device_and_resume_opens_it_again():
    from greenscreen_cam.media.sources import CameraSource
    from tests.conftest import moving_disc_frames

    webcam = LoopingWebcam(moving_disc_frames(4))
    src = CameraSource(0, capture_factory=webcam)
    assert src.read().index == 0 and src.opens == 1
    src.read()
    src.suspend()
    assert src.suspended and not webcam.light_on, "suspended: the webcam's light goes off"
    got: list = []
    reader = threading.Thread(target=lambda: got.append(src.read()))
    reader.start()
    time.sleep(0.3)
    assert reader.is_alive() and not got and src.opens == 1, "a read waits while suspended, nothing opens"
    src.resume()
    reader.join(5)
    assert got and got[0].index == 2 and src.opens == 2 and webcam.light_on
    assert src.reconnects == 0 and not src.reconnecting, "a resume is not a lost camera"
    src.suspend()
    reader = threading.Thread(target=lambda: got.append(src.read()))
    reader.start()
    src.close()  # closing while suspended ends the waiting read
    reader.join(5)
    assert not reader.is_alive() and got[-1] is None and not webcam.light_on


@pytest.mark.slow
def test_live_run_idles_without_a_viewer_and_resumes_with_its_selection(device, tiny_model, vcam_backend):
    """The real loop: no viewer -> no camera open and no tracker step; a viewer -> keyed frames again."""
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.sinks import VirtualCameraSink
    from greenscreen_cam.media.sources import CameraSource
    from greenscreen_cam.track.segmenter import Prompt, StreamingTracker
    from tests.conftest import moving_disc_frames

    webcam = LoopingWebcam(moving_disc_frames(30))
    src = CameraSource(0, capture_factory=webcam, reconnect_timeout=10)
    gate = idle.IdleGate(hold_off=0.3)
    events: list[str] = []
    first = viewer(device, hold=60.0)  # an app has the camera open from the start
    summary: dict = {}
    try:
        with (
            idle.ViewerWatch(device, poll_s=30.0, on_change=gate.update),
            VirtualCameraSink(160, 120, 30.0, backend="greencam-test", device=str(device), pace=False) as vcam,
        ):
            assert wait_for(lambda: gate.viewers == 1, 10.0)
            tracker = StreamingTracker(tiny_model)
            pipe = Pipeline(
                src,
                tracker,
                Compositor(CompositorSettings()),
                vcam,
                prompt=Prompt(box=(30, 25, 60, 70)),
                sync="off",
                idle=gate,
                idle_fps=10.0,
                on_event=events.append,
            )
            runner = threading.Thread(target=lambda: summary.update(pipe.run()))
            runner.start()
            try:
                assert wait_for(lambda: pipe.stats.tracked >= 2 and pipe.stats.keyed >= 2, 60.0)
                first.terminate()  # the app closes the virtual camera
                first.wait(10)
                assert wait_for(lambda: pipe.stats.subject == idle.IDLE_LABEL, 15.0), events
                opens, steps, sent = len(webcam.opened), pipe.stats.tracked, pipe.stats.idle_frames
                assert not webcam.light_on, "idle: the physical camera is closed"
                time.sleep(1.0)
                assert len(webcam.opened) == opens and pipe.stats.tracked == steps, "no camera open, no step"
                assert pipe.stats.idle_frames >= sent + 3, "placeholders keep the device alive"
                placeholder = vcam_backend.instances[0].frames[-1].reshape(-1, 3)  # RGB pixels, as the device got them
                assert (placeholder == placeholder[0]).all(), "the placeholder is one flat colour"
                second = viewer(device, hold=60.0)  # an app opens it again
                try:
                    assert wait_for(lambda: len(pipe.stats.resume_times) == 1, 60.0), events
                    assert len(webcam.opened) == opens + 1 and webcam.light_on
                    assert pipe.stats.tracked > steps and tracker.is_prompted
                finally:
                    second.terminate()
                    second.wait(10)
                assert wait_for(lambda: pipe.stats.idle_periods == 2, 15.0), "the viewer left: idle again"
                assert wait_for(lambda: not webcam.light_on, 5.0)
            finally:
                pipe.stop()
                runner.join(30)
    finally:
        first.kill()
        first.wait(10)
        src.close()
    assert not runner.is_alive() and summary["idle_periods"] == 2
    assert sum("subject selected" in e for e in events) == 1, "the selection was kept, not made again"
    assert [e for e in events if idle.IDLE_LABEL in e or "back on" in e] == [
        f"{idle.IDLE_LABEL}: no app has the virtual camera open, so the camera and the tracker are off",
        "an app opened the virtual camera: the camera and the tracker are back on",
        f"{idle.IDLE_LABEL}: no app has the virtual camera open, so the camera and the tracker are off",
    ], "idle, active, idle: in that order, once each"


def test_open_idle_says_when_it_stays_off(monkeypatch, device):
    from contextlib import ExitStack

    from greenscreen_cam.app import _open_idle
    from greenscreen_cam.config import Settings
    from greenscreen_cam.media.sources import CameraSource
    from tests.conftest import moving_disc_frames

    src = CameraSource(0, capture_factory=LoopingWebcam(moving_disc_frames(2)))
    said: list[str] = []
    with ExitStack() as stack:
        stack.callback(src.close)
        assert _open_idle(stack, Settings(idle="never"), src, [str(device)], keep_on=False, say=said.append) is None
        assert said == [], "--idle never: nothing to say"
        assert _open_idle(stack, Settings(), src, [str(device)], keep_on=True, say=said.append) is None
        assert "recording" in said[-1]
        monkeypatch.setattr(sys, "platform", "darwin")
        assert _open_idle(stack, Settings(), src, ["OBS Virtual Camera"], keep_on=False, say=said.append) is None
        assert "cannot tell" in said[-1]
        monkeypatch.setattr(sys, "platform", "linux")
        gate = _open_idle(stack, Settings(idle_after=2.5), src, [str(device)], keep_on=False, say=said.append)
        assert isinstance(gate, idle.IdleGate) and gate.hold_off == 2.5 and str(device) in said[-1]


@pytest.mark.slow
def test_bench_idle_counts_no_work_while_idle_and_times_a_resume():
    from greenscreen_cam.bench import bench_idle, bench_subjects
    from greenscreen_cam.config import ModelSettings

    settings = ModelSettings(model="tiny", resolution=256, device="cpu")
    r = bench_idle(settings, random_weights=True, seconds=0.5, resumes=1, hold_off=0.2, size=(160, 120))
    assert r["camera_opens_idle"] == 0 and r["tracker_steps_idle"] == 0
    assert r["resumes"] == 1 and r["resume_ms_p50"] > 0
    assert r["resume_ms_p50"] == pytest.approx(r["detect_ms"][0] + r["keyed_ms"][0], abs=0.2)
    assert r["cpu_idle_pct"] >= 0 and r["cpu_active_pct"] > 0
    r = bench_subjects(settings, random_weights=True, counts=(1, 2), frames=2, size=(160, 120))
    assert [row["subjects"] for row in r["rows"]] == [1, 2] and len(r["rows"][1]["memory_bytes"]) == 2
    assert r["rows"][0]["frame_ms_p50"] > 0 and "extra_subject_ratio" in r
