"""Sources: real decode of real files, image folders, pacing, errors, and the latest-frame reader."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from greenscreen_cam.errors import SourceError
from greenscreen_cam.sources import (
    CameraSource,
    Frame,
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


def test_missing_camera_lists_what_exists():
    with pytest.raises(SourceError, match="camera"):
        open_source("/dev/video77")
    with pytest.raises(SourceError, match="cannot open camera 7|no cameras were found|delivers no frames"):
        open_source("7")


def test_bad_fourcc():
    with pytest.raises(SourceError, match="4 characters"):
        CameraSource(0, fourcc="MJPEG")


def test_realtime_file_is_paced_and_drops_when_consumer_is_slow(tmp_path):
    frames = moving_disc_frames(30)
    path = write_video(tmp_path / "c.mp4", frames, fps=50.0)
    src = VideoFileSource(path, realtime=True)
    assert src.live
    start = time.perf_counter()
    got = []
    while (f := src.read()) is not None:
        got.append(f.index)
        time.sleep(0.05)  # a consumer at ~20 fps reading a 50 fps file
    elapsed = time.perf_counter() - start
    assert 0.45 < elapsed < 1.2, elapsed  # paced at the file's clock (30 frames / 50 fps = 0.6 s)
    assert got == sorted(got) and len(got) < 20 and src.dropped == 30 - len(got)


def test_realtime_folder_is_paced(tmp_path):
    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(10))
    src = ImageFolderSource(folder, fps=25.0, realtime=True)
    start = time.perf_counter()
    n = 0
    while src.read() is not None:
        n += 1
    assert n == 10 and 0.3 < time.perf_counter() - start < 0.8


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
    from greenscreen_cam.sources import PrefetchReader

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
    from greenscreen_cam.sources import PrefetchReader

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
