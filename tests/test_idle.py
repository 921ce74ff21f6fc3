"""Idle when no app watches: a stand-in device file, a second process that opens and closes it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from greenscreen_cam import idle

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
        assert wait_for(lambda: watch.count == 1, 3.0)  # seen from the open event, not the 30 s poll
        proc.wait(5)
        assert wait_for(lambda: watch.count == 0, 3.0)
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


class Counting:
    """A stand-in camera and tracker that count what the idle loop makes them do."""

    def __init__(self, gate: idle.IdleGate) -> None:
        self.gate = gate
        self.lock = threading.Lock()
        self.opens = 1
        self.closes = 0
        self.steps = 0
        self.steps_while_idle = 0
        self.opens_while_idle = 0
        self.placeholders = 0
        self.is_idle = False
        self.resumed_at: list[float] = []
        self.first_frame_after_resume: list[float] = []
        self._awaiting_first = False

    def step(self) -> bool:
        with self.lock:
            self.steps += 1
            if self.is_idle:
                self.steps_while_idle += 1
            if self._awaiting_first:
                self.first_frame_after_resume.append(time.monotonic())
                self._awaiting_first = False
        time.sleep(0.01)
        return True

    def pause(self) -> None:
        with self.lock:
            self.closes += 1
            self.is_idle = True

    def resume(self) -> None:
        with self.lock:
            self.opens += 1
            self.is_idle = False
            self.resumed_at.append(time.monotonic())
            self._awaiting_first = True

    def placeholder(self) -> None:
        with self.lock:
            self.placeholders += 1


def test_idle_loop_does_no_camera_or_tracker_work_while_nobody_watches(device):
    gate = idle.IdleGate(hold_off=0.5)
    cam = Counting(gate)
    stop = threading.Event()
    states: list[bool] = []
    with open(device, "rb"), idle.ViewerWatch(device, poll_s=30.0, on_change=gate.update):
        stats = idle.IdleStats()
        runner = threading.Thread(
            target=idle.run_gated,
            kwargs=dict(
                gate=gate,
                step=cam.step,
                pause=cam.pause,
                resume=cam.resume,
                send_placeholder=cam.placeholder,
                stop=stop,
                placeholder_fps=10.0,
                max_seconds=20.0,
                stats=stats,
                on_state=states.append,
            ),
        )
        runner.start()
        try:
            assert wait_for(lambda: cam.is_idle, 3.0), "nobody watches: must go idle after the hold-off"
            time.sleep(1.0)
            with cam.lock:
                idle_steps, opens_at_idle = cam.steps, cam.opens
            time.sleep(0.5)
            with cam.lock:
                assert cam.steps == idle_steps and cam.steps_while_idle == 0
                assert cam.opens == opens_at_idle == 1
                assert cam.placeholders >= 5  # the device keeps getting cheap frames
            t_open = time.monotonic()
            proc = viewer(device, hold=2.0)
            assert wait_for(lambda: len(cam.first_frame_after_resume) == 1, 3.0)
            resume_latency = cam.first_frame_after_resume[0] - t_open
            assert resume_latency < 1.0, f"resumed after {resume_latency:.2f} s"
            assert cam.opens == 2
            proc.wait(10)
            assert wait_for(lambda: cam.is_idle, 3.0), "viewer gone: idle again after the hold-off"
        finally:
            stop.set()
            runner.join(10)
    assert not runner.is_alive()
    assert states[:3] == [True, False, True]
    assert stats.idle_periods == 2 and cam.steps_while_idle == 0


def test_support_says_when_it_cannot_tell():
    ok, why = idle.support("darwin", "OBS Virtual Camera")
    assert not ok and "cannot tell" in why
    ok, why = idle.support("win32", None)
    assert not ok and "cannot tell" in why
    assert idle.support("linux", "/dev/video10") == (True, "")


def test_placeholder_is_flat_and_sized():
    frame = idle.placeholder_frame(64, 48)
    assert frame.shape == (48, 64, 3) and frame.dtype.name == "uint8"
    assert (frame == frame[0, 0]).all()
