"""The tracker's caches change no number: compared with sam2's own per-frame computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greenscreen_cam.track.segmenter import Prompt, StreamingTracker

from .conftest import moving_disc_frames


def _run(model, frames: list[np.ndarray], *, cached: bool, reprompt_at: int) -> tuple[list[torch.Tensor], list]:
    tracker = StreamingTracker(model, steady=False)  # the steady-state step: tests/test_steady.py
    assert tracker._fast_memory, "tiny's memory attention must take the cached path"
    tracker._fast_memory = cached
    logits, entries = [], []
    for i, frame in enumerate(frames):
        if i == 0:
            result = tracker.prompt(frame, Prompt(box=(30, 25, 60, 70)))
        elif i == reprompt_at:
            result = tracker.prompt(frame, Prompt(box=(45, 20, 70, 80)))
        else:
            result = tracker.track(frame)
        logits.append(result.low_res_logits.clone())
        entries.append(tracker.stored_entries())
    return logits, entries


@pytest.mark.slow
def test_cached_memory_attention_is_bit_exact_over_rollover_and_reprompt(tiny_model):
    # 30 frames: past the 7-frame spatial window and the 16-pointer window, re-prompted on frame 20
    # (which must drop every cached key/value of the old subject), then 9 more frames.
    frames = moving_disc_frames(30)
    reference, ref_entries = _run(tiny_model, frames, cached=False, reprompt_at=20)
    fast, fast_entries = _run(tiny_model, frames, cached=True, reprompt_at=20)
    assert ref_entries == fast_entries
    assert ref_entries[19] == (1, 15) and ref_entries[20] == (1, 0)
    for i, (a, b) in enumerate(zip(reference, fast, strict=True)):
        assert torch.equal(a, b), f"frame {i}: max difference {(a - b).abs().max().item()}"
    # Sanity: the frames differ from one another, so equality above is not trivial.
    assert not torch.equal(reference[5], reference[6])


@pytest.mark.slow
def test_cache_is_bounded_and_dropped_with_the_memory(tiny_model):
    tracker = StreamingTracker(tiny_model)
    frames = moving_disc_frames(24)
    tracker.prompt(frames[0], Prompt(box=(30, 25, 60, 70)))
    sizes = []
    for frame in frames[1:]:
        tracker.track(frame)
        sizes.append(tracker.stored_bytes())
        # cached frames = the conditioning frame + the spatial memories the next frame reads
        assert set(tracker._kv_cache) <= {0} | set(tracker._memory["non_cond_frame_outputs"])
    assert len(tracker._kv_cache) <= tiny_model.num_maskmem
    assert len(set(sizes[16:])) == 1, "memory held must stop growing once both windows are full"
    tracker.prompt(frames[5], Prompt(box=(30, 25, 60, 70)))
    assert set(tracker._kv_cache) == set(), "a re-prompt starts without any cached key/value"


def test_cached_hiera_position_embedding_equals_sam2s(tiny_model):
    trunk = tiny_model.image_encoder.trunk
    StreamingTracker(tiny_model)  # installs the cache
    uncached = type(trunk)._get_pos_embed(trunk, (64, 64))
    with torch.inference_mode():
        first = trunk._get_pos_embed((64, 64))
        again = trunk._get_pos_embed((64, 64))
    assert again is first
    assert torch.equal(first, uncached)
    assert not first.is_inference(), "the cached tensor must be usable outside inference mode too"


@pytest.mark.parametrize("shape", [(120, 160, 3), (7, 5, 3)])
def test_preprocess_lookup_equals_float64_division(tiny_model, shape):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    tracker = StreamingTracker(tiny_model)
    got = tracker._resize_like_sam2(frame)
    from PIL import Image

    s = tracker.image_size
    resized = np.asarray(Image.fromarray(frame).resize((s, s), Image.Resampling.BICUBIC))
    expected = torch.from_numpy(resized.astype(np.float64) / 255.0).permute(2, 0, 1)[None].float()
    assert torch.equal(got, expected)
