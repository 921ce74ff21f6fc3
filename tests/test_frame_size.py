"""Even sizes for the virtual camera, through the real pyvirtualcam.Camera over a recording backend."""

from __future__ import annotations

import numpy as np
import pytest

from greenscreen_cam.frame_size import EvenSizeSink, even_size
from greenscreen_cam.sinks import VirtualCameraSink


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
