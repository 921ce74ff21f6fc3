"""Sinks: the real pyvirtualcam.Camera over a recording backend, real video files, the key through I420."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.errors import SinkError, VirtualCameraError
from greenscreen_cam.sinks import (
    LINUX_VCAM_FIX,
    MatteWriter,
    MultiSink,
    PreviewSink,
    VideoFileSink,
    VirtualCameraSink,
)

from .conftest import moving_disc_frames


def test_virtual_camera_receives_rgb_frames_and_is_closed(vcam_backend):
    frames = moving_disc_frames(5)
    with VirtualCameraSink(160, 120, 30.0, backend="greencam-test", pace=False) as sink:
        assert sink.device == "/dev/video-test"
        for f in frames:
            sink.send(f)
    (backend,) = vcam_backend.instances
    assert (backend.width, backend.height, backend.fps) == (160, 120, 30.0)
    import pyvirtualcam
    from pyvirtualcam.util import encode_fourcc

    assert backend.fourcc == encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    assert len(backend.frames) == 5 and backend.closed == 1
    assert np.array_equal(backend.frames[2].reshape(120, 160, 3), frames[2])


def test_virtual_camera_paces_to_fps(vcam_backend):
    frame = moving_disc_frames(1)[0]
    with VirtualCameraSink(160, 120, 50.0, backend="greencam-test") as sink:
        for _ in range(11):
            sink.send(frame)
    gaps = np.diff(vcam_backend.instances[0].times)
    assert np.median(gaps) == pytest.approx(0.02, abs=0.004)
    assert gaps.min() > 0.015


def test_virtual_camera_closed_on_exception(vcam_backend):
    with pytest.raises(RuntimeError, match="boom"), VirtualCameraSink(160, 120, 30.0, backend="greencam-test"):
        raise RuntimeError("boom")
    assert vcam_backend.instances[0].closed == 1


def test_virtual_camera_rejects_wrong_frames(vcam_backend):
    with VirtualCameraSink(160, 120, 30.0, backend="greencam-test", pace=False) as sink:
        with pytest.raises(ValueError, match="unexpected frame shape"):
            sink.send(np.zeros((10, 10, 3), np.uint8))
        with pytest.raises(TypeError, match="dtype"):
            sink.send(np.zeros((120, 160, 3), np.float32))


def test_no_virtual_camera_prints_the_exact_fix():
    # This machine has no v4l2loopback device: the real Linux backend fails.
    with pytest.raises(VirtualCameraError) as info:
        VirtualCameraSink(160, 120, 30.0)
    assert LINUX_VCAM_FIX in str(info.value)
    with pytest.raises(VirtualCameraError, match="does not exist.*modprobe v4l2loopback"):
        VirtualCameraSink(160, 120, 30.0, device="/dev/video99")


def test_backend_failure_is_one_line(vcam_backend):
    with pytest.raises(VirtualCameraError) as info:
        VirtualCameraSink(160, 120, 30.0, device="missing-cam", backend="greencam-test")
    assert "\n" not in str(info.value) and "device not found" in str(info.value)


def test_key_color_survives_i420_round_trip():
    """What the Linux virtual camera does to our frames: RGB -> I420 (4:2:0) -> RGB in the app."""
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:] = KEY_COLOR
    frame[:, 81:] = (200, 150, 120)  # a hard subject edge at an odd column
    back = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), cv2.COLOR_YUV2RGB_I420)
    key = back[:, :78].astype(int)
    assert np.abs(key - np.array(KEY_COLOR)).max() <= 2, "key colour within +-2 away from edges"
    # How far the hard edge bleeds: columns whose colour moved by more than 2.
    diff = np.abs(back.astype(int) - frame.astype(int)).max(axis=2).max(axis=0)
    bleed = np.nonzero(diff > 2)[0]
    assert bleed.size and bleed.min() >= 80 and bleed.max() <= 81  # one chroma sample: 1 px each side at most


def test_video_file_round_trip(tmp_path):
    frames = moving_disc_frames(8)
    path = tmp_path / "out.mp4"
    with VideoFileSink(path, 160, 120, 24.0) as sink:
        for f in frames:
            sink.send(f)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(24.0)
    read = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        read.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    assert len(read) == 8 and read[0].shape == (120, 160, 3)
    assert np.abs(read[3].astype(int) - frames[3].astype(int)).mean() < 12


@pytest.mark.parametrize(
    "name, message", [("out.gif", "unsupported extension"), ("nofolder/out.mp4", "does not exist")]
)
def test_video_file_errors(tmp_path, name, message):
    with pytest.raises(SinkError, match=message):
        VideoFileSink(tmp_path / name, 160, 120, 30.0)


def test_video_file_size_mismatch(tmp_path):
    with VideoFileSink(tmp_path / "o.mp4", 160, 120, 30.0) as sink, pytest.raises(SinkError, match="does not match"):
        sink.send(np.zeros((10, 10, 3), np.uint8))


def test_matte_writer_numbers_from_zero(tmp_path):
    with MatteWriter(tmp_path / "m") as matte:
        for v in (0, 128, 255):
            matte.send(np.full((12, 16), v, np.uint8))
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png"]
    assert cv2.imread(str(tmp_path / "m" / "000001.png"), cv2.IMREAD_UNCHANGED).max() == 128


def test_preview_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="needs a display"):
        PreviewSink()


def test_multi_sink_fans_out_and_closes_all(tmp_path, vcam_backend):
    class Failing:
        closed = False

        def send(self, frame):
            pass

        def close(self):
            Failing.closed = True
            raise OSError("close failed")

    vcam = VirtualCameraSink(160, 120, 30.0, backend="greencam-test", pace=False)
    video = VideoFileSink(tmp_path / "o.mp4", 160, 120, 30.0)
    multi = MultiSink([Failing(), vcam, video])
    for f in moving_disc_frames(3):
        multi.send(f)
    with pytest.raises(OSError, match="close failed"):
        multi.close()
    assert Failing.closed and vcam_backend.instances[0].closed == 1 and video.frames_written == 3
    assert Path(tmp_path / "o.mp4").stat().st_size > 0
    time.sleep(0)


# --------------------------------------------------------------------------- never destroy a user's file


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".greencam-tmp-" in p.name)


def test_existing_output_is_refused_and_left_unchanged(tmp_path):
    from greenscreen_cam.sinks import OutputExistsError, check_outputs

    out = tmp_path / "talk.mp4"
    out.write_bytes(b"an earlier recording" * 100)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite") as info:
        check_outputs([out], None, overwrite=False, sources=["0"])
    assert "\n" not in str(info.value)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        VideoFileSink(out, 160, 120, 30.0)
    assert out.read_bytes() == before and _hidden_leftovers(tmp_path) == []
    check_outputs([out], None, overwrite=True, sources=["0"])  # allowed with --overwrite


def test_output_equal_to_source_is_refused_even_with_overwrite(tmp_path, clip):
    from greenscreen_cam.sinks import OutputExistsError, check_outputs

    source, _ = clip
    before = source.read_bytes()
    link = tmp_path / "hardlink.mp4"
    os.link(source, link)
    symlink = tmp_path / "symlink.mp4"
    symlink.symlink_to(source)
    for target in (source, tmp_path / "." / source.name, link, symlink):
        with pytest.raises(OutputExistsError, match="would overwrite the source"):
            check_outputs([target], None, overwrite=True, sources=[str(source)])
    assert source.read_bytes() == before


def test_matte_folder_checks(tmp_path):
    from greenscreen_cam.sinks import OutputExistsError, check_outputs

    mattes = tmp_path / "m"
    check_outputs([], mattes, overwrite=False, sources=[])  # new folder: fine
    mattes.mkdir()
    check_outputs([], mattes, overwrite=False, sources=[])  # empty folder: fine
    (mattes / "000000.png").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="not empty; pass --overwrite"):
        check_outputs([], mattes, overwrite=False, sources=[])
    check_outputs([], mattes, overwrite=True, sources=[])
    (mattes / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write.*notes.txt"):
        check_outputs([], mattes, overwrite=True, sources=[])
    # an image-folder source cannot also be the matte folder
    with pytest.raises(OutputExistsError, match="holds the source"):
        check_outputs([], tmp_path, overwrite=True, sources=[str(mattes)])
    with pytest.raises(OutputExistsError, match="lies inside --matte-output"):
        check_outputs([mattes / "o.mp4"], mattes, overwrite=True, sources=[])


@pytest.mark.parametrize(
    "name, message",
    [("nofolder/out.mp4", "does not exist"), ("out.gif", "unsupported extension"), ("dir.mp4", "is a folder")],
)
def test_check_outputs_bad_paths(tmp_path, name, message):
    from greenscreen_cam.sinks import check_outputs

    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(SinkError, match=message):
        check_outputs([tmp_path / name], None, overwrite=True, sources=[])


def _read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def test_overwrite_replaces_only_on_clean_close(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old content")
    frames = moving_disc_frames(4)
    sink = VideoFileSink(out, 160, 120, 30.0, overwrite=True)
    for f in frames:
        sink.send(f)
    assert out.read_bytes() == b"old content", "the old file stays until the run finishes"
    (tmp,) = _hidden_leftovers(tmp_path)
    assert tmp.startswith(".out.greencam-tmp-") and tmp.endswith(".mp4")
    sink.close()
    assert len(_read_all(out)) == 4 and _hidden_leftovers(tmp_path) == []


def test_abort_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old content")
    with pytest.raises(KeyboardInterrupt), VideoFileSink(out, 160, 120, 30.0, overwrite=True) as sink:
        for f in moving_disc_frames(3):
            sink.send(f)
        raise KeyboardInterrupt  # Ctrl-C mid-run
    assert out.read_bytes() == b"old content" and _hidden_leftovers(tmp_path) == []
    # a new file that was aborted does not appear at all
    fresh = tmp_path / "fresh.mp4"
    sink = VideoFileSink(fresh, 160, 120, 30.0)
    sink.send(moving_disc_frames(1)[0])
    sink.abort()
    sink.close()  # harmless after abort
    assert not fresh.exists() and _hidden_leftovers(tmp_path) == []


def test_multi_sink_aborts_every_file(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.avi"
    a.write_bytes(b"keep a")
    with (
        pytest.raises(RuntimeError),
        MultiSink([VideoFileSink(a, 160, 120, 30.0, overwrite=True), VideoFileSink(b, 160, 120, 30.0)]) as multi,
    ):
        multi.send(moving_disc_frames(1)[0])
        raise RuntimeError("tracker failed")
    assert a.read_bytes() == b"keep a" and not b.exists() and _hidden_leftovers(tmp_path) == []


def test_matte_overwrite_is_atomic_and_abort_keeps_old_mattes(tmp_path):
    mattes = tmp_path / "m"
    mattes.mkdir()
    for i in range(5):
        cv2.imwrite(str(mattes / f"{i:06d}.png"), np.full((4, 4), 7, np.uint8))
    with pytest.raises(SinkError, match="--overwrite"):
        MatteWriter(mattes)
    # aborted run: the old five mattes are untouched
    with pytest.raises(RuntimeError), MatteWriter(mattes, overwrite=True) as matte:
        matte.send(np.full((4, 4), 200, np.uint8))
        raise RuntimeError("boom")
    assert len(list(mattes.iterdir())) == 5 and _hidden_leftovers(tmp_path) == []
    # clean run: the folder holds exactly the new mattes, and only after close
    matte = MatteWriter(mattes, overwrite=True)
    for v in (10, 20):
        matte.send(np.full((4, 4), v, np.uint8))
    assert len(list(mattes.iterdir())) == 5
    matte.close()
    assert sorted(p.name for p in mattes.iterdir()) == ["000000.png", "000001.png"]
    assert cv2.imread(str(mattes / "000001.png"), cv2.IMREAD_UNCHANGED).max() == 20
    assert _hidden_leftovers(tmp_path) == []
