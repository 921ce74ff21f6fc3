"""The fixed-shape steady-state step: bit-exact with the eager tracker, sync-free, and its settings."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from greenscreen_cam.errors import ConfigError
from greenscreen_cam.track.opcount import OpCounter, count_step
from greenscreen_cam.track.segmenter import Prompt, StreamingTracker
from greenscreen_cam.track.steady import bank_full_at, resolve_compile

from .conftest import moving_disc_frames

N_FRAMES = 120
OCCLUDED = range(30, 42)  # the disc is hidden behind the background
REPROMPT_AT = 70


def occluded_clip() -> list[np.ndarray]:
    """120 frames: the moving disc, hidden for frames 30-41 (painted over by the plain background)."""
    frames = moving_disc_frames(N_FRAMES, seed=3)
    background = cv2.resize(
        np.random.default_rng(3).integers(0, 255, (6, 8, 3), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC
    )
    for i in OCCLUDED:
        frames[i] = background.copy()
    return frames


@pytest.mark.slow
def test_steady_step_is_bit_exact_with_the_eager_step_over_120_frames(tiny_model):
    frames = occluded_clip()
    eager = StreamingTracker(tiny_model, steady=False)
    steady = StreamingTracker(tiny_model)
    assert eager._bank is None and steady._bank is not None
    full_at = bank_full_at(tiny_model)
    assert full_at == 16
    buffers = None
    for i, frame in enumerate(frames):
        # one image encoder run feeds both trackers (the step under test starts after it)
        encoded = steady.encode(steady.preprocess(frame))[0]
        prompt = None
        if i == 0:
            prompt = Prompt(box=(30, 25, 60, 70))
        elif i == REPROMPT_AT:
            prompt = Prompt(box=(60, 20, 70, 80))
        a = eager.step_encoded(encoded, frame.shape[:2], prompt)
        b = steady.step_encoded(encoded, frame.shape[:2], prompt)
        since_prompt = i if i < REPROMPT_AT else i - REPROMPT_AT
        assert steady.steady_active == (since_prompt >= full_at), f"frame {i}"
        assert torch.equal(a.low_res_logits, b.low_res_logits), (
            f"frame {i}: max difference {(a.low_res_logits - b.low_res_logits).abs().max().item()}"
        )
        assert a.object_score == b.object_score, f"frame {i}"
        assert np.array_equal(a.low_res_numpy(), b.low_res_numpy()), f"frame {i}"
        assert a.frame_index == b.frame_index == since_prompt
        assert eager.stored_entries() == steady.stored_entries(), f"frame {i}"
        if steady.steady_active:
            if buffers is None:
                buffers = {k: v.data_ptr() for k, v in steady._bank.buffers.items()}
            # the ring buffers are updated in place: the same memory on every frame, re-prompt included
            assert {k: v.data_ptr() for k, v in steady._bank.buffers.items()} == buffers
            assert int(steady._bank.buffers["t"][0]) == since_prompt
    assert buffers is not None
    # Sanity: consecutive frames and the occluded frames differ, so equality above is not trivial.
    assert not torch.equal(eager.track(frames[-1]).low_res_logits, eager.track(frames[OCCLUDED[0]]).low_res_logits)


@pytest.mark.slow
def test_steady_step_makes_no_host_sync_and_dispatches_fewer_ops(tiny_model):
    frames = moving_disc_frames(full_at := bank_full_at(tiny_model) + 4)
    counts = {}
    for steady in (False, True):
        tracker = StreamingTracker(tiny_model, steady=steady)
        tracker.prompt(frames[0], Prompt(box=(30, 25, 60, 70)))
        for frame in frames[1:full_at]:
            tracker.track(frame)
        encoded = tracker.encode(tracker.preprocess(frames[-1]))[0]

        def step(tracker=tracker, encoded=encoded) -> None:
            result = tracker.step_encoded(encoded, frames[-1].shape[:2], None)
            result.low_res_numpy()  # what the pipeline reads
            assert result.visible in (True, False)

        counts[steady] = count_step(step, frames=2)
        assert tracker.steady_active is steady
    # steady: the score travels with the mask, so nothing waits for the device inside the step. (On the
    # CPU the eager step may also count 0: reading a CPU tensor's value through numpy dispatches no op;
    # test_op_counter_counts_syncs_and_ops shows the counter does see float()/.item().)
    assert counts[True]["host_syncs_per_frame"] == 0, counts[True]["sync_ops"]
    assert counts[True]["host_syncs_per_frame"] <= counts[False]["host_syncs_per_frame"]
    assert 0 < counts[True]["ops_per_frame"] < counts[False]["ops_per_frame"]


def test_op_counter_counts_syncs_and_ops():
    x = torch.arange(6.0)
    with OpCounter() as counter:
        y = (x * 2).sum()
        float(y)
        torch.nonzero(x > 2)
        x.repeat_interleave(2)  # an int repeat count reads no value
    assert counter.syncs == 2, counter.sync_ops
    assert counter.ops >= 5


@pytest.mark.parametrize(
    "setting, device, expected",
    [
        ("auto", "cpu", False),
        ("off", "cpu", False),
        ("auto", "cuda", False),  # off until the captured path is verified on a GPU
        ("off", "cuda:0", False),
        ("on", "cuda", True),
        ("on", "cuda:1", True),
        ("on", "cpu", ConfigError),
        ("on", "mps", ConfigError),
        ("fast", "cuda", ConfigError),
    ],
)
def test_resolve_compile(setting, device, expected):
    if expected is ConfigError:
        with pytest.raises(ConfigError) as err:
            resolve_compile(setting, device)
        assert "\n" not in str(err.value) and "--compile" in str(err.value)
    else:
        assert resolve_compile(setting, device) is expected


def test_compile_setting_on_cpu(tiny_checkpoint):
    from greenscreen_cam.app import load_tracker, resolve_model
    from greenscreen_cam.config import ModelSettings

    base = dict(checkpoint=str(tiny_checkpoint), device="cpu", resolution=256)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_model(ModelSettings(compile="on", **base))
    choice = resolve_model(ModelSettings(compile="auto", **base))
    assert choice.captured is False
    tracker = load_tracker(choice)
    assert tracker._bank is not None and not tracker._captured_mode  # the eager steady step
    with pytest.raises(ValueError, match="CUDA"):
        StreamingTracker(tracker.model, captured=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_captured_step_replays_the_eager_steady_step_on_cuda(tiny_checkpoint):
    """On a GPU: the CUDA graph gives the eager steady step's logits (float32), across a re-prompt."""
    from greenscreen_cam.track import models

    net = models.load_model(models.get_spec("tiny"), tiny_checkpoint, device="cuda", resolution=256)
    frames = occluded_clip()[:40]
    eager = StreamingTracker(net)
    captured = StreamingTracker(net, captured=True)
    captured.prepare((120, 160))
    assert captured.captured and not captured.steady_active
    for i, frame in enumerate(frames):
        prompt = Prompt(box=(30, 25, 60, 70)) if i in (0, 20) else None
        a = eager.prompt(frame, prompt) if prompt else eager.track(frame)
        b = captured.prompt(frame, prompt) if prompt else captured.track(frame)
        torch.testing.assert_close(a.low_res_logits, b.low_res_logits, atol=1e-4, rtol=1e-4)
        assert (a.object_score > 0) == (b.object_score > 0)
    assert captured.captured and captured.steady_active
