"""Sources: real decode of real files, image folders, pacing, errors, and the latest-frame reader."""

from __future__ import annotations

import sys
import threading
import time

import cv2
import numpy as np
import pytest

from greenscreen_cam.core import Frame
from greenscreen_cam.errors import SourceError
from greenscreen_cam.media.sources import (
    CameraSource,
    ImageFolderSource,
    LatestFrameReader,
    VideoFileSource,
    open_source,
)

from .conftest import moving_disc_frames, shared_data, write_jpeg_folder, write_video


def test_video_file_delivers_every_frame_in_order_as_rgb(clip):
    path, frames = clip
    src = open_source(str(path))
    assert isinstance(src, VideoFileSource) and not src.live
    assert (src.width, src.height, src.fps) == (160, 120, 30.0)
    got = []
    while (f := src.read()) is not None:
        got.append(f)
    src.close()
    assert [f.index for f in got] == list(range(len(frames)))
    # mp4v is lossy: compare loosely, but the colour order must be RGB (the disc is red).
    for f, ref in zip(got, frames):
        assert np.abs(f.image.astype(int) - ref.astype(int)).mean() < 12
    assert got[0].image[60, 53, 0] > 150 and got[0].image[60, 53, 2] < 100


def test_image_folder_natural_order(tmp_path):
    frames = moving_disc_frames(3)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in zip(range(3), ["2.png", "10.png", "1.png"]):
        cv2.imwrite(str(folder / name), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("ignored")
    src = open_source(str(folder))
    assert isinstance(src, ImageFolderSource)
    order = [src.read().image for _ in range(3)]
    assert src.read() is None
    assert (
        np.array_equal(order[0], frames[2])
        and np.array_equal(order[1], frames[0])
        and np.array_equal(order[2], frames[1])
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.mp4", "no such camera index"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "has no"),
        (lambda p: (p / "bad.mp4").write_bytes(b"not a video") and p / "bad.mp4", "cannot read video"),
        (lambda p: (p / "empty.mp4").write_bytes(b"") or p / "empty.mp4", "cannot read video"),
    ],
    ids=["missing", "empty-folder", "garbage", "empty-file"],
)
def test_unreadable_sources(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        open_source(str(make(tmp_path)))


def test_folder_with_mixed_sizes_is_an_error(tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(2))
    cv2.imwrite(str(folder / "00002.jpg"), np.zeros((10, 10, 3), np.uint8))
    src = ImageFolderSource(folder)
    src.read(), src.read()
    with pytest.raises(SourceError, match="is 10x10"):
        src.read()


@pytest.fixture()
def cameras_here(monkeypatch, tmp_path):
    """This machine as a Linux host with one camera (video0) and one v4l2loopback device (video10)."""
    import os
    import types

    import greenscreen_cam.media.devices as d

    sysfs = tmp_path / "sysfs"
    for name, label, driver in [("video0", "USB Camera", "uvcvideo"), ("video10", "greencam", "v4l2loopback")]:
        (sysfs / name / "device").mkdir(parents=True)
        (sysfs / name / "name").write_text(label)
        (sysfs / name / "index").write_text("0")
        (tmp_path / "drivers" / driver).mkdir(parents=True)
        os.symlink(tmp_path / "drivers" / driver, sysfs / name / "device" / "driver")
    monkeypatch.setattr(d, "SYSFS_V4L", sysfs)
    monkeypatch.setattr(d, "DEV_ROOT", tmp_path / "dev")
    monkeypatch.setattr(d, "sys", types.SimpleNamespace(platform="linux"))
    return tmp_path


def test_missing_camera_lists_what_exists(cameras_here):
    with pytest.raises(SourceError, match=r"does not exist; cameras found: 0 \(.*video0, USB Camera\)$"):
        CameraSource(str(cameras_here / "dev" / "video77"))
    unplugged = _FlakyCamera(cameras_here / "none.mp4", frames=0, absent=None)
    with pytest.raises(SourceError, match="cannot open camera 7; cameras found: 0 ") as info:
        CameraSource(7, capture_factory=unplugged)
    assert "greencam" not in str(info.value), "virtual cameras are not offered as sources"


def test_no_camera_at_all_says_so(monkeypatch, tmp_path):
    import types

    import greenscreen_cam.media.devices as d

    monkeypatch.setattr(d, "SYSFS_V4L", tmp_path / "nothing")
    monkeypatch.setattr(d, "sys", types.SimpleNamespace(platform="linux"))
    with pytest.raises(SourceError, match="no cameras were found on this machine"):
        CameraSource(0, capture_factory=_FlakyCamera(tmp_path / "none.mp4", frames=0, absent=None))


def test_camera_that_opens_but_delivers_nothing(camera_clip):
    path, _ = camera_clip
    with pytest.raises(SourceError, match="opened but delivers no frames"):
        CameraSource(0, capture_factory=_FlakyCamera(path, frames=0, absent=None))


def test_bad_fourcc():
    with pytest.raises(SourceError, match="4 characters"):
        CameraSource(0, fourcc="MJPEG")


class _FakeClock:
    """Stands in for the ``time`` module inside sources.py: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0  # with steps of 1/16 s every time below is exact in binary
        self.slept = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def test_realtime_file_is_paced_and_drops_when_consumer_is_slow(tmp_path, monkeypatch):
    import greenscreen_cam.media.sources as sources_module

    frames = moving_disc_frames(30)
    path = write_video(tmp_path / "c.mp4", frames, fps=50.0)
    src = VideoFileSource(path, realtime=True)
    assert src.live
    clock = _FakeClock()
    monkeypatch.setattr(sources_module, "time", clock)
    start = clock.now
    got = []
    while (f := src.read()) is not None:
        got.append(f)
        clock.now += 0.0625  # a consumer at 16 fps reading a 50 fps file
    indices = [f.index for f in got]
    # each read delivers the frame due at that moment: int(t * 50) at t = 0, 1/16, 2/16, ...
    assert indices == [0, 3, 6, 9, 12, 15, 18, 21, 25, 28]
    assert src.dropped == 20 and clock.slept == 0.0 and clock.now - start == 0.625
    # the frames delivered are the decoded frames of those indices
    assert np.abs(got[2].image.astype(int) - frames[6].astype(int)).mean() < 12
    assert (
        np.abs(got[2].image.astype(int) - frames[3].astype(int)).mean()
        > np.abs(got[2].image.astype(int) - frames[6].astype(int)).mean()
    )


def test_realtime_folder_is_paced(tmp_path, monkeypatch):
    import greenscreen_cam.media.sources as sources_module

    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(10))
    src = ImageFolderSource(folder, fps=25.0, realtime=True)
    clock = _FakeClock()
    monkeypatch.setattr(sources_module, "time", clock)
    n = 0
    while src.read() is not None:
        n += 1
    assert n == 10 and src.dropped == 0
    assert clock.slept == pytest.approx(9 / 25), "a fast consumer waits for each frame's slot"


class _FastSource:
    """A producer far faster than the consumer: frame i carries i in its pixels."""

    width, height, fps, live = 8, 8, 1000.0, True

    def __init__(self, n: int = 400) -> None:
        self.i, self.n, self.closed = 0, n, False

    def read(self) -> Frame | None:
        if self.i >= self.n:
            return None
        time.sleep(0.001)
        frame = Frame(np.full((8, 8, 3), self.i % 256, np.uint8), self.i)
        self.i += 1
        return frame

    def close(self) -> None:
        self.closed = True


def test_latest_frame_reader_never_returns_stale_frames():
    src = _FastSource()
    seen = []
    with LatestFrameReader(src) as reader:
        while (frame := reader.get(timeout=2)) is not None:
            # at the moment we receive it, it is the newest frame the producer has made
            newest = src.i - 1
            assert frame.index >= newest - 1, (frame.index, newest)
            seen.append(frame.index)
            time.sleep(0.01)  # slow consumer
        assert reader.dropped > 0 and reader.dropped + len(seen) == reader.produced
    assert seen == sorted(set(seen)), "never the same or an older frame twice"
    assert src.closed


def test_latest_frame_reader_reraises_source_errors():
    class Broken(_FastSource):
        def read(self):
            raise SourceError("camera unplugged")

    with LatestFrameReader(Broken()) as reader, pytest.raises(SourceError, match="unplugged"):
        reader.get(timeout=2)


def test_latest_frame_reader_waits_for_a_new_frame():
    gate = threading.Event()

    class Slow(_FastSource):
        def read(self):
            if self.i == 1:
                gate.wait(2)
            return super().read()

    with LatestFrameReader(Slow(3)) as reader:
        first = reader.get(timeout=2)
        assert first.index == 0
        with pytest.raises(TimeoutError):
            reader.get(timeout=0.1)
        gate.set()
        assert reader.get(timeout=2).index >= 1


@pytest.mark.parametrize("name", ["bedroom.mp4", "default_juggle.mp4"])
def test_shared_real_videos_decode(name):
    path = shared_data("videos", name)
    src = VideoFileSource(path)
    n = 0
    while n < 30 and (f := src.read()) is not None:
        assert f.image.shape == (src.height, src.width, 3) and f.image.dtype == np.uint8
        n += 1
    src.close()
    assert n == 30 and src.width in (960, 1280)


def test_prefetch_reader_keeps_every_frame_in_order_and_hands_back_read_ahead(tmp_path):
    from greenscreen_cam.media.sources import PrefetchReader

    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(9))
    src = ImageFolderSource(folder)
    first = PrefetchReader(src, depth=3)
    got = [first.read().index for _ in range(4)]
    time.sleep(0.2)  # let it read ahead
    ahead = first.stop()
    # 3 queued + the one read while the queue was full
    assert got == [0, 1, 2, 3] and [f.index for f in ahead] == [4, 5, 6, 7]
    second = PrefetchReader(src, pending=ahead)
    rest = []
    while (f := second.read()) is not None:
        rest.append(f.index)
    assert rest == [4, 5, 6, 7, 8] and second.read() is None
    assert second.stop() == []


def test_prefetch_reader_reraises_source_errors():
    from greenscreen_cam.media.sources import PrefetchReader

    class Broken(_FastSource):
        def read(self):
            if self.i == 2:
                raise SourceError("cannot read image 2.jpg")
            return super().read()

    reader = PrefetchReader(Broken())
    assert reader.read().index == 0 and reader.read().index == 1
    with pytest.raises(SourceError, match="2.jpg"):
        reader.read()
    reader.stop()


# --------------------------------------------------------------------------- camera recovery


class _DyingCapture:
    """A real ``cv2.VideoCapture`` of a video file that goes dark after ``frames`` reads (an unplugged camera)."""

    def __init__(self, path, frames: int | None) -> None:
        self.cap = cv2.VideoCapture(str(path))
        self.left = frames
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802
        return self.cap.isOpened()

    def read(self):
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        return self.cap.read()

    def set(self, prop, value):
        return True

    def get(self, prop):
        return self.cap.get(prop)

    def release(self) -> None:
        self.released = True
        self.cap.release()


class _FlakyCamera:
    """A capture factory: plays ``path``, dies after ``frames`` reads, is absent for ``absent`` reopen
    attempts (``None`` = never comes back), then plays the file again from its start."""

    def __init__(self, path, frames: int, absent: int | None) -> None:
        self.path, self.frames, self.absent = path, frames, absent
        self.opens: list[_DyingCapture] = []
        self.reconnecting_seen: list[bool] = []
        self.source: CameraSource | None = None

    def __call__(self, target, backend):
        if self.source is not None:
            self.reconnecting_seen.append(self.source.reconnecting)
        attempt = len(self.opens)
        if attempt == 0:
            cap = _DyingCapture(self.path, self.frames)
        elif self.absent is None or attempt <= self.absent:
            cap = _DyingCapture(self.path / "unplugged.mp4", 0)  # cannot open
        else:
            cap = _DyingCapture(self.path, None)
        self.opens.append(cap)
        return cap


@pytest.fixture()
def camera_clip(tmp_path):
    frames = moving_disc_frames(20)
    return write_video(tmp_path / "camera.mp4", frames), frames


def test_camera_reconnects_after_it_stops_delivering(camera_clip):
    path, frames = camera_clip
    factory = _FlakyCamera(path, frames=3, absent=2)
    src = CameraSource(0, reconnect_timeout=30, capture_factory=factory)
    factory.source = src
    assert (src.width, src.height) == (160, 120) and not src.reconnecting
    got = [src.read() for _ in range(5)]
    # 3 frames before the loss, then the reopened camera starts again from its first frame
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert np.abs(got[3].image.astype(int) - frames[0].astype(int)).mean() < 12
    assert np.abs(got[4].image.astype(int) - frames[1].astype(int)).mean() < 12
    assert src.reconnects == 1 and not src.reconnecting
    assert factory.reconnecting_seen == [True, True, True], "reconnecting is visible while reopening"
    assert all(cap.released for cap in factory.opens[:-1]), "every dead capture is released"
    src.close()
    assert factory.opens[-1].released


def test_camera_gives_up_after_reconnect_timeout(camera_clip):
    from greenscreen_cam.errors import CameraLostError

    path, _ = camera_clip
    factory = _FlakyCamera(path, frames=1, absent=None)
    src = CameraSource("/dev/video-fake", reconnect_timeout=0.6, capture_factory=factory)
    assert src.read().index == 0
    with pytest.raises(CameraLostError, match="did not come back within 0.6 s.*--reconnect-timeout") as info:
        src.read()
    assert "\n" not in str(info.value) and not src.reconnecting
    assert len(factory.opens) >= 3, "it kept trying"
    src.close()


def _wait_until(predicate, limit: float = 5.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_close_from_another_thread_ends_a_blocked_read(camera_clip):
    path, _ = camera_clip
    factory = _FlakyCamera(path, frames=1, absent=None)
    src = CameraSource(0, reconnect_timeout=120, capture_factory=factory)
    src.read()
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(src.read()), daemon=True)
    reader.start()
    assert _wait_until(lambda: src.reconnecting)
    src.close()
    reader.join(timeout=10)  # would hang for the 120 s reconnect timeout if close() did not interrupt it
    assert not reader.is_alive() and result == [None]
    assert all(cap.released for cap in factory.opens) and src.read() is None


def test_latest_frame_reader_reports_reconnecting_and_recovers(camera_clip):
    path, _ = camera_clip
    factory = _FlakyCamera(path, frames=2, absent=3)
    src = CameraSource(0, reconnect_timeout=30, capture_factory=factory)
    seen_reconnecting = False
    with LatestFrameReader(src) as reader:
        assert reader.get(timeout=5) is not None
        assert reader.last_frame_time is not None and reader.last_frame is not None
        last = reader.last_frame_time
        frames_after = 0
        for _ in range(500):  # bounded: ~2 s of reconnection at most, then frames again
            try:
                frame = reader.get(timeout=0.05)
            except TimeoutError:
                seen_reconnecting |= reader.reconnecting
                continue
            if src.reconnects:
                frames_after += 1
                if frames_after == 3:
                    break
        assert seen_reconnecting and frames_after == 3 and frame is not None
        assert reader.last_frame_time > last and not reader.reconnecting
    assert src.closed


def test_latest_frame_reader_close_returns_while_camera_is_away(camera_clip):
    path, _ = camera_clip
    factory = _FlakyCamera(path, frames=1, absent=None)
    src = CameraSource(0, reconnect_timeout=120, capture_factory=factory)
    reader = LatestFrameReader(src)
    assert reader.get(timeout=5) is not None
    assert _wait_until(lambda: reader.reconnecting)
    closer = threading.Thread(target=reader.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive() and all(cap.released for cap in factory.opens)
    assert not reader._thread.is_alive(), "the capture thread ended instead of waiting out the timeout"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenCV's V4L2 backend is Linux only")
def test_failed_camera_opens_print_nothing_of_their_own(capfd, cameras_here):
    def absent(target, backend):  # a real V4L2 open of a device index no machine has
        return cv2.VideoCapture(9999, cv2.CAP_V4L2)

    with pytest.raises(SourceError, match="cannot open camera 0"):
        CameraSource(0, capture_factory=absent)
    err = capfd.readouterr().err
    assert "WARN" not in err and "can't open" not in err, err
