"""Automatic subject selection: the largest face, widened to a head-and-shoulders box.

Uses OpenCV's bundled Haar cascade (no download). Frames are uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class FaceFinder:
    """Finds the largest frontal face and proposes a head-and-shoulders box around it."""

    def __init__(self) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's face cascade could not be loaded from {path}")

    def largest_face(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """``(x, y, w, h)`` of the largest face in ``frame``, or None."""
        h, w = frame.shape[:2]
        scale = min(1.0, 480.0 / max(h, w))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        faces = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        if len(faces) == 0:
            return None
        x, y, fw, fh = max(faces, key=lambda f: int(f[2]) * int(f[3]))
        return (round(x / scale), round(y / scale), round(fw / scale), round(fh / scale))

    def subject_box(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """A head-and-shoulders box around the largest face, clipped to the frame, or None."""
        face = self.largest_face(frame)
        if face is None:
            return None
        return head_and_shoulders(face, frame.shape[1], frame.shape[0])


def head_and_shoulders(face: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Widen a face box: 1.2 face widths each side, half a face above, down to the bottom of the frame."""
    x, y, w, h = face
    x0 = max(0, round(x - 1.2 * w))
    x1 = min(width, round(x + w + 1.2 * w))
    y0 = max(0, round(y - 0.5 * h))
    y1 = height
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))
