"""A camera left on all day: CPU with and without a viewer, resume latency, and the cost per extra subject.

:func:`bench_idle` runs the real live loop (:class:`~greenscreen_cam.live.pipeline.Pipeline` with a
:class:`~greenscreen_cam.media.sources.CameraSource`, the tracker, the compositor and the idle gate)
over a stand-in webcam (:class:`LoopingWebcam`, a capture that plays generated frames at 30 fps)
and a stand-in device file watched the way a v4l2loopback device is; a second process opens and
closes that file as a call app would. :func:`bench_subjects` times :class:`~greenscreen_cam.track.multi.MultiTracker`
with 1, 2, ... subjects on the same frames.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from greenscreen_cam.bench.common import (
    CountingSink,
    load_bench_tracker,
    machine,
    median_ms,
    synthetic_frames,
    versions,
)

if TYPE_CHECKING:
    from greenscreen_cam.config import ModelSettings

__all__ = ["LoopingWebcam", "bench_idle", "bench_subjects"]

_VIEWER = (
    "import sys, time\nwith open(sys.argv[1], 'rb'):\n    print(time.monotonic(), flush=True)\n    sys.stdin.read()\n"
)


class _Capture:
    """One opened stand-in webcam: ``cv2.VideoCapture``'s methods over looping frames at ``fps``."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float) -> None:
        self.frames, self.fps, self.i, self.released = frames, fps, 0, False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.released:
            return False, None
        time.sleep(1.0 / self.fps)  # a webcam delivers at its own pace
        image = np.ascontiguousarray(self.frames[self.i % len(self.frames)][..., ::-1])  # BGR, as OpenCV gives
        self.i += 1
        return True, image

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


class LoopingWebcam:
    """A ``capture_factory`` for :class:`~greenscreen_cam.media.sources.CameraSource` that plays ``frames`` (RGB) in a loop.

    It keeps every capture it opened (:attr:`opened`), so a caller can count opens and see
    whether the device is held (:attr:`light_on`).
    """

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 30.0) -> None:
        self.frames, self.fps = list(frames), fps
        self.opened: list[_Capture] = []

    def __call__(self, target: object, backend: int) -> _Capture:
        cap = _Capture(self.frames, self.fps)
        self.opened.append(cap)
        return cap

    @property
    def light_on(self) -> bool:
        """Whether any capture is still open (a real webcam's light would be on)."""
        return any(not c.released for c in self.opened)


class _Viewer:
    """A second process holding ``path`` open until :meth:`close`; :attr:`opened_at` is its ``time.monotonic()``."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _VIEWER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.opened_at = float(self.proc.stdout.readline() or "nan")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench idle: {what} did not happen within {timeout:g} s")
        time.sleep(0.01)


def _cpu_share(seconds: float) -> float:
    """Percent of one core this process (every thread) used over the next ``seconds``."""
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (time.process_time() - cpu) / max(time.monotonic() - wall, 1e-9)


def bench_idle(
    settings: ModelSettings,
    *,
    random_weights: bool = False,
    seconds: float = 10.0,
    resumes: int = 5,
    hold_off: float = 1.0,
    size: tuple[int, int] = (640, 360),
) -> dict[str, Any]:
    """CPU use with a viewer and without one, and the resume latency, of the real live loop.

    Args:
        settings: Model, resolution and device, as ``greencam start`` takes them.
        random_weights: Seeded random weights instead of a checkpoint.
        seconds: Length of each CPU measurement (with a viewer, then idle).
        resumes: Viewer arrivals to time (each after the loop has gone idle again).
        hold_off: ``--idle-after`` for the run.
        size: ``(width, height)`` of the stand-in webcam's frames.

    Returns:
        ``cpu_active_pct`` / ``cpu_idle_pct`` (percent of one core, the whole process),
        ``camera_opens_idle`` / ``tracker_steps_idle`` (counted while idle: both 0), and per
        resume ``detect_ms`` (a viewer's ``open()`` to greencam seeing it), ``keyed_ms`` (from
        then to the first frame keyed with a mask of a frame captured after the resume) and
        ``resume_ms`` (their sum); medians as ``*_p50``.
    """
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.live.idle import IDLE_LABEL, IdleGate, ViewerWatch
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.sources import CameraSource
    from greenscreen_cam.track.prompt import Prompt, default_box

    width, height = size
    with tempfile.TemporaryDirectory(prefix="greencam-bench-idle-") as tmp:
        tracker, choice = load_bench_tracker(settings, random_weights, Path(tmp))
        webcam = LoopingWebcam(synthetic_frames(30, width, height))
        device = Path(tmp) / "video-stand-in"
        device.write_bytes(b"\0")
        gate = IdleGate(hold_off)
        seen: list[float] = []

        def on_change(viewers: int) -> None:
            if viewers > 0:
                seen.append(time.monotonic())
            gate.update(viewers)

        src = CameraSource(0, capture_factory=webcam, reconnect_timeout=30.0)
        pipe = Pipeline(
            src,
            tracker,
            Compositor(CompositorSettings()),
            CountingSink(),
            prompt=Prompt.from_box(default_box(width, height)),
            sync="auto",
            idle=gate,
        )
        is_idle = lambda: pipe.stats.subject == IDLE_LABEL  # noqa: E731
        detect, keyed = [], []
        with ViewerWatch(device, on_change=on_change):
            viewer = _Viewer(device)
            runner = threading.Thread(target=pipe.run, name="bench-idle", daemon=True)
            runner.start()
            try:
                _wait(lambda: pipe.stats.tracked >= 3, 600.0, "three tracker steps")
                steps, cpu_active = pipe.stats.tracked, _cpu_share(seconds)
                active_fps = (pipe.stats.tracked - steps) / seconds
                viewer.close()
                _wait(is_idle, hold_off + 120.0, "going idle")
                opens, steps = len(webcam.opened), pipe.stats.tracked
                cpu_idle = _cpu_share(seconds)
                opens_idle, steps_idle = len(webcam.opened) - opens, pipe.stats.tracked - steps
                for _ in range(resumes):
                    before = len(pipe.stats.resume_times)
                    viewer = _Viewer(device)
                    _wait(lambda: len(pipe.stats.resume_times) > before, 600.0, "a keyed frame after resuming")  # noqa: B023
                    detect.append(seen[-1] - viewer.opened_at)
                    keyed.append(pipe.stats.resume_times[-1])
                    viewer.close()
                    _wait(is_idle, hold_off + 120.0, "going idle again")
            finally:
                viewer.close()
                pipe.stop()
                runner.join(60)
                src.close()
    detect_ms = [1000.0 * v for v in detect]
    keyed_ms = [1000.0 * v for v in keyed]
    resume_ms = [d + k for d, k in zip(detect_ms, keyed_ms, strict=True)]
    return {
        "kind": "idle",
        "model": choice.describe(),
        "frame_size": f"{width}x{height}",
        "hold_off_s": hold_off,
        "seconds_each": seconds,
        "cpu_active_pct": round(cpu_active, 1),
        "tracker_fps_active": round(active_fps, 2),
        "cpu_idle_pct": round(cpu_idle, 2),
        "camera_opens_idle": opens_idle,
        "tracker_steps_idle": steps_idle,
        "resumes": len(resume_ms),
        "detect_ms": [round(v, 1) for v in detect_ms],
        "keyed_ms": [round(v, 1) for v in keyed_ms],
        "resume_ms": [round(v, 1) for v in resume_ms],
        "detect_ms_p50": round(median_ms(detect_ms), 1),
        "keyed_ms_p50": round(median_ms(keyed_ms), 1),
        "resume_ms_p50": round(median_ms(resume_ms), 1),
        "machine": machine(),
        "versions": versions(),
    }


def bench_subjects(
    settings: ModelSettings,
    *,
    counts: Sequence[int] = (1, 2, 3),
    frames: int = 8,
    random_weights: bool = False,
    size: tuple[int, int] = (640, 360),
) -> dict[str, Any]:
    """Median time per tracked frame with 1, 2, ... subjects (one image encoding per frame, one step per subject).

    Every count runs the same frames, one after the other in one process; ``extra_subject_ratio``
    is (the frame time with the most subjects / with one - 1) / (extra subjects): what each extra
    subject adds, as a share of a one-subject frame.
    """
    from greenscreen_cam.track.multi import MultiTracker
    from greenscreen_cam.track.prompt import Prompt

    width, height = size
    clip = synthetic_frames(frames + 1, width, height)
    with tempfile.TemporaryDirectory(prefix="greencam-bench-subjects-") as tmp:
        tracker, choice = load_bench_tracker(settings, random_weights, Path(tmp))
        rows: list[dict[str, Any]] = []
        for n in counts:
            multi = MultiTracker(
                tracker.model, autocast=getattr(tracker, "autocast", None), engine=getattr(tracker, "engine", None)
            )
            step = width // (n + 1)
            boxes = [
                Prompt(box=(step * (i + 1) - step // 3, height // 6, 2 * step // 3, 2 * height // 3)) for i in range(n)
            ]
            multi.prompt(clip[0], boxes)
            times = []
            for image in clip[1:]:
                t = time.perf_counter()
                multi.track(image)
                times.append(1000.0 * (time.perf_counter() - t))
            rows.append(
                {"subjects": n, "frame_ms_p50": round(median_ms(times), 1), "memory_bytes": multi.stored_bytes()}
            )
    one, most = rows[0], rows[-1]
    extra = int(most["subjects"]) - int(one["subjects"])
    ratio = (float(most["frame_ms_p50"]) / float(one["frame_ms_p50"]) - 1.0) / extra if extra else 0.0
    return {
        "kind": "subjects",
        "model": choice.describe(),
        "frame_size": f"{width}x{height}",
        "frames": frames,
        "rows": rows,
        "extra_subject_ratio": round(ratio, 3),
        "machine": machine(),
        "versions": versions(),
    }
