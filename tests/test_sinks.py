"""Sinks: the real pyvirtualcam.Camera over a recording backend, real video files, the key through I420."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.errors import SinkError, VirtualCameraError
from greenscreen_cam.media.sinks import (
    LINUX_VCAM_FIX,
    MatteWriter,
    MultiSink,
    PreviewSink,
    VideoFileSink,
    VirtualCameraSink,
)

from .conftest import REPO, moving_disc_frames


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


class _FakeClock:
    """Stands in for the ``time`` module inside sinks.py: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_virtual_camera_paces_to_fps(vcam_backend, monkeypatch):
    import greenscreen_cam.media.sinks as sinks_module

    clock = _FakeClock()
    monkeypatch.setattr(sinks_module, "time", clock)
    frame = moving_disc_frames(1)[0]
    sent_at = []
    with VirtualCameraSink(160, 120, 50.0, backend="greencam-test") as sink:
        for i in range(8):
            if i == 4:
                clock.now += 0.1  # the producer stalls for five frame slots
            sink.send(frame)
            sent_at.append(clock.now)
    gaps = np.diff(sent_at)
    assert gaps[:3] == pytest.approx([0.02] * 3), "a fast producer is held to 50 fps"
    assert gaps[3] == pytest.approx(0.1) and gaps[4:] == pytest.approx([0.02] * 3), "no burst to catch up after a stall"
    assert len(vcam_backend.instances[0].frames) == 8


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


class _NoLoopbackBackend:
    """Fails as pyvirtualcam's Linux backend does on a machine without v4l2loopback."""

    def __init__(self, **kw: object) -> None:
        raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99]. Did you run 'modprobe v4l2loopback'?")


def test_no_virtual_camera_prints_the_exact_fix(monkeypatch):
    import types

    import pyvirtualcam

    import greenscreen_cam.media.devices as d
    import greenscreen_cam.media.sinks as s

    monkeypatch.setattr(d, "sys", types.SimpleNamespace(platform="linux"))
    monkeypatch.setattr(s, "sys", types.SimpleNamespace(platform="linux"))
    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", {"v4l2loopback": _NoLoopbackBackend})
    with pytest.raises(VirtualCameraError) as info:
        VirtualCameraSink(160, 120, 30.0)
    assert LINUX_VCAM_FIX in str(info.value) and "No v4l2 loopback device found" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(VirtualCameraError, match="does not exist.*modprobe v4l2loopback"):
        VirtualCameraSink(160, 120, 30.0, device="/dev/greencam-test-no-such-video")
    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", {})
    with pytest.raises(VirtualCameraError, match="no virtual camera backend on this OS.*modprobe"):
        VirtualCameraSink(160, 120, 30.0)


def test_the_real_backend_without_v4l2loopback():
    """pyvirtualcam's own backend on a Linux machine that has no loopback device (skipped elsewhere)."""
    import sys

    from greenscreen_cam.media.devices import list_v4l2

    if not sys.platform.startswith("linux") or any(d.virtual for d in list_v4l2(probe_formats=False)):
        pytest.skip("needs Linux without a v4l2loopback device")
    with pytest.raises(VirtualCameraError) as info:
        VirtualCameraSink(160, 120, 30.0)
    assert LINUX_VCAM_FIX in str(info.value)


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
    import types

    import greenscreen_cam.media.sinks as s

    monkeypatch.setattr(s, "sys", types.SimpleNamespace(platform="linux"))  # macOS and Windows always have one
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
    from greenscreen_cam.errors import OutputExistsError
    from greenscreen_cam.media.sinks import check_outputs

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
    from greenscreen_cam.errors import OutputExistsError
    from greenscreen_cam.media.sinks import check_outputs

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
    from greenscreen_cam.errors import OutputExistsError
    from greenscreen_cam.media.sinks import check_outputs

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
    from greenscreen_cam.media.sinks import check_outputs

    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(SinkError, match=message):
        check_outputs([tmp_path / name], None, overwrite=True, sources=[])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_check_outputs_unwritable_folder(tmp_path):
    from greenscreen_cam.media.sinks import check_outputs

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SinkError, match="no permission"):
        check_outputs([locked / "o.mp4"], None, overwrite=False, sources=[])


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


# --------------------------------------------------------------------------- preview window


def test_preview_scale_caps_the_width():
    from greenscreen_cam.media.sinks import preview_scale

    assert preview_scale(1280, 720) == 1.0 and preview_scale(160, 120) == 1.0
    assert preview_scale(1920, 1080) == pytest.approx(2 / 3)
    assert round(3840 * preview_scale(3840, 2160)) == 1280


def test_box_selection_drag_in_display_pixels_gives_frame_pixels():
    from greenscreen_cam.media.sinks import BoxSelection

    sel = BoxSelection((1920, 1080), scale=0.5)
    sel.on_mouse(cv2.EVENT_MOUSEMOVE, 10, 10, 0)  # moving without a button does nothing
    assert sel.band() is None
    sel.on_mouse(cv2.EVENT_LBUTTONDOWN, 300, 250, cv2.EVENT_FLAG_LBUTTON)
    sel.on_mouse(cv2.EVENT_MOUSEMOVE, 200, 150, cv2.EVENT_FLAG_LBUTTON)
    assert sel.band() == (200, 150, 300, 250) and sel.take() is None and sel.active  # dragging up-left
    sel.on_mouse(cv2.EVENT_MOUSEMOVE, 100, 50, cv2.EVENT_FLAG_LBUTTON)
    sel.on_mouse(cv2.EVENT_LBUTTONUP, 100, 50, 0)
    assert not sel.active and sel.band() is None
    assert sel.take() == (200, 100, 402, 402)  # display (100..300, 50..250) at half scale, end pixel included
    assert sel.take() is None, "returned once"


def test_box_selection_clicks_cancels_and_edges():
    from greenscreen_cam.media.sinks import BoxSelection

    sel = BoxSelection((160, 120))
    sel.on_mouse(cv2.EVENT_LBUTTONDOWN, 50, 50, cv2.EVENT_FLAG_LBUTTON)
    sel.on_mouse(cv2.EVENT_LBUTTONUP, 51, 52, 0)  # a click, not a box
    assert sel.active and sel.take() is None
    sel.on_mouse(cv2.EVENT_LBUTTONDOWN, 100, 60, cv2.EVENT_FLAG_LBUTTON)
    sel.on_mouse(cv2.EVENT_LBUTTONUP, 500, -40, 0)  # dragged out of the window: clipped to the frame
    assert sel.take() == (100, 0, 60, 61)
    other = BoxSelection((160, 120))
    other.on_mouse(cv2.EVENT_LBUTTONDOWN, 10, 10, cv2.EVENT_FLAG_LBUTTON)
    other.on_mouse(cv2.EVENT_RBUTTONDOWN, 10, 10, 0)
    other.on_mouse(cv2.EVENT_LBUTTONUP, 90, 90, 0)
    assert not other.active and other.take() is None


def test_render_preview_scales_draws_text_and_band_in_bgr():
    from greenscreen_cam.media.sinks import render_preview

    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:] = (200, 30, 20)  # red, RGB
    plain = render_preview(frame, 2 / 3, [])
    assert plain.shape == (720, 1280, 3) and tuple(plain[400, 900]) == (20, 30, 200)
    shown = render_preview(frame, 2 / 3, ["tracking  4.1 fps", "h: help"], band=(600, 300, 800, 500), hint="drag")
    changed = np.abs(shown.astype(int) - plain.astype(int)).max(axis=2) > 0
    assert changed[5:30, 6:200].any() and changed[30:52, 6:100].any()  # two overlay lines
    assert changed[690:715, 6:80].any()  # the hint at the bottom
    assert tuple(shown[400, 600]) == (0, 255, 255) and tuple(shown[300, 700]) == (0, 255, 255)  # the band
    assert not changed[200:290, 300:1200].any(), "nothing else is drawn"


def test_render_preview_wraps_long_lines():
    from greenscreen_cam.media.sinks import render_preview

    frame = np.zeros((120, 160, 3), np.uint8)
    one = render_preview(frame, 1.0, ["r re-select"])
    wrapped = render_preview(frame, 1.0, ["r re-select  a auto  space pause  m mask  q quit"])
    assert not one[45:70].any() and wrapped[45:70].any(), "a long line continues on the next rows"


@pytest.fixture(scope="module")
def xdisplay():
    """A real X display from Xvfb (skipped where Xvfb is not installed).

    Windows are opened in child processes (see :func:`_in_window_process`): Qt ends a
    process whose X server goes away, so the test process itself never connects.
    """
    import shutil
    import subprocess

    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    for number in range(91, 120):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break

    def die_with_pytest() -> None:  # Linux: the X server ends even if this test process is killed
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_pytest,
    )
    end = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is not None or not Path(f"/tmp/.X11-unix/X{number}").exists():
        proc.kill()
        pytest.skip("Xvfb did not start")
    yield f":{number}"
    proc.terminate()
    proc.wait(timeout=10)


def _in_window_process(display: str, code: str) -> dict:
    """Run ``code`` (which defines ``result``) in a child Python with a real preview window; its ``result``."""
    import json
    import subprocess
    import textwrap

    script = (
        "import json, threading, time\nimport cv2, numpy as np\nfrom greenscreen_cam.media.sinks import PreviewSink\n"
        + textwrap.dedent(code)
        + "\nprint('RESULT=' + json.dumps(result))\n"
    )
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT=")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT=") :])


def test_preview_window_size_and_non_blocking_selection(xdisplay):
    result = _in_window_process(
        xdisplay,
        """
        frame = np.zeros((1080, 1920, 3), np.uint8)
        frame[:] = (40, 160, 60)
        result = {}
        with PreviewSink("greencam test preview") as preview:
            preview.overlay = ["auto  tracking  4.0 fps"]
            preview.send(frame)
            result["scale"], result["key"] = preview.scale, preview.last_key
            result["rect"] = list(cv2.getWindowImageRect(preview.title))
            result["before"] = preview.take_selection()
            preview.begin_select()
            result["selecting"] = preview.selecting
            preview.send(frame)  # returns at once: the output keeps flowing while the user drags
            # what OpenCV's mouse callback receives, in the picture's pixels
            preview._on_mouse(cv2.EVENT_LBUTTONDOWN, 100, 100, cv2.EVENT_FLAG_LBUTTON)
            preview._on_mouse(cv2.EVENT_MOUSEMOVE, 399, 299, cv2.EVENT_FLAG_LBUTTON)
            preview.send(frame)
            result["dragging"] = [preview.take_selection(), preview.selecting]
            preview._on_mouse(cv2.EVENT_LBUTTONUP, 399, 299, 0)
            result["box"] = preview.take_selection()
            result["after"] = [preview.take_selection(), preview.selecting]
        """,
    )
    assert result["scale"] == pytest.approx(2 / 3) and result["key"] == -1
    assert result["rect"][2:] == [1280, 720], "the window opens at the frame's size capped to 1280 wide"
    assert result["before"] is None and result["selecting"] and result["dragging"] == [None, True]
    assert result["box"] == [150, 150, 450, 300] and result["after"] == [None, False]


@pytest.mark.parametrize("cancel", [False, True])
def test_blocking_first_selection(xdisplay, cancel):
    result = _in_window_process(
        xdisplay,
        f"""
        cancel = {cancel}
        frame = np.zeros((720, 1280, 3), np.uint8)
        with PreviewSink("greencam test first selection") as preview:

            def user():  # what the mouse callback receives while select_box waits
                end = time.monotonic() + 20
                while not preview.selecting and time.monotonic() < end:
                    time.sleep(0.01)
                time.sleep(0.1)
                if cancel:
                    preview._on_mouse(cv2.EVENT_RBUTTONDOWN, 5, 5, 0)
                    return
                preview._on_mouse(cv2.EVENT_LBUTTONDOWN, 10, 20, cv2.EVENT_FLAG_LBUTTON)
                preview._on_mouse(cv2.EVENT_MOUSEMOVE, 109, 219, cv2.EVENT_FLAG_LBUTTON)
                preview._on_mouse(cv2.EVENT_LBUTTONUP, 109, 219, 0)

            thread = threading.Thread(target=user, daemon=True)
            thread.start()
            box = preview.select_box(frame)
            thread.join(timeout=5)
        result = {{"box": box}}
        """,
    )
    assert result["box"] == (None if cancel else [10, 20, 100, 200])
