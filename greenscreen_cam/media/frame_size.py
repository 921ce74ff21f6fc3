"""Even frame sizes for the virtual camera: Chrome rejects YUV 4:2:0 frames of odd width or height.

pyvirtualcam converts frames to I420 (Linux), NV12 (Windows) or UYVY (macOS), whose chroma
planes cover 2x2 (or 2x1) pixel blocks; a frame of odd width or height is refused by Chrome
(v4l2loopback issue 472) or converted with a ragged edge. greencam therefore always opens the
virtual camera at even dimensions, crops the last column and/or row of an odd-sized frame
(:class:`EvenSizeSink`) and says so once (:func:`even_size`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EvenSizeSink", "even_size"]


def even_size(width: int, height: int) -> tuple[int, int, str | None]:
    """``(even width, even height, note)``; the note is None when nothing was rounded.

    Example:
        >>> even_size(641, 480)
        (640, 480, 'virtual camera: the 641x480 picture is sent as 640x480 (virtual cameras need even sizes)')
    """
    if width < 2 or height < 2:
        raise ValueError(f"a {width}x{height} picture is too small for a virtual camera")
    ew, eh = width - width % 2, height - height % 2
    if (ew, eh) == (width, height):
        return width, height, None
    return (
        ew,
        eh,
        f"virtual camera: the {width}x{height} picture is sent as {ew}x{eh} (virtual cameras need even sizes)",
    )


class EvenSizeSink:
    """Wraps a sink opened at even dimensions: crops each ``(H, W, 3)`` frame to them before sending.

    Args:
        sink: Any sink (``send``/``close``), e.g. the virtual camera opened at :func:`even_size`'s size.
        width, height: The even size it was opened at.
    """

    def __init__(self, sink: Any, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"{width}x{height} is not an even size")
        self.sink = sink
        self.width, self.height = width, height

    def send(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if (w, h) != (self.width, self.height):
            frame = frame[: self.height, : self.width]
        self.sink.send(frame)

    def close(self) -> None:
        self.sink.close()

    def abort(self) -> None:
        abort = getattr(self.sink, "abort", None)
        (abort if callable(abort) else self.sink.close)()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)

    def __enter__(self) -> EvenSizeSink:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
