"""Mask logits -> alpha matte -> keyed frame.

Frames are ``(H, W, 3)`` uint8 RGB. The tracker's mask arrives as float32
*logits* at any resolution (SAM 2's low-resolution output, or the frame's).

Default path (``refine="auto"``): the logits are resized (bilinear) to a small
*work resolution* (long side :data:`WORK_SIZE` px), thresholded, cleaned (small
holes filled, small detached islands dropped, grown or shrunk), feathered, and
the resulting soft alpha is upsampled (bilinear, no blockiness) to the frame.
All morphology therefore costs the same whatever the camera resolution.

``refine="none"`` skips every step, temporal smoothing included: the alpha is
exactly ``sigmoid`` of the logits upsampled to the frame (bilinear, with torch's kernel, as
sam2 upsamples them), so its mask is the official predictor's bit for bit.

Several subjects arrive as ``(n, h, w)`` logits, one plane per subject. Each plane is upsampled
on its own and only then do they meet (per-pixel maximum): the official predictor's order, see
:func:`upsample_union`. Taking the maximum first and upsampling once would cut into the
subjects where two of them meet.

Blending happens in uint8 fixed point: pixels with alpha 255 are the camera
pixels unchanged, alpha 0 is the background exactly (the key colour by
default), and only the thin soft edge is mixed.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from greenscreen_cam.config import NAMED_COLORS, KeyingSettings, parse_color
from greenscreen_cam.errors import ConfigError

__all__ = ["Compositor", "CompositorSettings", "make_background", "parse_color", "upsample_union"]

LOGIT_CLIP = 1000.0
"""Incoming logits are clipped to +-this (finite, so resizing cannot make NaN)."""
WORK_SIZE = 400
"""Long side, in pixels, of the resolution mask refinement runs at."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"}

CompositorSettings = KeyingSettings
"""The compositor's options are the keying settings, defined once in :mod:`greenscreen_cam.config`."""


# --------------------------------------------------------------------------- backgrounds


class Background(Protocol):
    def frame(self, camera: np.ndarray) -> np.ndarray:
        """The background for this camera frame, same shape, uint8 RGB."""
        ...

    def close(self) -> None: ...


class ColorBackground:
    """A solid colour (the chroma key by default)."""

    def __init__(self, color: tuple[int, int, int]) -> None:
        self.color = color
        self._cache: np.ndarray | None = None

    def frame(self, camera: np.ndarray) -> np.ndarray:
        if self._cache is None or self._cache.shape != camera.shape:
            self._cache = np.empty_like(camera)
            self._cache[:] = self.color
        return self._cache

    def close(self) -> None:
        pass


class BlurBackground:
    """The real background, blurred (``blur[:STRENGTH]``, strength in pixels at the frame's scale)."""

    def __init__(self, strength: float = 25.0) -> None:
        if strength <= 0 or strength > 500:
            raise ConfigError(f"blur strength must be 1..500, got {strength:g}")
        self.strength = strength

    def frame(self, camera: np.ndarray) -> np.ndarray:
        h, w = camera.shape[:2]
        # Blur a small copy and scale it back: the same look at a fraction of the cost.
        factor = max(1, int(self.strength // 4))
        small = cv2.resize(camera, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        sigma = max(0.5, self.strength / factor)
        small = cv2.GaussianBlur(small, (0, 0), sigma)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    def close(self) -> None:
        pass


def _cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``image`` to cover ``width x height`` keeping its aspect, then centre-crop."""
    ih, iw = image.shape[:2]
    scale = max(width / iw, height / ih)
    nw, nh = max(width, math.ceil(iw * scale)), max(height, math.ceil(ih * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    x0, y0 = (nw - width) // 2, (nh - height) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])


class ImageBackground:
    """A picture, scaled to cover the frame."""

    def __init__(self, path: Path) -> None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"cannot read background image {path}")
        self.image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._cache: np.ndarray | None = None

    def frame(self, camera: np.ndarray) -> np.ndarray:
        h, w = camera.shape[:2]
        if self._cache is None or self._cache.shape[:2] != (h, w):
            self._cache = _cover(self.image, w, h)
        return self._cache

    def close(self) -> None:
        pass


class VideoBackground:
    """A video file, looped, scaled to cover the frame; one background frame per output frame."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cap = cv2.VideoCapture(str(path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise ConfigError(f"cannot read background video {path}")
        self._first: np.ndarray | None = first

    def frame(self, camera: np.ndarray) -> np.ndarray:
        if self._first is not None:
            bgr, self._first = self._first, None
        else:
            ok, bgr = self._cap.read()
            if not ok:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self._cap.read()
                if not ok:
                    raise ConfigError(f"background video {self.path} stopped delivering frames")
        h, w = camera.shape[:2]
        return _cover(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), w, h)

    def close(self) -> None:
        self._cap.release()


def make_background(spec: str, color: tuple[int, int, int]) -> Background:
    """Parse ``--background``: ``key``, a colour, ``blur[:STRENGTH]``, an image or a video file."""
    text = spec.strip()
    low = text.lower()
    if low in ("key", ""):
        return ColorBackground(color)
    if low == "blur" or low.startswith("blur:"):
        if low == "blur":
            return BlurBackground()
        try:
            strength = float(low.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"bad --background {spec!r}: use blur or blur:STRENGTH (e.g. blur:25)") from None
        return BlurBackground(strength)
    if low in NAMED_COLORS or low.startswith("#"):
        return ColorBackground(parse_color(text))
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"background file not found: {path}")
        return ImageBackground(path) if suffix in IMAGE_SUFFIXES else VideoBackground(path)
    raise ConfigError(
        f"bad --background {spec!r}: use key, a colour (green, #RRGGBB), blur[:STRENGTH], an image or a video file"
    )


# --------------------------------------------------------------------------- compositor


ALPHA_ZERO_LOGIT = -7.0
"""At or below this logit a pixel's alpha is 0 (``255 * sigmoid(-7) = 0.23`` rounds to 0)."""


def upsample_union(
    logits: np.ndarray, size: tuple[int, int], *, exact: bool = False, floor: float | None = None
) -> np.ndarray:
    """``(h, w)`` or ``(n, h, w)`` logits -> ``(H, W)`` float32 logits of the union, for ``size = (H, W)``.

    Every plane (subject) is upsampled bilinearly by itself, then the planes meet in their
    per-pixel maximum, as ``SAM2VideoPredictor`` upsamples each object's logits to the video
    size before ``(masks > 0).any(0)``.

    Args:
        exact: Upsample with torch's bilinear kernel (``align_corners=False``), the very one
            sam2 uses, so the result equals the official predictor's bit for bit; otherwise
            OpenCV's ``INTER_LINEAR`` (same sampling grid, about 10x faster on a CPU, last bits
            of the logits may differ: about one pixel in 400,000 flips sign).
        floor: Leave out the planes whose every logit is below this (a subject that is not
            there): bilinear values lie between their neighbours', so such a plane stays below
            ``floor`` everywhere and, with ``floor <= ALPHA_ZERO_LOGIT``, can change neither the
            mask nor the 8-bit alpha. At least one plane is kept.
    """
    height, width = size
    planes = logits[None] if logits.ndim == 2 else logits
    if floor is not None and len(planes) > 1:
        keep = planes.reshape(len(planes), -1).max(axis=1) >= floor
        planes = planes[keep] if keep.any() else planes[:1]
    if planes.shape[-2:] == (height, width):
        return planes[0] if len(planes) == 1 else planes.max(axis=0)
    if exact:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[:, None]
            up = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
            return (up[0, 0] if len(planes) == 1 else up[:, 0].amax(dim=0)).numpy()
    out = cv2.resize(planes[0], (width, height), interpolation=cv2.INTER_LINEAR)
    for plane in planes[1:]:
        cv2.max(out, cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR), out)
    return out


def _work_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, WORK_SIZE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


class Compositor:
    """Turns ``(camera frame, mask logits)`` into the keyed frame.

    Args:
        settings: Edge options; validated here.
        background: What shows where the subject is absent; the key colour if None.
    """

    def __init__(
        self, settings: CompositorSettings, background: Background | None = None, *, device: str | None = None
    ) -> None:
        settings.validate()
        self.settings = settings
        self.device = device
        """A torch device (``"cuda"``) to upsample and blend on, or None for the OpenCV path."""
        self._torch_bg: Any = None
        self._stream: Any = None
        self.background = background or ColorBackground(settings.rgb)
        self._prev_alpha: np.ndarray | None = None
        self._scratch: dict[str, np.ndarray] | None = None
        self._logit_threshold = math.log(settings.threshold / (1.0 - settings.threshold))

    def reset(self) -> None:
        """Forget temporal state (after a re-selection or a cut)."""
        self._prev_alpha = None

    def configure(self, settings: CompositorSettings, background: Background | None = None) -> Background | None:
        """Key with ``settings`` (and ``background``, if given) from the next frame on, e.g. mid-call.

        Returns:
            The background it replaced (the caller closes it), or None when ``background`` was None.
        """
        settings.validate()
        self.settings = settings
        self._logit_threshold = math.log(settings.threshold / (1.0 - settings.threshold))
        self.reset()
        if background is None:
            return None
        old, self.background = self.background, background
        self._torch_bg = None
        return old

    # ---------------------------------------------------------------- alpha
    def alpha(self, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Mask logits (any resolution; ``(n, h, w)`` for n subjects) -> uint8 alpha ``(H, W)`` for a ``size = (H, W)`` frame.

        Raises:
            ValueError: logits that are not 2-D or 3-D, empty, or contain NaN.
        """
        return self._upsample(self._soft_alpha(_checked(logits), size), size)

    def _soft_alpha(self, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Validated logits -> uint8 alpha at the work resolution (or the frame's, with refine none)."""
        height, width = size
        if height <= 0 or width <= 0:
            raise ValueError(f"bad frame size {size}")
        s = self.settings
        if s.refine == "none":
            up = upsample_union(logits, (height, width), exact=True, floor=ALPHA_ZERO_LOGIT)
            prob = 1.0 / (1.0 + np.exp(-np.clip(up, -40.0, 40.0)))  # uint8 is already 0 / 255 at +-40
            alpha = np.rint(prob * 255.0).astype(np.uint8)  # exactly the tracker's probability: no smoothing
            # The mask is sam2's ``logits > 0``: alpha >= 128 exactly there. Rounding alone gives 128
            # to logits in (-2e-7, 0], so those (and only those) move down one level, to 127.
            np.minimum(alpha, np.where(up > 0, 255, 127).astype(np.uint8), out=alpha)
            return alpha
        ww, wh = _work_size(width, height)
        soft = self._refined_soft(logits, ww, wh, ww / width)
        if s.smooth > 0:
            soft = self._smooth(soft)  # at work resolution: same effect, a fraction of the cost
        return soft

    def _upsample(self, soft: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        height, width = size
        if soft.shape == (height, width):
            return soft
        alpha = cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.settings.feather == 0:
            # Hardest edge the user asked for: no soft ramp from upsampling either.
            alpha = np.where(alpha >= 128, 255, 0).astype(np.uint8)
        return alpha

    def _refined_soft(self, logits: np.ndarray, ww: int, wh: int, scale: float) -> np.ndarray:
        """Threshold, clean and feather the mask at the ``ww x wh`` work resolution (uint8 alpha)."""
        s = self.settings
        work = upsample_union(logits, (wh, ww))
        mask = (work > self._logit_threshold).astype(np.uint8)
        area = ww * wh
        if s.max_hole > 0 and mask.any():
            mask = _fill_holes(mask, s.max_hole * area)
        if s.min_island > 0 and mask.any():
            mask = _drop_islands(mask, s.min_island * area)
        radius = round((s.grow or s.shrink) * scale)
        if radius > 0:
            op = cv2.dilate if s.grow else cv2.erode
            mask = op(mask, _disk(radius))
        soft = mask * np.uint8(255)
        sigma = s.feather * scale / 2.0
        if sigma > 0.05:
            soft = cv2.GaussianBlur(soft, (0, 0), sigma)
        return soft

    def _smooth(self, alpha: np.ndarray) -> np.ndarray:
        """Blend toward the previous alpha on the current edge only: flicker is damped, motion leaves no trail.

        Edge jitter (a pixel flipping in and out from frame to frame) is blended
        with the previous frames. Anything more than one (work-resolution) pixel
        outside the current matte stays exactly 0 (no ghost where the subject just
        was, the key colour stays exact) and anything more than one pixel inside
        stays exactly 255.
        """
        prev = self._prev_alpha
        if prev is None or prev.shape != alpha.shape:
            self._prev_alpha = alpha
            return alpha
        keep = self.settings.smooth
        out = cv2.addWeighted(prev, keep, alpha, 1.0 - keep, 0.0)
        ring = _disk(1)
        out[cv2.dilate((alpha > 0).view(np.uint8), ring) == 0] = 0
        out[cv2.erode((alpha == 255).view(np.uint8), ring) == 1] = 255
        self._prev_alpha = out
        return out

    # ---------------------------------------------------------------- compose
    def compose(self, frame: np.ndarray, logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Key ``frame`` with ``logits`` (None = no subject yet: background only).

        Returns:
            ``(keyed frame, alpha)``: uint8 RGB ``(H, W, 3)`` and uint8 ``(H, W)``.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if self.device is not None:
            out, alpha = self._compose_torch(frame, logits)
        else:
            alpha = np.zeros((h, w), np.uint8) if logits is None else self.alpha(logits, (h, w))
            out = self.blend(frame, alpha)
        if self.settings.mirror:
            out = cv2.flip(out, 1)
            alpha = cv2.flip(alpha, 1)
        return out, alpha

    def blend(self, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """``frame`` where alpha is 255, background where 0, fixed-point mix in between.

        ``out = frame * a/255 + background * (255-a)/255``, each term rounded in
        uint8, so both ends are exact: camera pixels unchanged at 255, the
        background (the key colour) exactly at 0.
        """
        if alpha.shape != frame.shape[:2]:
            raise ValueError(f"alpha {alpha.shape} does not match frame {frame.shape[:2]}")
        buf = self._buffers(frame.shape)
        a3 = cv2.merge([alpha, alpha, alpha], buf["a3"])
        fg = frame
        if self.settings.despill:
            fg = _despill(frame, self.settings.rgb)
            cv2.copyTo(frame, cv2.compare(alpha, 254, cv2.CMP_GT), fg)
        fg_part = cv2.multiply(fg, a3, buf["fg"], scale=1.0 / 255.0)
        inv = cv2.bitwise_not(a3, buf["inv"])
        bg_part = cv2.multiply(self.background.frame(frame), inv, buf["bg"], scale=1.0 / 255.0)
        return cv2.add(fg_part, bg_part)

    def _compose_torch(self, frame: np.ndarray, logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The same result computed on ``self.device``: only the small work-resolution matte goes up
        with the camera frame, and only the finished frame (and matte) come back."""
        import torch
        import torch.nn.functional as F

        h, w = frame.shape[:2]
        dev = torch.device(self.device)  # type: ignore[arg-type]
        if dev.type == "cuda" and self._stream is None:
            # Its own (non-blocking) stream: the tracker's queued kernels on the default stream
            # are never waited for; only this stream's work is, by the final copy to the host.
            self._stream = torch.cuda.Stream(device=dev)
        stream = torch.cuda.stream(self._stream) if self._stream is not None else nullcontext()
        with torch.inference_mode(), stream:
            img = torch.from_numpy(frame).to(dev, non_blocking=True).float()
            if logits is None:
                a = torch.zeros((h, w, 1), device=dev)
            else:
                soft = self._soft_alpha(_checked(logits), (h, w))
                t = torch.from_numpy(soft).to(dev, non_blocking=True).float()[None, None]
                if t.shape[-2:] != (h, w):
                    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False).round_()
                    if self.settings.feather == 0:
                        t = torch.where(t >= 128, 255.0, 0.0)
                a = t[0, 0, :, :, None]
            if isinstance(self.background, ColorBackground):
                if self._torch_bg is None or self._torch_bg.device != img.device:
                    self._torch_bg = torch.tensor(self.background.color, dtype=torch.float32, device=dev)
                bg = self._torch_bg
            else:
                bg = torch.from_numpy(self.background.frame(frame)).to(dev, non_blocking=True).float()
            if self.settings.despill:
                key = int(np.argmax(self.settings.rgb))
                others = [i for i in range(3) if i != key]
                limit = torch.maximum(img[..., others[0]], img[..., others[1]])
                spilled = img.clone()
                spilled[..., key] = torch.minimum(img[..., key], limit)
                img = torch.where(a >= 255, img, spilled)
            out = torch.round((img * a + bg * (255.0 - a)) / 255.0).to(torch.uint8)
            return out.cpu().numpy(), a[..., 0].to(torch.uint8).cpu().numpy()

    def _buffers(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        # Reused scratch arrays: fresh multi-megabyte arrays per frame cost page faults.
        if self._scratch is None or self._scratch["a3"].shape != shape:
            self._scratch = {k: np.empty(shape, np.uint8) for k in ("a3", "fg", "inv", "bg")}
        return self._scratch


def _checked(logits: np.ndarray) -> np.ndarray:
    """2-D (or ``(n, h, w)``: one plane per subject), non-empty, NaN-free float32 logits, clipped to
    +-LOGIT_CLIP (an infinity would turn into NaN when resized; SAM 2's logits stay far inside,
    so the clip never moves the upsampled mask's edge)."""
    logits = np.asarray(logits)
    if logits.ndim not in (2, 3) or logits.size == 0:
        raise ValueError(f"mask logits must be a non-empty 2-D (or n x h x w) array, got shape {logits.shape}")
    if np.isnan(logits).any():
        raise ValueError("mask logits contain NaN")
    return np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP).astype(np.float32, copy=False)


def _despill(frame: np.ndarray, key: tuple[int, int, int]) -> np.ndarray:
    """Limit the key's dominant channel to the larger of the other two (classic spill suppression)."""
    c = int(np.argmax(key))
    others = [i for i in range(3) if i != c]
    channels = list(cv2.split(frame))
    limit = cv2.max(channels[others[0]], channels[others[1]])
    channels[c] = cv2.min(channels[c], limit)
    return cv2.merge(channels)


def _fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill background regions enclosed by the subject (not touching the border) of at most ``max_area`` px."""
    # Flood the background from outside the frame; what the flood cannot reach is a hole.
    holes = np.pad(1 - mask, 1, constant_values=1)
    cv2.floodFill(holes, None, (0, 0), 0)
    holes = holes[1:-1, 1:-1]
    if not cv2.countNonZero(holes):
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    fill = stats[:, 4] <= max_area
    fill[0] = False
    if not fill.any():
        return mask
    return (mask | fill[labels]).astype(np.uint8)


def _drop_islands(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Remove subject components smaller than ``min_area`` px, always keeping the largest."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    area = stats[:, 4].copy()
    area[0] = 0
    keep = area >= min_area
    keep[int(np.argmax(area))] = True
    keep[0] = False
    if keep[1:].all():
        return mask
    return keep[labels].astype(np.uint8)
