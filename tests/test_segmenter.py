"""The streaming tracker against the official SAM2VideoPredictor, plus its own contract."""

from __future__ import annotations

import gc
import resource
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from greenscreen_cam.errors import PromptError
from greenscreen_cam.track import models
from greenscreen_cam.track.segmenter import Prompt, StreamingTracker

from .conftest import moving_disc_frames, official_logits, write_jpeg_folder

pytestmark = pytest.mark.slow  # real SAM 2 runs, most against the official predictor

N_FRAMES = 24  # past the 7-frame memory window and the 16-pointer window


def official_masks(checkpoint: Path, folder: Path, n: int, device: str = "cpu", **prompt) -> list[torch.Tensor]:
    out = official_logits(checkpoint, folder, [prompt], device)
    assert len(out) == n
    return [m[0] for m in out]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0, b > 0
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


@pytest.fixture(scope="module")
def jpeg_clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = write_jpeg_folder(tmp_path_factory.mktemp("ref") / "frames", moving_disc_frames(N_FRAMES))
    # Decode with OpenCV, as greencam's sources do; the official predictor decodes the same files with PIL.
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]
    return folder, frames


@pytest.mark.parametrize(
    "prompt, official_prompt",
    [
        (Prompt(box=(30.0, 25.0, 60.0, 70.0)), {"box": [30, 25, 90, 95]}),
        (
            Prompt(points=((53.0, 60.0), (140.0, 10.0)), labels=(1, 0)),
            {"points": [[53, 60], [140, 10]], "labels": [1, 0]},
        ),
    ],
    ids=["box", "points"],
)
def test_matches_official_predictor(tiny_model, tiny_checkpoint, jpeg_clip, prompt, official_prompt):
    folder, frames = jpeg_clip
    reference = official_masks(tiny_checkpoint, folder, N_FRAMES, **official_prompt)
    tracker = StreamingTracker(tiny_model)
    for i, frame in enumerate(frames):
        result = tracker.prompt(frame, prompt) if i == 0 else tracker.track(frame)
        assert result.frame_index == i
        assert result.logits.shape == frame.shape[:2]
        assert iou(result.logits, reference[i]) >= 0.99, f"frame {i}"
        # Same weights, same preprocessed frames, a clip of 16+ frames: the logits are the same, bit for bit.
        assert torch.equal(result.logits, reference[i]), (
            f"frame {i}: {(result.logits - reference[i]).abs().max().item()}"
        )
    assert reference[0].gt(0).any(), "the reference mask must not be empty for the test to mean anything"


@pytest.mark.gpu
def test_matches_official_predictor_on_cuda(tiny_checkpoint, jpeg_clip):
    """Float32 on the GPU (no autocast): the same kernels on both sides, so the logits agree as on the CPU."""
    folder, frames = jpeg_clip
    reference = official_masks(tiny_checkpoint, folder, N_FRAMES, device="cuda", box=[30, 25, 90, 95])
    net = models.load_model(models.get_spec("tiny"), tiny_checkpoint, device="cuda", resolution=256)
    tracker = StreamingTracker(net, autocast=None)
    for i, frame in enumerate(frames):
        result = tracker.prompt(frame, Prompt(box=(30.0, 25.0, 60.0, 70.0))) if i == 0 else tracker.track(frame)
        torch.testing.assert_close(result.logits.cpu(), reference[i].cpu(), atol=1e-3, rtol=1e-4)


def test_memory_stays_bounded_over_300_frames(tiny_model):
    tracker = StreamingTracker(tiny_model)
    frames = moving_disc_frames(40, 96, 72)
    tracker.prompt(frames[0], Prompt(box=(20, 20, 40, 40)))
    entries, sizes, rss = [], [], []
    for i in range(1, 301):
        tracker.track(frames[i % len(frames)])
        entries.append(tracker.stored_entries())
        sizes.append(tracker.stored_bytes())
        if i % 50 == 0:
            gc.collect()
            rss.append(_rss_bytes())
    # SAM 2 reads 1 conditioning frame, 6 spatial memories and 15 past object pointers.
    assert set(entries[20:]) == {(1, tiny_model.max_obj_ptrs_in_encoder - 1)}
    assert len(set(sizes[20:])) == 1
    warm = rss[1]  # after 100 frames
    assert max(rss[2:]) <= warm * 1.05, f"RSS grew from {warm} to {max(rss[2:])}"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_reprompt_becomes_new_conditioning_frame(tiny_model):
    tracker = StreamingTracker(tiny_model)
    frames = moving_disc_frames(12)
    tracker.prompt(frames[0], Prompt(box=(30, 25, 60, 70)))
    for f in frames[1:8]:
        tracker.track(f)
    assert tracker.stored_entries() == (1, 7)
    again = tracker.prompt(frames[8], Prompt(box=(0, 0, 50, 50)))
    assert again.is_prompt_frame and tracker.stored_entries() == (1, 0)
    # A re-prompt is a fresh start: identical to prompting a new tracker on that frame.
    fresh = StreamingTracker(tiny_model).prompt(frames[8], Prompt(box=(0, 0, 50, 50)))
    torch.testing.assert_close(again.low_res_logits, fresh.low_res_logits)
    nxt = tracker.track(frames[9])
    assert nxt.frame_index == again.frame_index + 1


def test_reset_forgets_everything(tiny_model):
    tracker = StreamingTracker(tiny_model)
    frame = moving_disc_frames(1)[0]
    tracker.prompt(frame, Prompt(box=(30, 25, 60, 70)))
    tracker.reset()
    assert not tracker.is_prompted and tracker.stored_entries() == (0, 0)
    with pytest.raises(PromptError, match="no prompt"):
        tracker.track(frame)


def test_result_has_probabilities_and_visibility(tiny_model):
    tracker = StreamingTracker(tiny_model)
    frame = moving_disc_frames(1)[0]
    result = tracker.prompt(frame, Prompt(box=(30, 25, 60, 70)))
    probs = result.probabilities()
    assert probs.shape == (120, 160) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert isinstance(result.object_score, float) and result.visible == (result.object_score > 0)
    assert result.low_res_numpy().shape == (64, 64)


@pytest.mark.parametrize(
    "prompt, message",
    [
        (Prompt(), "needs a --bbox"),
        (Prompt(box=(10, 10, 0, 20)), "zero or negative size"),
        (Prompt(box=(-1, 10, 20, 20)), "outside the 160x120 frame"),
        (Prompt(box=(100, 10, 61, 20)), "outside the 160x120 frame"),
        (Prompt(box=(10, 100, 20, 21)), "outside the 160x120 frame"),
        (Prompt(points=((170.0, 5.0),), labels=(1,)), "outside"),
        (Prompt(points=((10.0, 5.0),), labels=(0,)), "negative points alone"),
    ],
)
def test_bad_prompts(tiny_model, prompt, message):
    with pytest.raises(PromptError, match=message):
        StreamingTracker(tiny_model).prompt(moving_disc_frames(1)[0], prompt)


def test_bad_frame_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="uint8 RGB"):
        StreamingTracker(tiny_model).preprocess(np.zeros((10, 10), np.float32))


def test_other_resolution_runs(tiny_checkpoint):
    net = models.load_model(models.get_spec("tiny"), tiny_checkpoint, resolution=384)
    tracker = StreamingTracker(net)
    assert tracker.image_size == 384
    result = tracker.prompt(moving_disc_frames(1)[0], Prompt(box=(30, 25, 60, 70)))
    assert result.low_res_logits.shape[-1] == 96


def test_profile_records_every_stage(tiny_model):
    from greenscreen_cam.track.segmenter import STAGES

    tracker = StreamingTracker(tiny_model, profile=True)
    frames = moving_disc_frames(3)
    tracker.prompt(frames[0], Prompt(box=(30, 25, 60, 70)))
    tracker.track(frames[1])
    assert set(tracker.timings) == set(STAGES)
    assert all(len(v) == 2 and min(v) >= 0 for v in tracker.timings.values())


def test_cuda_preprocessing_matches_sam2_loader(tiny_model):
    """The on-device resize used on CUDA, run here on the CPU: within 3 grey levels of sam2's PIL resize
    (PIL rounds to uint8 between its horizontal and vertical passes), almost everywhere equal."""
    tracker = StreamingTracker(tiny_model)
    frame = cv2.resize(moving_disc_frames(1, 320, 240)[0], (1280, 720), interpolation=cv2.INTER_CUBIC)
    reference = tracker._resize_like_sam2(frame)
    on_device = tracker._resize_on_device(frame)
    assert on_device.shape == reference.shape == (1, 3, 256, 256)
    diff = (on_device - reference).abs() * 255
    assert diff.max().item() <= 3.01 and diff.mean().item() < 0.3
