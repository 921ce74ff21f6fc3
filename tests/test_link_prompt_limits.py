"""Prompt messages whose numbers are not finite or not in range are refused with a reason (issue 18, item 7)."""

from __future__ import annotations

import math
import re

import pytest

from greenscreen_cam.errors import PromptError
from greenscreen_cam.link import protocol as P

POINT = {"points": [[5, 5]], "labels": [1]}


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        # The hostile case of the report: 5e-324 made the scale infinite and the box NaN.
        ({"box": [1, 1, 2, 2], "width": 5e-324, "height": 10}, "width 4.94066e-324 is out of range"),
        ({"box": [1, 1, 2, 2], "width": 10, "height": 5e-324}, "height 4.94066e-324 is out of range"),
        ({**POINT, "width": 0.5, "height": 10}, "width 0.5 is out of range"),
        ({**POINT, "width": -10, "height": 10}, "width -10 is out of range"),
        ({**POINT, "width": 1e300, "height": 10}, "width 1e+300 is out of range"),
        ({**POINT, "width": P.MAX_FRAME_SIDE + 1, "height": 10}, "is out of range"),
        ({**POINT, "width": 10**400, "height": 10}, "width must be a finite number"),
        ({**POINT, "width": "640", "height": 10}, "width must be a number, not str"),
        ({**POINT, "width": True, "height": 10}, "width must be a number, not bool"),
        ({**POINT, "width": [640], "height": 10}, "width must be a number, not list"),
        ({**POINT, "width": 10}, "height must be a number, not NoneType"),
        ({"box": [1, 1, 1e308, 2], "width": 10, "height": 10}, "box 1e+308 is out of range"),
        ({"box": [-1e7, 1, 2, 2], "width": 10, "height": 10}, "box -1e+07 is out of range"),
        ({"box": [1, 1, float("inf"), 2], "width": 10, "height": 10}, "box must be a finite number"),
        ({"box": [1, 1, float("-inf"), 2], "width": 10, "height": 10}, "box must be a finite number"),
        ({"box": [1, 1, 2, None], "width": 10, "height": 10}, "box must be a number, not NoneType"),
        ({"points": [[float("nan"), 1]], "labels": [1], "width": 10, "height": 10}, "point must be a finite"),
        ({"points": [[1, 2e6]], "labels": [1], "width": 10, "height": 10}, "point 2e+06 is out of range"),
        ({"points": [[1, {}]], "labels": [1], "width": 10, "height": 10}, "point must be a number, not dict"),
    ],
)
def test_numbers_out_of_range_are_refused_with_a_reason(msg: dict, fragment: str) -> None:
    with pytest.raises(P.LinkProtocolError, match=re.escape(fragment)):
        P.parse_prompt({"type": "prompt", **msg}, 1280, 720)


def test_the_nan_box_message_of_the_report_no_longer_becomes_a_prompt() -> None:
    text = '{"type": "prompt", "box": [0, 0, 200, 200], "width": 5e-324, "height": 480}'
    with pytest.raises(P.LinkProtocolError, match="width"):
        P.parse_prompt(P.parse_text(text), 640, 480)


@pytest.mark.parametrize(
    "msg",
    [
        {"box": [-5e5, -5e5, 1e6, 1e6], "width": 1, "height": 1},  # extremes that are allowed: clipped
        {"box": [0, 0, 1, 1], "width": P.MAX_FRAME_SIDE, "height": 1},
        {"points": [[P.MAX_COORDINATE, -P.MAX_COORDINATE]], "labels": [1], "width": 1.5, "height": 7},
    ],
)
def test_every_accepted_prompt_is_finite_and_inside_the_frame(msg: dict) -> None:
    try:
        prompt = P.parse_prompt({"type": "prompt", **msg}, 640, 480)
    except PromptError:
        return  # degenerate after clipping: refused by the prompt's own check, also fine
    numbers = list(prompt.box or ()) + [v for p in prompt.points for v in p]
    assert numbers and all(math.isfinite(v) for v in numbers)
    prompt.validate(640, 480)
