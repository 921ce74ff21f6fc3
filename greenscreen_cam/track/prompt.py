"""The user's selection of the subject: a box and/or points, parsed and checked against a frame.

Standard library only, so the CLI can parse and check a prompt before torch is imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from greenscreen_cam.errors import PromptError


@dataclass(frozen=True)
class Prompt:
    """What the user selected on a frame, in that frame's pixel coordinates.

    Attributes:
        box: ``(x, y, w, h)`` with ``x2 = x + w``, or None.
        points: ``[(x, y), ...]`` clicks, or empty.
        labels: One label per point: 1 positive (subject), 0 negative (not subject).
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()

    @classmethod
    def from_box(cls, box: Sequence[float]) -> Prompt:
        """A box-only prompt from any four numbers ``x, y, w, h``."""
        x, y, w, h = (float(v) for v in box)
        return cls(box=(x, y, w, h))

    def validate(self, width: int, height: int) -> None:
        """Raise PromptError unless the prompt is non-empty and lies inside a ``width x height`` frame."""
        if self.box is None and not self.points:
            raise PromptError("a prompt needs a --bbox or at least one --point")
        if len(self.points) != len(self.labels):
            raise PromptError("every point needs a label")
        if self.box is not None:
            x, y, w, h = self.box
            if w <= 0 or h <= 0:
                raise PromptError(f"--bbox {fmt_box(self.box)} has zero or negative size (w and h must be > 0)")
            if x < 0 or y < 0 or x + w > width or y + h > height:
                raise PromptError(
                    f"--bbox {fmt_box(self.box)} lies outside the {width}x{height} frame "
                    f"(need 0 <= x, 0 <= y, x + w <= {width}, y + h <= {height})"
                )
        for px, py in self.points:
            if not (0 <= px < width and 0 <= py < height):
                raise PromptError(f"point {px:g},{py:g} lies outside the {width}x{height} frame")
        if self.points and not any(label == 1 for label in self.labels) and self.box is None:
            raise PromptError("negative points alone cannot select a subject; add a --point or a --bbox")

    def scaled(self, sx: float, sy: float) -> Prompt:
        """The same selection on a frame scaled by ``sx`` horizontally and ``sy`` vertically."""
        box = None
        if self.box is not None:
            x, y, w, h = self.box
            box = (x * sx, y * sy, w * sx, h * sy)
        return Prompt(box=box, points=tuple((x * sx, y * sy) for x, y in self.points), labels=self.labels)


def fmt_box(box: Sequence[float]) -> str:
    """``(10.0, 20.5, 30, 40)`` -> ``"10,20.5,30,40"``."""
    return ",".join(f"{v:g}" for v in box)


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    """Parse ``count`` comma-separated finite numbers, or raise PromptError naming the flag ``what``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        example = "x,y,w,h e.g. 400,80,480,640" if count == 4 else "x,y e.g. 640,360"
        raise PromptError(f"malformed {what} {text!r}: expected {example}")
    return values


@dataclass(frozen=True)
class Selection:
    """Several subjects, one :class:`Prompt` each (tracked by :class:`greenscreen_cam.track.multi.MultiTracker`).

    It has :class:`Prompt`'s ``validate`` and ``scaled``, so it travels wherever a prompt does.
    """

    prompts: tuple[Prompt, ...]

    def validate(self, width: int, height: int) -> None:
        if not self.prompts:
            raise PromptError("a selection needs at least one subject")
        for i, p in enumerate(self.prompts, start=1):
            try:
                p.validate(width, height)
            except PromptError as e:
                raise PromptError(f"subject {i}: {e}") from None

    def scaled(self, sx: float, sy: float) -> Selection:
        return Selection(tuple(p.scaled(sx, sy) for p in self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)


def build_prompt(
    bbox: str | Sequence[str] | None, points: Sequence[str] = (), negative: Sequence[str] = ()
) -> Prompt | Selection | None:
    """The selection given by ``--bbox``, ``--point`` and ``--negative-point`` texts, or None when none is given.

    Each ``--bbox`` and each ``--point`` is one subject (boxes first, then points, each in the
    order given); every ``--negative-point`` goes with the last subject. One subject gives a
    :class:`Prompt`, several a :class:`Selection`.

    Example:
        >>> build_prompt(["0,0,10,10"], ["50,50"], ["55,55"]).prompts[1]
        Prompt(box=None, points=((50.0, 50.0), (55.0, 55.0)), labels=(1, 0))
    """
    boxes = [bbox] if isinstance(bbox, str) else list(bbox or [])
    if not boxes and not points and not negative:
        return None
    parsed_boxes = [parse_numbers(b, 4, "--bbox") for b in boxes]  # "" is a malformed box, not none
    pts = [parse_numbers(p, 2, "--point") for p in points]
    neg = [parse_numbers(p, 2, "--negative-point") for p in negative]
    if not parsed_boxes and not pts:
        raise PromptError("--negative-point needs a --bbox or a --point that selects the subject")
    subjects: list[Prompt] = [Prompt(box=(b[0], b[1], b[2], b[3])) for b in parsed_boxes]
    subjects += [Prompt(points=((p[0], p[1]),), labels=(1,)) for p in pts]
    if neg:
        last = subjects[-1]
        subjects[-1] = Prompt(
            box=last.box,
            points=last.points + tuple((p[0], p[1]) for p in neg),
            labels=last.labels + (0,) * len(neg),
        )
    return subjects[0] if len(subjects) == 1 else Selection(tuple(subjects))


def default_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centre half of a ``width x height`` frame, ``(x, y, w, h)``."""
    return (width / 4, height / 4, width / 2, height / 2)
