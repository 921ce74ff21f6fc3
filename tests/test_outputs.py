"""Outputs: the registry that reads --output, and sinks on threads of their own (a slow one never stalls keying)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from greenscreen_cam.cli import app
from greenscreen_cam.errors import SinkError
from greenscreen_cam.key.compositor import Compositor, CompositorSettings
from greenscreen_cam.live.pipeline import Pipeline
from greenscreen_cam.media import outputs
from greenscreen_cam.media.outputs import OutputKind, ThreadedSink, buffer_depth
from greenscreen_cam.media.sinks import MultiSink
from greenscreen_cam.media.sources import ImageFolderSource
from greenscreen_cam.track.prompt import Prompt

from .conftest import moving_disc_frames, write_jpeg_folder, write_video
from .test_tracking import BoxTracker

runner = CliRunner()


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.frames: list[np.ndarray] = []
        self.delay = delay
        self.closed = self.aborted = False

    def send(self, frame: np.ndarray) -> None:
        time.sleep(self.delay)
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Stuck(Recorder):
    """An output that hangs on its first frame until released (a stalled network stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send(self, frame: np.ndarray) -> None:
        self.release.wait(10.0)
        super().send(frame)


class FullDisk(Recorder):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def send(self, frame: np.ndarray) -> None:
        if len(self.frames) == self.fail_at:
            raise SinkError("cannot write frame 3 to out.mp4: no space left on device")
        super().send(frame)


# ----------------------------------------------------------------- the registry
@pytest.mark.parametrize(
    ("text", "kind", "path"),
    [
        ("virtual", "virtual", None),
        ("out.mp4", "file", Path("out.mp4")),
        ("sub/dir/clip.mkv", "file", Path("sub/dir/clip.mkv")),
        ("file:///tmp/x.mp4", "file", Path("/tmp/x.mp4")),
        ("FILE://rel.avi", "file", Path("rel.avi")),
        ("virtual.mp4", "file", Path("virtual.mp4")),
    ],
)
def test_output_values_pick_their_kind(text, kind, path):
    target = outputs.parse_output(text)
    assert (target.kind, target.path) == (kind, path)


@pytest.mark.parametrize("text", ["rtmp://live.example.org/app/key", "ndi://studio", "srt://h:9000"])
def test_an_unknown_scheme_is_one_clear_error_not_a_file_name(text):
    with pytest.raises(SinkError) as info:
        outputs.parse_output(text)
    message = str(info.value)
    scheme = text.split("://")[0]
    assert message.startswith(f"--output {text}: no output handles {scheme}:// here; supported: virtual")
    assert "a video file (.mp4" in message and "unsupported extension" not in message
    assert info.value.exit_code == 5


def test_start_refuses_an_unknown_scheme_before_anything_opens(tmp_path):
    result = runner.invoke(
        app, ["start", "--source", str(tmp_path / "absent.mp4"), "--output", "rtmp://h/live", "--device", "cpu"]
    )
    assert result.exit_code == 5
    assert "no output handles rtmp:// here" in result.output and "Traceback" not in result.output


@pytest.fixture()
def memory_output():
    """A new output kind plugged in through the registry: ``mem://NAME`` records frames."""
    opened: dict[str, Recorder] = {}

    def open_mem(target, ctx):
        name = target.text.split("://", 1)[1]
        opened[name] = FullDisk(3) if name == "full" else Recorder()
        return opened[name]

    outputs.register_output(OutputKind("mem", open_mem, "mem:// (test)", schemes=("mem",)))
    yield opened
    outputs.unregister_output("mem")


def _start_args(tmp_path: Path, *outs: str) -> list[str]:
    src = write_video(tmp_path / "in.mp4", moving_disc_frames(6))
    args = ["start", "--source", str(src), "--bbox", "30,25,60,70", "--device", "cpu", "--resolution", "256"]
    for o in outs:
        args += ["--output", o]
    return args


def test_a_registered_output_kind_plugs_into_start(tmp_path, checkpoint_dir, monkeypatch, memory_output):
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    result = runner.invoke(app, _start_args(tmp_path, "mem://a", str(tmp_path / "out.mp4")))
    assert result.exit_code == 0, result.output
    rec = memory_output["a"]
    assert len(rec.frames) == 6 and rec.closed, "an offline run hands every frame to every output"
    assert (tmp_path / "out.mp4").exists()


def test_an_error_on_a_sink_thread_ends_the_run_with_its_line_and_exit_code(
    tmp_path, checkpoint_dir, monkeypatch, memory_output
):
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    result = runner.invoke(app, _start_args(tmp_path, "mem://full", str(tmp_path / "out.mp4")))
    assert result.exit_code == 5, (result.output, memory_output["full"].frames, result.exception)
    assert "no space left on device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.mp4").exists(), "a failed run writes no partial file"
    assert memory_output["full"].aborted


# ----------------------------------------------------------------- threaded sinks
def test_a_blocked_output_never_stalls_keying_nor_the_other_outputs(tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(30))
    stuck, fine = Stuck(), Recorder()
    sink = MultiSink([ThreadedSink(stuck, name="stuck", policy="drop"), ThreadedSink(fine, name="fine", policy="drop")])
    pipe = Pipeline(
        ImageFolderSource(folder, fps=30.0, realtime=True),
        BoxTracker(),
        Compositor(CompositorSettings()),
        sink,
        prompt=Prompt(box=(0, 0, 80, 120)),
        sync="off",
    )
    start = time.perf_counter()
    summary = pipe.run()
    elapsed = time.perf_counter() - start
    try:
        assert elapsed < 8.0, "the keying loop ran at the camera's pace, not the stuck output's (10 s)"
        assert summary["frames_out"] == summary["frames_in"] >= 20
        assert len(fine.frames) >= 0.8 * summary["frames_out"], "the other output got (nearly) every frame"
        assert summary["sinks"]["stuck"]["sent"] == 0
        assert summary["sinks"]["stuck"]["dropped"] >= summary["frames_out"] - 2
        assert summary["sink_dropped"] >= summary["sinks"]["stuck"]["dropped"]
    finally:
        stuck.release.set()
        sink.close()
    assert stuck.closed and fine.closed and len(stuck.frames) == 2, "the frame in progress and the newest one"


def test_block_policy_delivers_every_frame_in_order():
    slow = Recorder(delay=0.01)
    threaded = ThreadedSink(slow, name="slow", policy="block", depth=2)
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(25)]
    for f in frames:
        threaded.send(f)
    threaded.close()
    assert [int(f[0, 0, 0]) for f in slow.frames] == list(range(25)) and slow.closed
    assert threaded.dropped == 0


def test_the_live_outputs_lag_is_measured_and_a_buffering_file_does_not_count():
    """What a frame handed over still takes to be out (the delayed microphone adds it to the picture's delay)."""
    live = ThreadedSink(Recorder(delay=0.04), name="virtual", policy="drop")
    quick = ThreadedSink(Recorder(), name="stream", policy="drop")
    file = ThreadedSink(Recorder(delay=0.2), name="file.mp4", policy="buffer", depth=4)
    both = MultiSink([quick, live, file])
    assert outputs.sink_lag(both) == 0.0  # nothing sent yet
    for i in range(6):
        both.send(np.full((4, 4, 3), i, np.uint8))
        time.sleep(0.06)  # slower than the live output: nothing is dropped on its thread
    lag = outputs.sink_lag(both)
    assert 0.035 <= lag < 0.15, lag  # the slow live output's 40 ms, not the file's 200 ms backlog
    assert outputs.sink_lag(quick) < 0.03
    assert outputs.sink_lag(Recorder()) == 0.0  # not threaded: its send was the output
    both.close()


def test_buffer_policy_rides_out_a_stall_and_then_drops_the_oldest_never_waiting():
    """A live recording: a disk that pauses loses nothing within the buffer; past it the oldest frames go."""

    class Hangs(Stuck):
        entered = threading.Event()

        def send(self, frame: np.ndarray) -> None:
            self.entered.set()
            super().send(frame)

    stuck = Hangs()
    threaded = ThreadedSink(stuck, name="rec.mp4", policy="buffer", depth=6)
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(10)]
    threaded.send(frames[0])
    assert stuck.entered.wait(5.0)  # frame 0 is being written, and hangs (until released: for ever)
    started = time.monotonic()
    for f in frames[1:]:
        threaded.send(f)  # 1-9 arrive while it hangs
    # A send that waited for the output would wait for ever; 5 s leaves room for a loaded machine.
    assert time.monotonic() - started < 5.0, "send never waits for the output"
    stuck.release.set()
    threaded.close()
    got = [int(f[0, 0, 0]) for f in stuck.frames]
    assert got == [0, *range(4, 10)] and threaded.dropped == 3, "the newest 6 waited in order; 1-3 were dropped"
    assert buffer_depth(1280, 720, 30.0) == 30 and buffer_depth(7680, 4320, 60.0) == 2


def test_block_policy_raises_a_late_error_on_close_and_aborts_the_output():
    full = FullDisk(fail_at=3)
    threaded = ThreadedSink(full, name="out.mp4", policy="block", depth=8)
    for i in range(5):
        threaded.send(np.full((2, 2, 3), i, np.uint8))  # queued before the thread reaches frame 3
    with pytest.raises(SinkError, match="no space left"):
        threaded.close()
    assert full.aborted and not full.closed


def test_a_sink_bug_becomes_one_sink_error():
    class Broken(Recorder):
        def send(self, frame):
            raise ValueError("bad frame shape")

    threaded = ThreadedSink(Broken(), name="x.mp4", policy="drop")
    threaded.send(np.zeros((2, 2, 3), np.uint8))
    deadline = time.monotonic() + 5
    while threaded.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(SinkError, match=r"output x.mp4 failed: ValueError: bad frame shape"):
        threaded.send(np.zeros((2, 2, 3), np.uint8))
    threaded.abort()


@pytest.mark.slow
def test_abort_of_a_hung_output_returns_promptly():
    stuck = Stuck()
    threaded = ThreadedSink(stuck, name="stuck", policy="block", depth=1)
    for _ in range(2):  # one in the hung send, one filling the queue
        threaded.send(np.zeros((2, 2, 3), np.uint8))
    start = time.perf_counter()
    threaded.abort()
    assert time.perf_counter() - start < 8.0 and stuck.aborted, "within the 5 s grace, not the 10 s hang"
    stuck.release.set()
