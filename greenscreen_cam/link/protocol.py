"""The wire format of ``greencam serve`` (see ``docs/protocol.md``), shared by the server and its clients.

No aiortc or torch here, so it can be imported (and unit-tested) without them.

Masks travel server -> client as binary data-channel messages::

    0-3   b"GCM1"
    4-7   uint32 BE  frame tag: the RTP timestamp of the video frame the mask belongs to
    8-11  uint32 BE  mask sequence number
    12-13 uint16 BE  mask width
    14-15 uint16 BE  mask height
    16    uint8      state: 0 tracking (visible), 1 lost (not visible), 2 waiting for a prompt
    17    uint8      encoding: 1 = 8-bit probability 0..255, row-major, zlib (RFC 1950);
                     2 = one such plane per subject, plane after plane, zlib
    18-19 uint16 BE  encoding 2: the number of planes (2 to MAX_MASK_PLANES); encoding 1: zero
    20-23 float32 BE object score (SAM 2's visibility logit; > 0 means visible)
    24..  payload

Everything else is a JSON object with a ``"type"``, sent as a text message.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenscreen_cam.core import MaskResult
from greenscreen_cam.errors import (  # noqa: F401  (re-exported for the link's users)
    LinkAuthError,
    LinkError,
    LinkFullError,
    LinkProtocolError,
    LinkTLSError,
    LinkUnreachableError,
)
from greenscreen_cam.track.prompt import Prompt

MAGIC = b"GCM1"
HEADER = struct.Struct(">4sIIHHBBHf")
"""magic, tag, seq, width, height, state, encoding, reserved, object score (24 bytes)."""
ENCODING_U8_ZLIB = 1
ENCODING_U8_PLANES_ZLIB = 2
"""Several subjects: one probability plane each, so that the client upsamples each before they meet."""
MAX_MASK_PLANES = 8
"""Most planes (subjects) one mask carries: ``greenscreen_cam.track.multi.MAX_SUBJECTS``."""
STATE_TRACKING, STATE_LOST, STATE_WAITING = 0, 1, 2
STATE_NAMES = {STATE_TRACKING: "tracking", STATE_LOST: "lost", STATE_WAITING: "waiting"}
CHANNEL_LABEL = "greencam"
LOGIT_LIMIT = 8.0
"""Logits decoded from 8-bit probabilities are clamped to ``[-LOGIT_LIMIT, LOGIT_LIMIT]``."""
MAX_TEXT_MESSAGE = 16 * 1024
"""Text messages longer than this are refused (a prompt is a few hundred bytes)."""
MAX_POINTS = 64
MAX_FRAME_SIDE = 16384
"""Largest ``width``/``height`` a prompt message may name (pixels; a 16K frame)."""
MAX_COORDINATE = 1_000_000.0
"""Largest magnitude of a prompt coordinate (pixels); boxes may hang over the frame's edge, but not by more."""
DEFAULT_PORT = 8470


# --------------------------------------------------------------------------- masks


@dataclass
class RemoteMask(MaskResult):
    """One mask that came back from the server, mapped to the client's own frame.

    A :class:`greenscreen_cam.core.MaskResult` (what every tracker of the pipeline
    returns) with three fields of the link added.

    Attributes:
        frame_index: ``Frame.index`` of the client frame the mask belongs to.
        timestamp: ``Frame.timestamp`` (``time.perf_counter()`` at capture) of that frame.
        logits: ``(h, w)`` float32 low-resolution mask logits covering the whole frame
            (the tracker's ``S/4`` square output, e.g. 64x64 at 256 px), clamped to
            ``[-LOGIT_LIMIT, LOGIT_LIMIT]``; upsample to the frame like the local tracker's.
            ``(n, h, w)`` when the session tracks ``n`` subjects: one plane each, upsampled one by
            one before they meet (:func:`greenscreen_cam.key.compositor.upsample_union`).
            None while the server waits for a prompt.
        visible: True when the server saw the subject (state "tracking").
        object_score: SAM 2's visibility logit (> 0 means visible; 0 while waiting).
        selected: False while the server waits for a prompt (state "waiting").
        state: ``"tracking"``, ``"lost"`` or ``"waiting"`` (no prompt yet).
        seq: The server's mask sequence number (per session).
        received: ``time.perf_counter()`` when the mask arrived on the client.
    """

    state: str = "tracking"
    seq: int = 0
    received: float = 0.0


@dataclass
class MaskMessage:
    """A decoded binary mask message (before the client maps its tag to a frame).

    Attributes:
        tag: RTP timestamp of the frame as the server received it (uint32).
        seq: Mask sequence number of the session.
        state: ``STATE_TRACKING``, ``STATE_LOST`` or ``STATE_WAITING``.
        object_score: SAM 2's visibility logit.
        probability: ``(height, width)`` uint8 subject probability, 0..255; ``(n, height, width)``
            for ``n`` subjects (encoding 2), one plane each, in the order they were selected.
    """

    tag: int
    seq: int
    state: int
    object_score: float
    probability: np.ndarray


def probability_u8(logits: np.ndarray) -> np.ndarray:
    """Mask logits (any float array) -> uint8 probability ``round(sigmoid(x) * 255)``, same shape."""
    x = np.clip(np.asarray(logits, dtype=np.float32), -30.0, 30.0)
    return np.rint(255.0 / (1.0 + np.exp(-x))).astype(np.uint8)


def logits_from_u8(prob: np.ndarray, limit: float = LOGIT_LIMIT) -> np.ndarray:
    """uint8 probability -> float32 logits, clamped to ``[-limit, limit]`` (0 and 255 map to the limits)."""
    p = prob.astype(np.float32) / 255.0
    eps = 1.0 / (1.0 + math.exp(limit))
    p = np.clip(p, eps, 1.0 - eps)
    return np.clip(np.log(p / (1.0 - p)), -limit, limit).astype(np.float32)


def encode_mask(tag: int, seq: int, state: int, object_score: float, probability: np.ndarray) -> bytes:
    """Pack one mask message (see the module docstring).

    Args:
        tag: Frame tag (taken modulo 2**32).
        seq: Sequence number (taken modulo 2**32).
        state: One of the ``STATE_*`` values.
        object_score: Visibility logit (stored as float32; non-finite values become +/-1e4).
        probability: ``(height, width)`` uint8 probabilities, or ``(n, height, width)``: one plane
            per subject (encoding 2 for ``n >= 2``; one plane goes as encoding 1).
    """
    if probability.dtype != np.uint8 or probability.ndim not in (2, 3) or probability.size == 0:
        raise ValueError(f"expected an (h, w) uint8 probability mask, got {probability.shape} {probability.dtype}")
    planes = probability if probability.ndim == 3 else probability[None]
    if len(planes) > MAX_MASK_PLANES:
        raise ValueError(f"{len(planes)} mask planes; at most {MAX_MASK_PLANES}")
    if len(planes) == 1:
        planes = planes[0]
    n, h, w = (1, *planes.shape) if planes.ndim == 2 else planes.shape
    score = float(object_score)
    if not math.isfinite(score):
        score = math.copysign(1e4, score) if not math.isnan(score) else 0.0
    score = max(-1e4, min(1e4, score))
    encoding, count = (ENCODING_U8_ZLIB, 0) if n == 1 else (ENCODING_U8_PLANES_ZLIB, n)
    head = HEADER.pack(MAGIC, tag & 0xFFFFFFFF, seq & 0xFFFFFFFF, w, h, state, encoding, count, score)
    return head + zlib.compress(np.ascontiguousarray(planes).tobytes(), 6)


def decode_mask(data: bytes) -> MaskMessage:
    """Unpack a mask message; raises LinkProtocolError when it is not one."""
    if len(data) < HEADER.size:
        raise LinkProtocolError(f"mask message too short ({len(data)} bytes)")
    magic, tag, seq, w, h, state, encoding, count, score = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise LinkProtocolError(f"not a greencam mask message (magic {magic!r})")
    if encoding == ENCODING_U8_ZLIB:
        n = 1
    elif encoding == ENCODING_U8_PLANES_ZLIB:
        if not 2 <= count <= MAX_MASK_PLANES:
            raise LinkProtocolError(f"a mask of {count} planes (2 to {MAX_MASK_PLANES} expected)")
        n = count
    else:
        raise LinkProtocolError(f"unknown mask encoding {encoding}")
    if state not in STATE_NAMES:
        raise LinkProtocolError(f"unknown mask state {state}")
    expected = n * w * h
    try:
        # max_length bounds what a small hostile payload may inflate to
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data[HEADER.size :], expected + 1)
    except zlib.error as e:
        raise LinkProtocolError(f"corrupt mask payload ({e})") from None
    size = f"{n} x {w}x{h}" if n > 1 else f"{w}x{h}"
    if len(raw) < expected:
        raise LinkProtocolError(f"mask payload holds {len(raw)} bytes, header says {size}")
    if len(raw) > expected or not inflater.eof:
        raise LinkProtocolError(f"mask payload is longer than the {size} bytes its header says, or cut short")
    prob = np.frombuffer(raw, dtype=np.uint8).reshape((h, w) if n == 1 else (n, h, w))
    return MaskMessage(int(tag), int(seq), int(state), float(score), prob)


# --------------------------------------------------------------------------- text messages


def prompt_message(prompt: Prompt, width: int, height: int, msg_id: int | None = None, *, add: bool = False) -> str:
    """The ``{"type": "prompt", ...}`` message for ``prompt`` drawn on a ``width x height`` frame.

    With ``add`` the subject joins the ones already tracked (``"add": true``); without it, it
    replaces them all.
    """
    msg: dict[str, Any] = {
        "type": "prompt",
        "box": list(prompt.box) if prompt.box is not None else None,
        "points": [list(p) for p in prompt.points],
        "labels": list(prompt.labels),
        "width": int(width),
        "height": int(height),
    }
    if add:
        msg["add"] = True
    if msg_id is not None:
        msg["id"] = int(msg_id)
    return json.dumps(msg)


def drop_message(subject: int, msg_id: int | None = None) -> str:
    """The ``{"type": "prompt", "drop": n}`` message that stops tracking subject ``n`` (1-based, in the
    order the subjects were selected); the others keep tracking."""
    msg: dict[str, Any] = {"type": "prompt", "drop": int(subject)}
    if msg_id is not None:
        msg["id"] = int(msg_id)
    return json.dumps(msg)


def parse_text(text: str) -> dict[str, Any]:
    """Parse a text message into a dict with a string ``"type"``, or raise LinkProtocolError."""
    if len(text) > MAX_TEXT_MESSAGE:
        raise LinkProtocolError(f"message of {len(text)} characters is over the {MAX_TEXT_MESSAGE} limit")
    try:
        msg = json.loads(text)
    except ValueError:
        raise LinkProtocolError("message is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise LinkProtocolError('message is not a JSON object with a "type"')
    return msg


def _number(value: Any, what: str, low: float = -MAX_COORDINATE, high: float = MAX_COORDINATE) -> float:
    """``value`` as a float, or LinkProtocolError unless it is a finite JSON number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LinkProtocolError(f"{what} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise LinkProtocolError(f"{what} must be a finite number")
    if not low <= number <= high:
        raise LinkProtocolError(f"{what} {number:g} is out of range ({low:g} to {high:g})")
    return number


def prompt_adds(msg: dict[str, Any]) -> bool:
    """True when a ``prompt`` message adds its subject to those tracked (``"add": true``), False when it replaces them.

    Raises LinkProtocolError unless ``add`` is absent or a JSON boolean.
    """
    add = msg.get("add", False)
    if not isinstance(add, bool):
        raise LinkProtocolError(f"add must be true or false, not {type(add).__name__}")
    return add


def prompt_drop(msg: dict[str, Any]) -> int | None:
    """The subject a ``prompt`` message drops (``"drop": n``, 1-based), or None when it selects one.

    Raises LinkProtocolError unless ``drop`` is a JSON integer from 1 to ``MAX_MASK_PLANES``
    (not a boolean) in a message that carries no subject of its own (no box, points or ``add``).
    Whether the session tracks that many subjects is checked where they are known.
    """
    if "drop" not in msg:
        return None
    n = msg["drop"]
    if isinstance(n, bool) or not isinstance(n, int):
        raise LinkProtocolError(f"drop must be a subject number, 1 to {MAX_MASK_PLANES}, not {type(n).__name__}")
    if not 1 <= n <= MAX_MASK_PLANES:
        raise LinkProtocolError(f"drop {n} is out of range (subjects are numbered 1 to {MAX_MASK_PLANES})")
    if msg.get("box") is not None or msg.get("points") or "add" in msg:
        raise LinkProtocolError("a drop names a subject only: no box, points or add")
    return n


def parse_prompt(msg: dict[str, Any], frame_width: int, frame_height: int) -> Prompt:
    """A ``prompt`` message -> :class:`Prompt` in a ``frame_width x frame_height`` frame.

    The message's coordinates are in its own ``width x height`` frame; they are
    scaled to the receiving frame and clipped into it. Every number must be finite:
    ``width`` and ``height`` in ``[1, MAX_FRAME_SIDE]``, coordinates and sizes within
    ``±MAX_COORDINATE``; ``add``, if there, a boolean (see :func:`prompt_adds`). Raises
    LinkProtocolError on a malformed message (with the reason) and PromptError on an empty or
    degenerate prompt.
    """
    prompt_adds(msg)
    w = _number(msg.get("width"), "width", 1.0, MAX_FRAME_SIDE)
    h = _number(msg.get("height"), "height", 1.0, MAX_FRAME_SIDE)
    sx, sy = frame_width / w, frame_height / h
    box = None
    if msg.get("box") is not None:
        raw = msg["box"]
        if not isinstance(raw, list) or len(raw) != 4:
            raise LinkProtocolError("box must be [x, y, w, h] or null")
        bx, by, bw, bh = (_number(v, "box") for v in raw)
        x0 = min(max(bx * sx, 0.0), frame_width)
        y0 = min(max(by * sy, 0.0), frame_height)
        x1 = min(max((bx + bw) * sx, 0.0), frame_width)
        y1 = min(max((by + bh) * sy, 0.0), frame_height)
        box = (x0, y0, x1 - x0, y1 - y0)
    points_raw = msg.get("points") or []
    labels_raw = msg.get("labels") or []
    if not isinstance(points_raw, list) or not isinstance(labels_raw, list):
        raise LinkProtocolError("points and labels must be lists")
    if len(points_raw) > MAX_POINTS:
        raise LinkProtocolError(f"at most {MAX_POINTS} points")
    if len(points_raw) != len(labels_raw):
        raise LinkProtocolError("every point needs a label")
    points = []
    for p in points_raw:
        if not isinstance(p, list) or len(p) != 2:
            raise LinkProtocolError("a point must be [x, y]")
        px = min(max(_number(p[0], "point") * sx, 0.0), frame_width - 1e-3)
        py = min(max(_number(p[1], "point") * sy, 0.0), frame_height - 1e-3)
        points.append((px, py))
    labels = []
    for label in labels_raw:
        if label not in (0, 1) or isinstance(label, bool):
            raise LinkProtocolError("labels must be 1 (subject) or 0 (not subject)")
        labels.append(int(label))
    prompt = Prompt(box=box, points=tuple(points), labels=tuple(labels))
    prompt.validate(frame_width, frame_height)
    return prompt


def redact(token: str) -> str:
    """A token shortened for logs: its first 4 characters and an ellipsis (never the whole token)."""
    return (token[:4] + "…") if len(token) > 8 else "…"
