"""Automatic subject selection: a confirmed face, widened to a head-and-shoulders box.

Uses OpenCV's bundled Haar cascade (no download). Frames are ``(H, W, 3)`` uint8 RGB.

The cascade alone fires on door frames, shirts and knees (on the shared
``pingpong.mp4`` clip it proposed a 1179x720 "head and shoulders" around a
false face). A candidate is accepted only when it is plausible for a person in
front of a camera (see :class:`FaceRules`: size relative to the frame, position,
skin-coloured centre) and the same face is found in ``confirm`` of the last
``window`` frames. :class:`FaceFinder` keeps that short history; call
:meth:`FaceFinder.reset` when a new search starts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

Box = tuple[int, int, int, int]
"""``(x, y, w, h)`` in frame pixels."""


@dataclass(frozen=True)
class FaceRules:
    """What makes a detected face plausible, as fractions of the frame.

    Attributes:
        min_size: Smallest face width, as a fraction of the frame height.
        max_size: Largest face width, as a fraction of the frame height (a face filling
            half the picture height is already a very close webcam shot).
        max_center_y: Lowest face centre, as a fraction of the frame height from the top
            (a head sits in the upper part of the picture).
        min_skin: Smallest fraction of skin-coloured pixels in the face's central half
            (YCrCb test; skipped on grey or infrared frames). 0 switches the test off.
        confirm: How many of the last ``window`` frames must show the same face.
        window: How many recent frames are remembered.
        min_iou: Overlap (intersection over union) for two detections to be the same face.
    """

    min_size: float = 0.04
    max_size: float = 0.5
    max_center_y: float = 0.6
    min_skin: float = 0.3
    confirm: int = 3
    window: int = 4
    min_iou: float = 0.3


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def skin_fraction(frame: np.ndarray, face: Box) -> float | None:
    """Fraction of skin-coloured pixels in the central half of ``face``; None on a grey frame.

    The test is the common YCrCb range (Cr 133-173, Cb 77-127), which holds
    across skin tones under ordinary light. A frame without colour (infrared or
    monochrome cameras) cannot be tested and gives None.
    """
    x, y, w, h = face
    centre = frame[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4]
    if centre.size == 0:
        return 0.0
    ycc = cv2.cvtColor(centre, cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1].astype(np.int16), ycc[..., 2].astype(np.int16)
    if np.abs(cr - 128).max() <= 3 and np.abs(cb - 128).max() <= 3:
        return None
    return float(((cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127)).mean())


def implausible(face: Box, width: int, height: int, rules: FaceRules = FaceRules()) -> str | None:
    """Why ``face`` cannot be a person's face in a ``width`` x ``height`` frame, or None if it can.

    Only geometry is checked here (size and position); see :func:`skin_fraction` for colour.
    """
    x, y, w, h = face
    if w < rules.min_size * height:
        return f"too small ({w} px for a {height} px high frame)"
    if w > rules.max_size * height:
        return f"too large ({w} px for a {height} px high frame)"
    if y + h / 2 > rules.max_center_y * height:
        return f"too low (centre at {(y + h / 2) / height:.0%} of the height)"
    return None


CASCADE_WINDOW = 24
"""The Haar cascade's window in pixels: the smallest face it can find in the picture it is given."""


def detection_scale(height: int, rules: FaceRules = FaceRules()) -> float:
    """How much a ``height``-px frame may be scaled down so that a ``rules.min_size`` face still fits the window."""
    smallest = rules.min_size * height
    return 1.0 if smallest <= 0 else min(1.0, CASCADE_WINDOW / smallest)


class FaceFinder:
    """Finds the subject's face and proposes a head-and-shoulders box around it.

    Stateful: :meth:`observe` / :meth:`subject_box` remember the plausible faces
    of the last ``rules.window`` frames they were given and answer only once the
    same face was seen in ``rules.confirm`` of them.

    Args:
        rules: The plausibility and agreement rules.
    """

    def __init__(self, rules: FaceRules | None = None) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's face cascade could not be loaded from {path}")
        self.rules = rules or FaceRules()
        self._history: deque[Box | None] = deque(maxlen=max(1, self.rules.window))
        self.rejected: list[str] = []
        """Why the candidates of the last frame were rejected (for logs and tests)."""

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Every face the cascade finds in ``frame`` (unfiltered), in frame pixels, the clearest first.

        Clearest = found by the most overlapping cascade windows (a real face scores
        11-14 on the shared juggling clip, the sunlit grass taken for a larger face 6-9);
        ties go to the larger face.

        The frame is scaled down only as far as the smallest plausible face
        (``rules.min_size`` of the height) still covers the cascade's
        :data:`CASCADE_WINDOW`: a 720p frame is searched at 600 px high, so a
        29-px face is found (a fixed 480-px copy missed every face under ~64 px).
        """
        h, w = frame.shape[:2]
        scale = detection_scale(h, self.rules)
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        largest = max(CASCADE_WINDOW, round(self.rules.max_size * h * scale * 1.25))  # larger ones are implausible
        faces, votes = self._cascade.detectMultiScale2(
            gray,
            scaleFactor=1.1,
            minNeighbors=5,
            minSize=(CASCADE_WINDOW, CASCADE_WINDOW),
            maxSize=(largest, largest),
        )
        ranked = sorted(zip(faces, np.ravel(votes)), key=lambda fv: (-int(fv[1]), -int(fv[0][2]) * int(fv[0][3])))
        return [
            (round(x / scale), round(y / scale), round(fw / scale), round(fh / scale)) for (x, y, fw, fh), _ in ranked
        ]

    def best_face(self, frame: np.ndarray) -> Box | None:
        """The clearest plausible face in this one frame (no history; see :meth:`detect`), or None."""
        height, width = frame.shape[:2]
        self.rejected = []
        best: Box | None = None
        for face in self.detect(frame):
            reason = implausible(face, width, height, self.rules)
            if reason is None and self.rules.min_skin > 0:
                skin = skin_fraction(frame, face)
                if skin is not None and skin < self.rules.min_skin:
                    reason = f"not skin-coloured ({skin:.0%})"
            if reason is not None:
                self.rejected.append(f"face {face}: {reason}")
            elif best is None:
                best = face
        return best

    def observe(self, frame: np.ndarray) -> Box | None:
        """Add this frame's face to the history; the face once it is confirmed, else None."""
        face = self.best_face(frame)
        self._history.append(face)
        if face is None:
            return None
        agreeing = sum(1 for seen in self._history if seen is not None and iou(seen, face) >= self.rules.min_iou)
        return face if agreeing >= self.rules.confirm else None

    def subject_box(self, frame: np.ndarray) -> Box | None:
        """A head-and-shoulders box around the confirmed face (see :meth:`observe`), clipped to the frame."""
        face = self.observe(frame)
        if face is None:
            return None
        return head_and_shoulders(face, frame.shape[1], frame.shape[0])

    def reset(self) -> None:
        """Forget earlier frames (a new search starts, e.g. after the ``a`` hotkey)."""
        self._history.clear()


def head_and_shoulders(face: Box, width: int, height: int) -> Box:
    """Widen a face box: 1.2 face widths each side, half a face above, down to the bottom of the frame."""
    x, y, w, h = face
    x0 = max(0, round(x - 1.2 * w))
    x1 = min(width, round(x + w + 1.2 * w))
    y0 = max(0, round(y - 0.5 * h))
    y1 = height
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))
