"""Compositor: exact key colour, untouched subject, every option, every background, bad inputs, real DAVIS masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.errors import ConfigError
from greenscreen_cam.key.compositor import (
    BlurBackground,
    ColorBackground,
    Compositor,
    CompositorSettings,
    ImageBackground,
    VideoBackground,
    make_background,
    parse_color,
)

from .conftest import shared_data, write_video

H, W = 120, 160


def disc_logits(h: int = 64, w: int = 64, r: float = 16, cx: float | None = None, scale: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 if cx is None else cx
    return ((r - np.hypot(yy - h / 2, xx - cx)) * scale).astype(np.float32)


@pytest.fixture()
def frame() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_background_is_exactly_the_key_and_subject_untouched(frame):
    out, alpha = Compositor(CompositorSettings()).compose(frame, disc_logits())
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (alpha == 0).any() and (alpha == 255).any()
    assert (out[alpha == 0] == KEY_COLOR).all()
    assert (out[alpha == 255] == frame[alpha == 255]).all()
    edge = (alpha > 0) & (alpha < 255)
    assert edge.any(), "the default feather makes a soft edge"
    a = alpha[edge].astype(np.float64)[:, None] / 255
    expected = frame[edge] * a + np.array(KEY_COLOR) * (1 - a)
    assert np.abs(out[edge] - expected).max() <= 1.0


def test_no_subject_means_plain_key(frame):
    out, alpha = Compositor(CompositorSettings()).compose(frame, None)
    assert (alpha == 0).all() and (out == KEY_COLOR).all()


def test_refine_none_is_exactly_the_tracker_probability(frame):
    import torch
    import torch.nn.functional as F

    logits = disc_logits(scale=0.3)
    _, alpha = Compositor(CompositorSettings(refine="none")).compose(frame, logits)
    # sam2's own upsampling (video_res_masks): torch's bilinear kernel, not OpenCV's
    up = F.interpolate(torch.from_numpy(logits)[None, None], size=(H, W), mode="bilinear", align_corners=False)
    expected = np.rint(255 / (1 + np.exp(-up[0, 0].numpy()))).astype(np.uint8)
    assert np.array_equal(alpha, expected)
    # alpha >= 128 is exactly sam2's mask (logits > 0), even for logits a hair below zero
    tiny = np.full((4, 4), -3.7e-8, np.float32)
    tiny[0, 0] = 3.7e-8
    _, a = Compositor(CompositorSettings(refine="none")).compose(frame[:4, :4].copy(), tiny)
    assert a[0, 0] == 128 and (a.ravel()[1:] == 127).all()


def test_several_subjects_meet_after_each_is_upsampled(frame):
    """(n, h, w) logits: the union of the planes upsampled one by one, not the upsampled maximum."""
    import torch
    import torch.nn.functional as F

    from greenscreen_cam.key.compositor import upsample_union

    rng = np.random.default_rng(3)
    planes = (rng.standard_normal((3, 16, 16)) * 6).astype(np.float32)
    ups = F.interpolate(torch.from_numpy(planes)[:, None], size=(H, W), mode="bilinear", align_corners=False)
    official = ups[:, 0].numpy()
    union = upsample_union(planes, (H, W), exact=True)
    assert np.array_equal(union > 0, (official > 0).any(axis=0))  # the official predictor's (masks > 0).any(0)
    assert np.array_equal(union, official.max(axis=0))
    once = upsample_union(planes.max(axis=0), (H, W), exact=True)
    assert (once > 0).sum() > (union > 0).sum(), "the maximum upsampled once grows where subjects meet"
    _, alpha = Compositor(CompositorSettings(refine="none")).compose(frame, planes)
    assert np.array_equal(alpha > 127, (official > 0).any(axis=0))
    assert np.abs(alpha.astype(int) - np.rint(255 / (1 + np.exp(-official.max(axis=0))))).max() <= 1
    # The default (refined) path takes the union at its work resolution, after each plane's resize.
    fast = upsample_union(planes, (H, W))
    assert np.array_equal(fast, np.max([cv2.resize(p, (W, H), interpolation=cv2.INTER_LINEAR) for p in planes], axis=0))
    _, alpha_auto = Compositor(CompositorSettings()).compose(frame, planes)
    assert alpha_auto.shape == (H, W) and (alpha_auto == 255).any()
    with pytest.raises(ValueError, match="2-D"):
        Compositor(CompositorSettings()).compose(frame, np.zeros((2, 2, 2, 2), np.float32))


def test_a_subject_that_is_not_there_is_not_upsampled_and_changes_nothing(frame):
    """A plane below ALPHA_ZERO_LOGIT everywhere is left out of the exact union: same mask, same alpha."""
    from greenscreen_cam.key.compositor import ALPHA_ZERO_LOGIT, upsample_union

    rng = np.random.default_rng(4)
    present = (rng.standard_normal((16, 16)) * 6).astype(np.float32)
    absent = np.full((16, 16), ALPHA_ZERO_LOGIT - 0.5, np.float32)
    absent[3, 3] = ALPHA_ZERO_LOGIT - 0.01  # still below the floor everywhere
    comp = Compositor(CompositorSettings(refine="none"))
    _, alone = comp.compose(frame, present[None])
    _, both = comp.compose(frame, np.stack([present, absent]))
    assert np.array_equal(alone, both)
    # Left out only where it cannot matter: the full union agrees wherever the alpha is not 0.
    full = upsample_union(np.stack([present, absent]), (H, W), exact=True)
    floored = upsample_union(np.stack([present, absent]), (H, W), exact=True, floor=ALPHA_ZERO_LOGIT)
    assert np.array_equal(full > 0, floored > 0)
    assert np.array_equal(floored, upsample_union(present, (H, W), exact=True))
    # Every subject absent: one plane is kept, the key colour everywhere.
    _, none = comp.compose(frame, np.stack([absent, absent]))
    assert (none == 0).all()


def test_upsampling_is_smooth_not_blocky(frame):
    # A 16x16 mask upsampled to 160x120 must not show 10-pixel steps along its edge.
    _, alpha = Compositor(CompositorSettings(refine="none")).compose(frame, disc_logits(16, 16, 5, scale=1.0))
    row = alpha[H // 2].astype(int)
    assert np.abs(np.diff(row)).max() < 60


@pytest.mark.parametrize(
    "settings, check",
    [
        (CompositorSettings(feather=0), lambda a, base: set(np.unique(a)) <= {0, 255}),
        (CompositorSettings(grow=6), lambda a, base: (a > 127).sum() > (base > 127).sum() * 1.2),
        (CompositorSettings(shrink=6), lambda a, base: (a > 127).sum() < (base > 127).sum() * 0.8),
        (CompositorSettings(threshold=0.9), lambda a, base: (a > 127).sum() < (base > 127).sum()),
        (CompositorSettings(threshold=0.1), lambda a, base: (a > 127).sum() > (base > 127).sum()),
        (
            CompositorSettings(feather=8),
            lambda a, base: ((a > 0) & (a < 255)).sum() > ((base > 0) & (base < 255)).sum(),
        ),
    ],
    ids=["feather0-hard", "grow", "shrink", "threshold-high", "threshold-low", "feather-wide"],
)
def test_edge_options(frame, settings, check):
    logits = disc_logits(scale=0.4)
    base = Compositor(CompositorSettings()).alpha(logits, (H, W))
    alpha = Compositor(settings).alpha(logits, (H, W))
    assert check(alpha, base)


def test_holes_filled_and_islands_dropped(frame):
    logits = disc_logits(r=20)
    yy, xx = np.mgrid[0:64, 0:64]
    logits[np.hypot(yy - 32, xx - 32) < 3] = -10  # a small hole inside the subject
    logits[2:5, 2:5] = 10  # a small detached island
    default = Compositor(CompositorSettings(feather=0)).alpha(logits, (H, W))
    assert default[H // 2, W // 2] == 255, "hole filled"
    assert default[:10, :10].max() == 0, "island dropped"
    raw = Compositor(CompositorSettings(feather=0, max_hole=0, min_island=0)).alpha(logits, (H, W))
    assert raw[H // 2, W // 2] == 0 and raw[:10, :10].max() == 255
    none = Compositor(CompositorSettings(refine="none")).alpha(logits, (H, W))
    assert none[H // 2, W // 2] < 128 and none[:10, :10].max() > 128


def test_large_holes_are_kept(frame):
    logits = disc_logits(r=28)
    yy, xx = np.mgrid[0:64, 0:64]
    logits[np.hypot(yy - 32, xx - 32) < 12] = -10  # a ring: the hole is ~11% of the frame
    alpha = Compositor(CompositorSettings(feather=0)).alpha(logits, (H, W))
    assert alpha[H // 2, W // 2] == 0


def test_refine_none_is_never_smoothed(frame):
    """--refine none is exactly the tracker's probability, whatever --smooth says (no temporal state)."""
    comp = Compositor(CompositorSettings(refine="none", smooth=0.9))
    first = comp.alpha(disc_logits(cx=16), (H, W))
    again = comp.alpha(disc_logits(cx=48), (H, W))
    assert np.array_equal(
        again, Compositor(CompositorSettings(refine="none", smooth=0.0)).alpha(disc_logits(cx=48), (H, W))
    )
    assert not np.array_equal(first, again)


def test_smoothing_kills_flicker_without_ghosting(frame):
    rng = np.random.default_rng(0)
    base = disc_logits(scale=0.25)

    def flicker(smooth: float) -> float:
        comp = Compositor(CompositorSettings(smooth=smooth))
        alphas = [comp.alpha(base + rng.normal(0, 1.0, base.shape).astype(np.float32), (H, W)) for _ in range(20)]
        return float(np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(alphas[5:], alphas[6:])]))

    assert flicker(0.6) < 0.6 * flicker(0.0)
    # A big jump (the subject moved) is taken at once: no trail where it was.
    comp = Compositor(CompositorSettings(smooth=0.9))
    comp.alpha(disc_logits(cx=16), (H, W))
    moved = comp.alpha(disc_logits(cx=48), (H, W))
    assert moved[H // 2, W // 5] == 0 and moved[H // 2, 3 * W // 4] == 255


def test_despill_neutralises_green_on_the_edge():
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:] = (120, 200, 110)  # a subject with green spill
    plain, alpha = Compositor(CompositorSettings(feather=6)).compose(frame, disc_logits())
    clean, _ = Compositor(CompositorSettings(feather=6, despill=True)).compose(frame, disc_logits())
    edge = (alpha > 30) & (alpha < 225)
    assert clean[edge][:, 1].mean() < plain[edge][:, 1].mean() - 10
    core = alpha == 255
    assert (clean[core] == frame[core]).all(), "despill never touches the fully present subject"


def test_mirror_flips(frame):
    logits = disc_logits(cx=20)
    out, alpha = Compositor(CompositorSettings()).compose(frame, logits)
    mout, malpha = Compositor(CompositorSettings(mirror=True)).compose(frame, logits)
    assert np.array_equal(malpha, alpha[:, ::-1]) and np.array_equal(mout, out[:, ::-1])


@pytest.mark.parametrize(
    "text, rgb",
    [
        ("green", KEY_COLOR),
        ("GREEN", KEY_COLOR),
        ("blue", (0, 71, 187)),
        ("#00AF39", (0, 175, 57)),
        ("#ff0000", (255, 0, 0)),
    ],
)
def test_parse_color(text, rgb):
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["#12345", "#gg0000", "grene", "", "12,13,14", "#1234567"])
def test_bad_colors(text):
    with pytest.raises(ConfigError, match="bad colour"):
        parse_color(text)


def test_color_backgrounds(frame):
    for spec, rgb in [("key", KEY_COLOR), ("blue", (0, 71, 187)), ("#102030", (16, 32, 48))]:
        bg = make_background(spec, KEY_COLOR)
        assert isinstance(bg, ColorBackground) and (bg.frame(frame) == rgb).all()


def test_blur_background_is_the_blurred_camera(frame):
    bg = make_background("blur:20", KEY_COLOR)
    assert isinstance(bg, BlurBackground) and bg.strength == 20
    smooth = bg.frame(frame)
    assert smooth.shape == frame.shape
    assert np.abs(np.diff(smooth.astype(int), axis=1)).mean() < np.abs(np.diff(frame.astype(int), axis=1)).mean() / 4
    assert abs(smooth.mean() - frame.mean()) < 10
    out, alpha = Compositor(CompositorSettings(), bg).compose(frame, disc_logits())
    assert np.array_equal(out[alpha == 0], smooth[alpha == 0])
    assert isinstance(make_background("blur", KEY_COLOR), BlurBackground)


def test_image_background_covers(tmp_path, frame):
    pic = np.zeros((50, 200, 3), np.uint8)
    pic[:, :100] = (255, 0, 0)
    pic[:, 100:] = (0, 0, 255)
    path = tmp_path / "bg.png"
    cv2.imwrite(str(path), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    bg = make_background(str(path), KEY_COLOR)
    assert isinstance(bg, ImageBackground)
    img = bg.frame(frame)
    assert img.shape == frame.shape  # scaled to cover 160x120, centre-cropped
    assert tuple(img[60, 5]) == (255, 0, 0) and tuple(img[60, 155]) == (0, 0, 255)


def test_video_background_loops(tmp_path, frame):
    frames = [np.full((60, 80, 3), v, np.uint8) for v in (20, 120, 220)]
    path = write_video(tmp_path / "bg.mp4", frames)
    bg = make_background(str(path), KEY_COLOR)
    assert isinstance(bg, VideoBackground)
    means = [bg.frame(frame).mean() for _ in range(7)]
    assert bg.frame(frame).shape == frame.shape
    assert means[0] < means[1] < means[2] and abs(means[3] - means[0]) < 10 and abs(means[6] - means[0]) < 10
    bg.close()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("blur:abc", "blur:STRENGTH"),
        ("blur:0", "blur strength"),
        ("missing.png", "not found"),
        ("missing.mp4", "not found"),
        ("sunset", "bad --background"),
    ],
)
def test_bad_backgrounds(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_background(spec, KEY_COLOR)


def test_unreadable_background_files(tmp_path):
    for name in ("broken.png", "broken.mp4"):
        (tmp_path / name).write_bytes(b"garbage")
        with pytest.raises(ConfigError, match="cannot read background"):
            make_background(str(tmp_path / name), KEY_COLOR)


@pytest.mark.parametrize(
    "settings, message",
    [
        (CompositorSettings(threshold=0), "--threshold"),
        (CompositorSettings(threshold=1.5), "--threshold"),
        (CompositorSettings(feather=-1), "--feather"),
        (CompositorSettings(grow=-2), "--grow"),
        (CompositorSettings(grow=2, shrink=2), "cannot be used together"),
        (CompositorSettings(max_hole=1.5), "--max-hole"),
        (CompositorSettings(refine="magic"), "--refine"),
        (CompositorSettings(smooth=1.0), "--smooth"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        Compositor(settings)


@pytest.mark.parametrize(
    "logits, message",
    [
        (np.zeros((4, 4, 2, 1), np.float32), "2-D"),
        (np.zeros((0, 4), np.float32), "2-D"),
        (np.zeros((0, 4, 4), np.float32), "2-D"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_masks(frame, logits, message):
    with pytest.raises(ValueError, match=message):
        Compositor(CompositorSettings()).compose(frame, logits)


@pytest.mark.parametrize("refine", ["auto", "none"])
def test_infinite_logits_are_clean(frame, refine):
    inside = disc_logits() > 0
    comp = Compositor(CompositorSettings(refine=refine))
    _, alpha = comp.compose(frame, np.where(inside, np.inf, -np.inf).astype(np.float32))
    from greenscreen_cam.key.compositor import LOGIT_CLIP

    _, finite = comp.compose(frame, np.where(inside, LOGIT_CLIP, -LOGIT_CLIP).astype(np.float32))
    assert np.array_equal(alpha, finite) and alpha.max() == 255 and alpha.min() == 0


def test_mask_and_frame_must_match(frame):
    comp = Compositor(CompositorSettings())
    with pytest.raises(ValueError, match="does not match"):
        comp.blend(frame, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        comp.compose(frame.astype(np.float32), None)


# ---------------------------------------------------------------- real frames, real ground truth


def davis_sequence(name: str) -> tuple[list[Path], list[Path]]:
    root = shared_data("davis", name)
    return sorted((root / "frames").glob("*.jpg")), sorted((root / "masks").glob("*.png"))


@pytest.mark.parametrize("seq", ["lucia", "hike", "tennis"])
def test_davis_ground_truth_keys_cleanly(seq):
    frames, masks = davis_sequence(seq)
    comp = Compositor(CompositorSettings(smooth=0.3))
    for fpath, mpath in list(zip(frames, masks))[:10]:
        frame = cv2.cvtColor(cv2.imread(str(fpath)), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE) > 127
        logits = np.where(gt, 8.0, -8.0).astype(np.float32)
        out, alpha = comp.compose(frame, logits)
        band = cv2.dilate(gt.astype(np.uint8), np.ones((21, 21), np.uint8)) - cv2.erode(
            gt.astype(np.uint8), np.ones((21, 21), np.uint8)
        )
        # Background the subject encloses (between arm and body) may be filled as a small hole: not "outside".
        reach = np.pad((~gt).astype(np.uint8), 1, constant_values=1)
        cv2.floodFill(reach, None, (0, 0), 2)
        outside = (reach[1:-1, 1:-1] == 2) & (band == 0)
        inside = gt & (band == 0)
        assert (out[outside] == KEY_COLOR).all(), "background is exactly the key colour"
        # Subject intact: everything but holes the cleanup may fill stays the camera's pixels.
        assert (out[inside] == frame[inside]).mean() > 0.995


def _distance_logits(gt: np.ndarray, size: tuple[int, int] = (256, 144)) -> np.ndarray:
    """Signed distance to the ground-truth edge (frame px) on a low-resolution grid, like SAM 2's logits."""
    inside = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~gt).astype(np.uint8), cv2.DIST_L2, 3)
    return cv2.resize((inside - outside).astype(np.float32), size, interpolation=cv2.INTER_AREA)


def test_davis_flicker_with_and_without_smoothing():
    """A static subject with tracker-like edge noise: --smooth damps the frame-to-frame alpha change."""
    _, masks = davis_sequence("lucia")
    gt = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE) > 127
    low = _distance_logits(gt)
    rng = np.random.default_rng(0)
    noisy = [low + rng.normal(0, 1.5, low.shape).astype(np.float32) for _ in range(20)]

    def flicker(smooth: float) -> float:
        comp = Compositor(CompositorSettings(smooth=smooth))
        alphas = [comp.alpha(n, gt.shape).astype(np.int16) for n in noisy]
        return float(np.mean([np.abs(alphas[t] - alphas[t - 1]).mean() for t in range(5, len(alphas))]))

    off, on = flicker(0.0), flicker(0.5)
    assert off > 0.1, "the noise must cause flicker for the test to mean anything"
    assert on < 0.7 * off, (on, off)


def test_davis_fast_motion_leaves_no_ghost():
    """Real fast motion (tennis): where the subject just was is exactly background, smoothing or not."""
    _, masks = davis_sequence("tennis")
    gts = [cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) > 127 for m in masks[:30]]

    def ghost(smooth: float) -> float:
        # Hole filling off: background enclosed by arm and racket is not a ghost.
        comp = Compositor(CompositorSettings(smooth=smooth, max_hole=0))
        alphas = [comp.alpha(_distance_logits(g), g.shape) for g in gts]
        values = []
        for t in range(1, len(gts)):
            left = gts[t - 1] & ~gts[t]
            # Beyond the soft edge (feather, upsampling and one work pixel of smoothing): fully background.
            left &= cv2.distanceTransform((~gts[t]).astype(np.uint8), cv2.DIST_L2, 3) > 10
            if left.any():
                values.append(alphas[t][left].astype(float).mean())
        assert values, "the sequence must move for the test to mean anything"
        return float(np.mean(values))

    assert ghost(0.0) == 0.0
    assert ghost(0.6) == 0.0


@pytest.mark.parametrize(
    "settings, background",
    [
        (CompositorSettings(), "key"),
        (CompositorSettings(feather=0), "#102030"),
        (CompositorSettings(despill=True, smooth=0.3), "blur:10"),
        (CompositorSettings(refine="none", mirror=True), "key"),
    ],
    ids=["default", "hard-edge", "despill-blur", "refine-none-mirror"],
)
def test_torch_path_matches_opencv_path(frame, settings, background):
    """The path used when the mask lives on a CUDA device, run here on the CPU: same frame, within 1 level."""
    logits = [disc_logits(scale=0.4), disc_logits(cx=36, scale=0.4)]
    ref = Compositor(settings, make_background(background, KEY_COLOR))
    dev = Compositor(settings, make_background(background, KEY_COLOR), device="cpu")
    for lg in logits:
        out_ref, a_ref = ref.compose(frame, lg)
        out_dev, a_dev = dev.compose(frame, lg)
        assert np.abs(a_ref.astype(int) - a_dev).max() <= 1
        assert np.abs(out_ref.astype(int) - out_dev).max() <= 2
        exact_bg = make_background(background, KEY_COLOR).frame(frame)
        if settings.mirror:
            exact_bg = exact_bg[:, ::-1]
        assert np.array_equal(out_dev[a_dev == 0], exact_bg[a_dev == 0])
        fg = frame[:, ::-1] if settings.mirror else frame
        assert np.array_equal(out_dev[a_dev == 255], fg[a_dev == 255])
    empty, alpha = dev.compose(frame, None)
    assert (alpha == 0).all()
