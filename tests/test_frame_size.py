"""Even sizes for the virtual camera, through the real pyvirtualcam.Camera over a recording backend."""

from __future__ import annotations

import numpy as np
import pytest

from greenscreen_cam.media.frame_size import EvenSizeSink, even_size
from greenscreen_cam.media.sinks import VirtualCameraSink


@pytest.mark.parametrize(
    "size, expected, rounded",
    [
        ((640, 480), (640, 480), False),
        ((641, 480), (640, 480), True),
        ((640, 361), (640, 360), True),
        ((3, 3), (2, 2), True),
    ],
)
def test_even_size(size, expected, rounded):
    w, h, note = even_size(*size)
    assert (w, h) == expected
    assert (note is not None) == rounded
    if rounded:
        assert f"{size[0]}x{size[1]}" in note and f"{w}x{h}" in note and "even" in note


def test_too_small():
    with pytest.raises(ValueError, match="too small"):
        even_size(1, 10)


def test_odd_frames_reach_the_virtual_camera_even(vcam_backend):
    w, h, note = even_size(161, 121)
    assert note is not None
    sink = EvenSizeSink(VirtualCameraSink(w, h, 30.0, backend="greencam-test"), w, h)
    frame = np.random.default_rng(0).integers(0, 255, (121, 161, 3), dtype=np.uint8)
    sink.send(frame)
    sink.close()
    backend = vcam_backend.instances[-1]
    assert (backend.width, backend.height) == (160, 120)
    sent = backend.frames[0]
    assert sent.size == 120 * 160 * 3  # pyvirtualcam hands the backend the flat RGB buffer
    np.testing.assert_array_equal(sent.reshape(120, 160, 3), frame[:120, :160])
    assert backend.closed == 1


def test_start_rounds_an_odd_video_for_the_virtual_camera(checkpoint_dir, tmp_path, monkeypatch, vcam_backend):
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    from .conftest import moving_disc_frames, write_jpeg_folder

    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    monkeypatch.delenv("GREENCAM_SERVER", raising=False)
    src = write_jpeg_folder(tmp_path / "odd", [np.ascontiguousarray(f[:, :159]) for f in moving_disc_frames(3)])
    args = ["start", "--device", "cpu", "--resolution", "256", "--source", str(src), "--bbox", "30,25,60,70"]
    result = CliRunner().invoke(app, [*args, "--virtual-backend", "greencam-test", "--max-frames", "2"])
    assert result.exit_code == 0, result.output
    assert "the 159x120 picture is sent as 158x120" in result.output
    backend = vcam_backend.instances[-1]
    assert (backend.width, backend.height) == (158, 120) and backend.frames
