"""The batched serve step: several sessions' banks stacked, masks equal to one-by-one tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greenscreen_cam.track.batched import BUCKETS, SessionBatch, bucket_for
from greenscreen_cam.track.segmenter import Prompt, StreamingTracker
from greenscreen_cam.track.steady import bank_full_at

from .conftest import moving_disc_frames

N_FRAMES = 15
UNIQUE = 4  # each clip loops over its first frames: the image encoder (2-3 s a frame on this busy CPU) runs 4 times
STARTS = (0, 1, 2, 3)  # each session is prompted on its own frame: its counter (and pointer positions) differ
BOXES = [(30, 25, 60, 70), (50, 30, 60, 60), (20, 10, 80, 90), (60, 40, 50, 50)]
REPROMPT = (1, 9, (40, 20, 70, 80))  # session 1 is re-selected mid-batch (leaves, refills, rejoins at 13)
LEAVES = (3, 11)  # session 3 ends at frame 11 (the bucket shrinks from 4 to 2)
SKIPS = {(2, 8), (0, 12)}  # (session, frame) with no new camera frame: its row waits, untouched


def _encodings(tracker: StreamingTracker, frames: list[np.ndarray]) -> list:
    return [tracker.encode(tracker.preprocess(f))[0] for f in frames[:UNIQUE]]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_bucket_for_pads_to_the_next_bucket() -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    assert BUCKETS == (1, 2, 4, 8, 16)
    with pytest.raises(ValueError, match="largest batch bucket"):
        bucket_for(17)


@pytest.mark.slow
def test_batched_masks_equal_one_by_one_masks(short_bank_model) -> None:
    model = short_bank_model
    full_at = bank_full_at(model)
    clips = [moving_disc_frames(UNIQUE, seed=10 + k) for k in range(4)]
    alone = [StreamingTracker(model) for _ in range(4)]
    together = [StreamingTracker(model) for _ in range(4)]
    batch = SessionBatch(model)
    encoded_clips = [_encodings(alone[k], clips[k]) for k in range(4)]
    ious: list[list[float]] = [[] for _ in range(4)]
    max_diff = 0.0
    buckets_seen: set[tuple[int, int]] = set()
    for i in range(N_FRAMES):
        items = []
        for k in range(4):
            if i < STARTS[k] or (k == LEAVES[0] and i >= LEAVES[1]) or (k, i) in SKIPS:
                continue
            frame = clips[k][i % UNIQUE]
            prompt = None
            if i == STARTS[k]:
                prompt = Prompt(box=BOXES[k])
            elif (k, i) == REPROMPT[:2]:
                prompt = Prompt(box=REPROMPT[2])
            encoded = encoded_clips[k][i % UNIQUE]  # one encoder run feeds both sides
            items.append((k, encoded, frame.shape[:2], prompt))
        if i == LEAVES[1]:
            batch.leave(together[LEAVES[0]])
        expected = [alone[k].step_encoded(enc, hw, p) for k, enc, hw, p in items]
        got = batch.track([(together[k], together[k], enc, hw, p) for k, enc, hw, p in items])
        buckets_seen.add((len(batch), batch.bucket))
        for (k, _, _, _), a, b in zip(items, expected, got, strict=True):
            assert not isinstance(b, Exception)
            assert a.frame_index == b.frame_index, f"session {k} frame {i}"
            in_batch = together[k] in batch
            since = a.frame_index
            assert in_batch == (since >= full_at), f"session {k} frame {i}: in batch {in_batch}, frame {since}"
            if in_batch:
                assert not together[k].steady_active  # its memory lives in the bucket, not in its own bank
                lo_a, lo_b = a.low_res_numpy(), b.low_res_numpy()
                max_diff = max(max_diff, float(np.abs(lo_a - lo_b).max()))
                ious[k].append(_iou(lo_a > 0, lo_b > 0))
                assert (a.object_score > 0) == (b.object_score > 0)
                assert b.logits.shape == a.logits.shape
    # every session ran batched frames; the batch grew to 4 rows and shrank to 2 when sessions left
    assert all(len(x) >= 3 for x in ious), [len(x) for x in ious]
    assert (4, 4) in buckets_seen and (3, 4) in buckets_seen and (2, 2) in buckets_seen, sorted(buckets_seen)
    for k in range(4):
        assert np.mean(ious[k]) >= 0.999, f"session {k}: mean IoU {np.mean(ious[k])}"
    # float rounding only (a shared pointer position, say, moves logits by far more)
    assert max_diff < 1e-3, max_diff
    print(f"max logit difference batched vs one by one: {max_diff:.3g}")
    assert batch.step_times and set(batch.step_times) <= set(BUCKETS)


def test_a_reset_tracker_leaves_the_batch(short_bank_model) -> None:
    frames = moving_disc_frames(1, seed=4) * (bank_full_at(short_bank_model) + 2)
    tracker = StreamingTracker(short_bank_model)
    batch = SessionBatch(short_bank_model)
    enc = tracker.encode(tracker.preprocess(frames[0]))[0]
    for i, frame in enumerate(frames):
        prompt = Prompt(box=(30, 25, 60, 70)) if i == 0 else None
        (r,) = batch.track([("a", tracker, enc, frame.shape[:2], prompt)])
        assert not isinstance(r, Exception)
    assert "a" in batch and batch.bucket == 1
    tracker.reset()
    (r,) = batch.track([("a", tracker, enc, frames[0].shape[:2], None)])
    assert "a" not in batch and len(batch) == 0
    assert "no prompt" in str(r)


def test_batched_step_has_no_host_sync(short_bank_model) -> None:
    """The stacked step reads no tensor value on the host (so it can be captured per bucket)."""
    from greenscreen_cam.track.opcount import OpCounter

    model = short_bank_model
    frame = moving_disc_frames(1, seed=5)[0]
    trackers = [StreamingTracker(model) for _ in range(2)]
    batch = SessionBatch(model)
    enc = trackers[0].encode(trackers[0].preprocess(frame))[0]
    n = bank_full_at(model) + 2

    def items(i: int):
        prompt = Prompt(box=(30, 25, 60, 70)) if i == 0 else None
        return [(k, t, enc, frame.shape[:2], prompt) for k, t in enumerate(trackers)]

    for i in range(n - 1):
        batch.track(items(i))
    assert len(batch) == 2
    step_items = items(n - 1)
    bucket = batch._current
    assert bucket is not None
    from greenscreen_cam.track.batched import batched_step

    feats = [torch.cat([e.feats[j] for _, _, e, _, _ in step_items], dim=1) for j in range(3)]
    pos = [torch.cat([e.pos[j] for _, _, e, _, _ in step_items], dim=1) for j in range(3)]
    with torch.inference_mode():
        bucket.live.fill_(True)
    with OpCounter() as counter, torch.inference_mode():
        batched_step(model, bucket, bucket.live, feats, pos, step_items[0][2].sizes)
    assert counter.syncs == 0, counter.sync_ops


def test_admission_reads_the_measured_time_of_the_next_bucket() -> None:
    from greenscreen_cam.link.worker import ModelWorker

    w = ModelWorker(None, model_name="tiny", device="cpu", resolution=256)
    w.step_times = {4: 0.1}  # the 4-row bucket measured at 100 ms
    assert w.predicted_fps(3) == pytest.approx(10.0)  # 3 sessions pad to the 4-row bucket
    assert w.predicted_fps(4) == pytest.approx(10.0)  # a fourth camera costs nothing more
    assert w.predicted_fps(5) == pytest.approx(5.0)  # the 8-row bucket, scaled from 4 until measured
    w.step_times = {4: 0.1, 8: 0.12}
    assert w.predicted_fps(5) == pytest.approx(1 / 0.12)
    w.step_times, w.fill_times = {}, {2: 0.1}  # nothing stacked yet: steps with filling banks stand in
    assert w.predicted_fps(3) == pytest.approx(1 / 0.15)
    one_by_one = ModelWorker(None, model_name="tiny", device="cpu", resolution=256, batch=False)
    one_by_one.step_times = {1: 0.05}
    assert one_by_one.predicted_fps(3) == pytest.approx(1 / 0.15)


def test_bench_serve_step_needs_a_source() -> None:
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    result = CliRunner().invoke(app, ["bench", "--serve-step", "--device", "cpu", "--resolution", "256"])
    assert result.exit_code != 0
    assert "--serve-step needs a SOURCE video" in result.output
    assert "Traceback" not in result.output
