"""Frame-accurate keying: the scheduler on a fake clock, the threaded tracker, the optical-flow step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from greenscreen_cam.core import Frame
from greenscreen_cam.errors import ConfigError
from greenscreen_cam.key.oracle import OracleTracker, SimClock, replay
from greenscreen_cam.key.sync import (
    FlowWarper,
    Keyed,
    KeyScheduler,
    MaskResult,
    ThreadedTracker,
    warp_logits,
)
from tests.conftest import moving_disc_frames

FPS = 30.0


class FakeTracker(OracleTracker):
    """The oracle tracker with a duration per frame: frame ``i`` takes ``duration(i)`` s (``inf`` = stalls for good).

    Its logits are constant and equal to the tracked frame's index, so a test can tell whose mask
    keyed a frame; :attr:`submitted` lists the indices it was given.
    """

    def __init__(self, clock: SimClock, duration: Callable[[int], float], shape: tuple[int, int] = (12, 16)) -> None:
        super().__init__([], clock, 0.0)
        self.duration = duration
        self.shape = shape
        self.submitted: list[int] = []

    def _duration(self, frame: Frame) -> float:
        return self.duration(frame.index)

    def _logits(self, index: int) -> np.ndarray:
        return np.full(self.shape, float(index), np.float32)

    def submit(self, frame: Frame) -> None:
        self.submitted.append(frame.index)
        super().submit(frame)


def frames(n: int) -> list[np.ndarray]:
    return moving_disc_frames(n, width=64, height=48)


def run(
    mode: str, duration: Callable[[int], float], n: int = 60, *, until: float | None = None, **options: object
) -> tuple[list[Keyed], KeyScheduler, FakeTracker]:
    clock = SimClock()
    scheduler = KeyScheduler(mode, clock=clock, **options)  # type: ignore[arg-type]
    tracker = FakeTracker(clock, duration)
    out = replay(frames(n), scheduler, tracker, clock, FPS, until=until)
    return out, scheduler, tracker


def indices(out: list[Keyed]) -> list[int]:
    return [k.frame.index for k in out]


# ----------------------------------------------------------------------------- scheduling
@pytest.mark.parametrize("mode", ["on", "auto"])
def test_fast_tracker_keys_every_frame_with_its_own_mask(mode: str) -> None:
    out, scheduler, tracker = run(mode, lambda i: 0.010)
    assert indices(out) == list(range(60))
    assert [k.source for k in out] == ["own"] * 60
    assert all(k.mask_index == k.frame.index and float(k.logits[0, 0]) == k.frame.index for k in out)  # type: ignore[index]
    assert max(k.delay for k in out) == pytest.approx(0.010)
    assert tracker.submitted == list(range(60))
    stats = scheduler.stats()
    assert stats["own_mask_share"] == 1.0
    assert stats["delay_ms_p50"] == pytest.approx(10.0) and stats["delay_ms_p95"] == pytest.approx(10.0)
    assert stats["sync_in_force"] == "own"


def test_off_keys_with_the_newest_mask_at_once() -> None:
    out, scheduler, _ = run("off", lambda i: 0.010)
    assert indices(out) == list(range(60))
    assert all(k.delay == 0.0 for k in out)
    assert out[0].source == "none" and out[0].logits is None
    assert all(k.source == "newest" and k.mask_index == k.frame.index - 1 for k in out[1:])
    assert scheduler.stats()["own_mask_share"] == 0.0
    assert scheduler.mode_in_force() == "off"


def test_off_with_flow_moves_the_newest_mask() -> None:
    out, scheduler, _ = run("off", lambda i: 0.010, flow=True)
    assert [k.source for k in out[1:]] == ["flow"] * 59
    assert scheduler.mode_in_force() == "off+flow"


@pytest.mark.parametrize(("mode", "cap"), [("auto", 0.2), ("on", 0.5)])
def test_slow_tracker_delay_is_bounded_and_output_in_order(mode: str, cap: float) -> None:
    out, scheduler, tracker = run(mode, lambda i: 0.15, n=90, max_delay=0.2, hold_limit=0.5)
    assert indices(out) == list(range(90))
    assert max(k.delay for k in out) <= cap + 1e-9
    assert scheduler.held == 0
    tracked = set(tracker.submitted)
    assert len(tracked) < 25  # the tracker saw one frame in about five
    for k in out:
        if k.frame.index in tracked:
            assert k.source == "own"
        else:
            assert k.source == "flow" and k.mask_index in tracked
    # Not past the cap, each frame gets the nearest tracked frame's mask, before or after it.
    assert any(k.mask_index is not None and k.mask_index > k.frame.index for k in out)


def test_on_uses_the_nearest_tracked_frame() -> None:
    out, _, tracker = run("on", lambda i: 0.2, n=60, hold_limit=1.0)
    tracked = sorted(set(tracker.submitted))
    for k in out[tracked[0] :]:
        if k.frame.index > tracked[-1]:
            break
        nearest = min(abs(t - k.frame.index) for t in tracked)
        assert k.mask_index is not None and abs(k.mask_index - k.frame.index) == nearest


def test_playout_delay_is_steady() -> None:
    out, scheduler, _ = run("on", lambda i: 0.2, n=120, hold_limit=1.0)
    steady = [k.delay for k in out[40:100]]
    assert max(steady) - min(steady) < 1.0 / FPS  # a constant playout delay, not bursts
    assert scheduler.stats()["target_delay_ms"] == pytest.approx(np.percentile([d * 1000 for d in steady], 95), abs=35)


def test_steady_playout_holds_one_delay_through_jitter_and_moves_in_steps() -> None:
    """``steady`` (a delayed microphone follows it): a jittery tracker gets one delay, not a drifting one;
    a slower tracker raises it at once, a faster one lowers it only after a while."""

    def duration(i: int) -> float:  # 0.18-0.26 s of jitter, then a slow patch, then fast again
        if 150 <= i < 240:
            return 0.35
        if i >= 240:
            return 0.08
        return 0.18 + 0.08 * ((i * 7919) % 13) / 12

    out, _, _ = run("on", duration, n=420, hold_limit=1.0, steady=True)
    plain, _, _ = run("on", duration, n=420, hold_limit=1.0)
    assert indices(out) == list(range(420))
    delays = [round(k.delay, 4) for k in out]

    def distinct(values: list[float]) -> int:
        return len({round(v * 100) for v in values})  # 10 ms bins

    assert distinct(delays[60:140]) == 1, delays[60:140]  # held through the jitter
    assert distinct([round(k.delay, 4) for k in plain[60:140]]) > 1  # where the plain playout drifts
    before, slow = delays[130], max(delays[150:240])
    assert slow > before + 0.1  # raised for the slow patch
    assert min(delays[250:300]) >= slow - 0.05, delays[240:300]  # not lowered at once
    assert delays[-1] < slow - 0.2, delays[300:]  # lowered once the tracker stayed fast
    assert distinct(delays[-40:]) == 1


def test_stalled_tracker_grows_nothing() -> None:
    stall_after = 3

    def duration(i: int) -> float:
        return 0.02 if i < stall_after else float("inf")

    for mode in ("on", "auto", "off"):
        clock = SimClock()
        scheduler = KeyScheduler(mode, clock=clock, max_delay=0.1, hold_limit=0.4, flow=True, max_held=50)
        tracker = FakeTracker(clock, duration)
        images = frames(8)
        out: list[Keyed] = []
        held, stored = [], []
        for i in range(600):  # 20 s of camera with a tracker that never answers again
            clock.now = i / FPS
            for r in tracker.poll():
                scheduler.add_result(r)
            scheduler.push(Frame(images[i % 8], i, clock.now))
            sub = scheduler.take_submission(tracker.busy)
            if sub is not None:
                tracker.submit(sub)
            out.extend(scheduler.pop_ready(clock.now))
            held.append(scheduler.held)
            stored.append(scheduler.stored_results)
        cap = {"on": 0.4, "auto": 0.1, "off": 0.0}[mode]
        assert max(held) <= cap * FPS + 2
        assert max(stored) <= 2
        assert len(scheduler._grays) <= scheduler._history and len(scheduler._chains) <= 16
        assert len(scheduler._flows) <= 32
        assert indices(out) == list(range(len(out))) and len(out) >= 600 - cap * FPS - 1
        assert max(k.delay for k in out) <= cap + 1e-9
        # Past the stall, frames leave with the last mask at hand, moved by flow.
        assert {k.mask_index for k in out[100:]} == {stall_after - 1}
        assert scheduler.mode_in_force() in ("capped", "off+flow")


def test_ring_bound_drops_and_counts() -> None:
    clock = SimClock()
    scheduler = KeyScheduler("on", clock=clock, hold_limit=10.0, max_held=5, flow=False)
    for i in range(12):
        scheduler.push(Frame(np.zeros((4, 4, 3), np.uint8), i, i / FPS))
    assert scheduler.held == 5
    assert scheduler.stats()["sync_dropped"] == 7
    out = scheduler.flush(1.0)
    assert indices(out) == [7, 8, 9, 10, 11] and all(k.source == "none" for k in out)


@pytest.mark.parametrize("mode", ["on", "auto", "off"])
def test_clean_stop_with_frames_in_flight(mode: str) -> None:
    out, scheduler, tracker = run(mode, lambda i: 0.2, n=60, until=1.0, hold_limit=0.5)
    assert tracker.busy  # stopped with a frame in the tracker
    assert scheduler.held == 0
    pushed = int(1.0 * FPS) + 1
    assert indices(out) == list(range(pushed))  # every captured frame went out once, in order
    assert all(k.delay <= 0.5 + 1e-9 for k in out)


def test_auto_switches_when_the_tracker_slows_down() -> None:
    clock = SimClock()
    scheduler = KeyScheduler("auto", clock=clock, max_delay=0.15)
    slow_from = 60
    tracker = FakeTracker(clock, lambda i: 0.01 if i < slow_from else 0.3)
    images = frames(150)
    seen: dict[int, str] = {}  # frames captured so far -> the mode in force then

    def record(captured: int) -> None:
        seen[captured] = scheduler.mode_in_force()

    out = replay(images, scheduler, tracker, clock, FPS, on_step=record)
    assert seen[slow_from - 5] == "own"
    assert seen[149] in ("nearest", "capped")
    assert indices(out) == list(range(150))
    assert all(k.source == "own" for k in out[: slow_from - 1])
    assert sum(k.source == "own" for k in out[slow_from + 20 :]) < 0.3 * len(out[slow_from + 20 :])
    assert max(k.delay for k in out) <= 0.15 + 1e-9


def test_result_without_mask_keys_nothing_and_is_not_waited_for() -> None:
    clock = SimClock()
    scheduler = KeyScheduler("on", clock=clock, hold_limit=1.0)
    frame = Frame(np.zeros((8, 8, 3), np.uint8), 0, 0.0)
    scheduler.push(frame)
    assert scheduler.take_submission(busy=False) is frame
    assert scheduler.take_submission(busy=False) is None  # nothing newer to give
    assert scheduler.pop_ready(0.01) == []  # waiting for its own mask
    clock.now = 0.02
    scheduler.add_result(MaskResult(0, 0.0, None, visible=False))
    (keyed,) = scheduler.pop_ready(0.02)
    assert keyed.source == "none" and keyed.logits is None and keyed.delay == pytest.approx(0.02)


def test_a_frame_the_tracker_never_answers_is_not_waited_for() -> None:
    """A remote tracker may drop a frame; once a later frame is answered, nothing waits for it."""
    clock = SimClock()
    scheduler = KeyScheduler("on", clock=clock, hold_limit=1.0)
    images = frames(6)
    for i in range(6):
        clock.now = i / FPS
        scheduler.push(Frame(images[i], i, clock.now))
        if i in (0, 5):
            assert scheduler.take_submission(busy=False) is not None
    clock.now = 0.3
    scheduler.add_result(MaskResult(5, 5 / FPS, np.full((12, 16), 5.0, np.float32)))
    out = scheduler.pop_ready(0.3)
    assert indices(out) == [0]  # ready at once, long before the 1 s hold limit
    for _ in range(10):  # the others follow, each when due: at the same (steady) delay
        deadline = scheduler.next_deadline()
        if deadline is None:
            break
        out += scheduler.pop_ready(deadline)
    assert indices(out) == [0, 1, 2, 3, 4, 5]
    assert [k.delay for k in out] == pytest.approx([0.3] * 6, abs=0.01)
    assert [k.source for k in out] == ["flow"] * 5 + ["own"]
    assert all(k.mask_index == 5 for k in out)


def test_forget_masks_after_a_reselection() -> None:
    clock = SimClock()
    scheduler = KeyScheduler("on", clock=clock, hold_limit=1.0)
    images = frames(8)
    for i in range(8):
        scheduler.push(Frame(images[i], i, i / FPS))
    for i in (0, 6):
        scheduler.add_result(MaskResult(i, i / FPS, np.full((12, 16), float(i), np.float32)))
    scheduler.forget_masks(before=6)  # frame 6 is the first one tracked for the new subject
    assert scheduler.stored_results == 1
    out = scheduler.flush(1.0)
    assert indices(out) == list(range(8))
    assert {k.mask_index for k in out} == {6}  # the old subject's mask (frame 0) keys nothing
    scheduler.forget_masks()
    assert scheduler.stored_results == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sometimes"}, "--sync"),
        ({"mode": "auto", "max_delay": -0.1}, "--max-delay"),
        ({"max_held": 0}, "ring"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KeyScheduler(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- threaded tracker
def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_threaded_tracker_newest_frame_slot() -> None:
    gate = threading.Event()
    calls: list[int] = []
    wakes = threading.Semaphore(0)

    def step(frame: Frame) -> MaskResult | None:
        calls.append(frame.index)
        gate.wait(5.0)
        if frame.index == 3:
            return None
        return MaskResult(frame.index, frame.timestamp, np.full((4, 4), 1.0, np.float32))

    tracker = ThreadedTracker(step, on_result=wakes.release)
    try:
        image = np.zeros((4, 4, 3), np.uint8)
        assert not tracker.busy
        tracker.submit(Frame(image, 0, 0.0))
        wait_until(lambda: calls == [0])
        for i in (1, 2, 3):  # 1 and 2 are replaced while 0 is tracked
            tracker.submit(Frame(image, i, i / FPS))
        assert tracker.busy and tracker.dropped == 2
        gate.set()
        assert wakes.acquire(timeout=5.0) and wakes.acquire(timeout=5.0)
        results = tracker.poll()
        assert [r.frame_index for r in results] == [0, 3] and calls == [0, 3]
        assert results[1].logits is None and not results[1].selected  # no mask, but answered
        assert results[0].selected
        wait_until(lambda: not tracker.busy)
        assert tracker.poll() == []
    finally:
        tracker.close()
    tracker.submit(Frame(image, 9, 1.0))  # ignored once closed
    assert not tracker.busy


def test_threaded_tracker_reraises_step_errors() -> None:
    def step(frame: Frame) -> MaskResult | None:
        raise RuntimeError("model exploded")

    tracker = ThreadedTracker(step)
    try:
        tracker.submit(Frame(np.zeros((4, 4, 3), np.uint8), 0, 0.0))
        wait_until(lambda: tracker.error is not None)
        with pytest.raises(RuntimeError, match="model exploded"):
            tracker.poll()
    finally:
        tracker.close()


def test_threaded_tracker_drives_the_scheduler() -> None:
    """The live loop's calls, with real threads and the real clock (no timing assertions)."""

    def step(frame: Frame) -> MaskResult:
        return MaskResult(frame.index, frame.timestamp, np.full((6, 8), float(frame.index), np.float32))

    wake = threading.Event()
    tracker = ThreadedTracker(step, on_result=wake.set)
    scheduler = KeyScheduler("auto", max_delay=0.3)
    images = frames(4)
    out: list[Keyed] = []
    try:
        for i in range(20):
            for r in tracker.poll():
                scheduler.add_result(r)
            scheduler.push(Frame(images[i % 4], i, time.perf_counter()))
            sub = scheduler.take_submission(tracker.busy)
            if sub is not None:
                tracker.submit(sub)
            out.extend(scheduler.pop_ready(time.perf_counter()))
            wake.wait(0.05)
            wake.clear()
        for _ in range(200):
            if scheduler.held == 0:
                break
            for r in tracker.poll():
                scheduler.add_result(r)
            out.extend(scheduler.pop_ready(time.perf_counter()))
            wake.wait(0.05)  # a finished mask, or a held frame's deadline at most 50 ms on
            wake.clear()
    finally:
        tracker.close()
    out.extend(scheduler.flush(time.perf_counter()))
    assert indices(out) == list(range(20))
    assert all(k.delay <= 0.3 + 0.05 or k.source != "none" for k in out)
    assert sum(k.source == "own" for k in out) >= 1


# ----------------------------------------------------------------------------- flow
W, H, R = 320, 240, 44  # frame size and disc radius of the flow tests


def disc_image(cx: float, cy: float) -> np.ndarray:
    """A textured background with a textured disc of radius R centred at (cx, cy) (RGB uint8)."""
    base = cv2.resize(
        np.random.default_rng(3).integers(0, 255, (12, 16, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC
    )
    skin = cv2.resize(
        np.random.default_rng(5).integers(0, 255, (10, 10, 3), dtype=np.uint8),
        (2 * R + 2, 2 * R + 2),
        interpolation=cv2.INTER_CUBIC,
    )
    moved = cv2.warpAffine(skin, np.float32([[1, 0, cx - R - 1], [0, 1, cy - R - 1]]), (W, H), flags=cv2.INTER_LINEAR)
    inside = np.zeros((H, W), np.uint8)
    cv2.circle(inside, (round(cx * 16), round(cy * 16)), R * 16, 255, -1, shift=4)
    base[inside > 0] = moved[inside > 0]
    return base


def disc_logits(cx: float, cy: float, shape: tuple[int, int]) -> np.ndarray:
    """+10 inside the disc, -10 outside, on an ``shape`` grid stretched over the frame."""
    h, w = shape
    sy, sx = h / H, w / W
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = ((xx + 0.5) / sx - 0.5 - cx) ** 2 + ((yy + 0.5) / sy - 0.5 - cy) ** 2 <= R**2
    return np.where(inside, 10.0, -10.0).astype(np.float32)


def centroid(logits: np.ndarray) -> tuple[float, float]:
    """Centroid of the keyed subject at the frame's resolution (x, y)."""
    up = cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(up > 0)
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("shape", [(H, W), (64, 64)], ids=["frame-grid", "square-grid"])
@pytest.mark.parametrize("shift", [(6.0, 0.0), (-5.0, 3.0)])
def test_flow_moves_a_disc_onto_its_true_position(shape: tuple[int, int], shift: tuple[float, float]) -> None:
    src_c, dst_c = (140.0, 120.0), (140.0 + shift[0], 120.0 + shift[1])
    src, dst = disc_image(*src_c), disc_image(*dst_c)
    logits = disc_logits(*src_c, shape)
    moved = warp_logits(logits, src, dst)
    assert moved.shape == logits.shape and moved.dtype == np.float32
    truth = disc_logits(*dst_c, shape)  # the true position, drawn on the same grid
    before, after, goal = centroid(logits), centroid(moved), centroid(truth)
    assert abs(before[0] - goal[0]) + abs(before[1] - goal[1]) > 4  # the shift is real
    cell = max(1.0, W / shape[1], H / shape[0])  # one pixel of the mask's grid, in frame pixels
    assert abs(after[0] - goal[0]) < cell and abs(after[1] - goal[1]) < cell
    truth, pred = truth > 0, moved > 0
    assert np.count_nonzero(pred & truth) / np.count_nonzero(pred | truth) > 0.9


def test_flow_of_identical_frames_changes_nothing() -> None:
    image = disc_image(140, 120)
    logits = disc_logits(140, 120, (H, W))
    warper = FlowWarper()
    assert warper.warp(logits, image, image) is logits
    same = warper.warp(logits, image, image.copy())
    assert np.array_equal(same > 0, logits > 0)


def test_flow_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="8 px"):
        FlowWarper(max_side=4)
