"""Several subjects: each subject's mask against the official SAM2VideoPredictor with two objects."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from greenscreen_cam import models
from greenscreen_cam.errors import PromptError
from greenscreen_cam.multi import MultiTracker
from greenscreen_cam.prompt import Prompt
from greenscreen_cam.segmenter import StreamingTracker

from .conftest import moving_disc_frames, write_jpeg_folder

N_FRAMES = 10  # past the 7-frame spatial memory window

SUBJECTS = [
    (Prompt(box=(30.0, 25.0, 60.0, 70.0)), {"box": [30, 25, 90, 95]}),
    (
        Prompt(points=((130.0, 20.0), (20.0, 100.0)), labels=(1, 0)),
        {"points": [[130, 20], [20, 100]], "labels": [1, 0]},
    ),
]


def official_two_objects(checkpoint: Path, folder: Path) -> dict[int, list[torch.Tensor]]:
    """Per object id (1, 2), the official predictor's full-resolution logits on every frame."""
    from sam2.build_sam import build_sam2_video_predictor

    spec = models.get_spec("tiny")
    predictor = build_sam2_video_predictor(
        spec.config, str(checkpoint), device="cpu", hydra_overrides_extra=["++model.image_size=256"]
    )
    out: dict[int, list[torch.Tensor]] = {1: [], 2: []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = predictor.init_state(str(folder))
        for obj_id, (_, official) in enumerate(SUBJECTS, start=1):
            predictor.add_new_points_or_box(state, 0, obj_id, **official)
        for i, obj_ids, masks in predictor.propagate_in_video(state):
            assert list(obj_ids) == [1, 2]
            assert i == len(out[1])
            for k, obj_id in enumerate(obj_ids):
                out[obj_id].append(masks[k, 0].clone())
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = write_jpeg_folder(tmp_path_factory.mktemp("multi") / "frames", moving_disc_frames(N_FRAMES))
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]
    return folder, frames


def test_each_subject_matches_official_predictor_with_two_objects(tiny_model, tiny_checkpoint, clip):
    folder, frames = clip
    reference = official_two_objects(tiny_checkpoint, folder)
    tracker = MultiTracker(tiny_model)
    for i, frame in enumerate(frames):
        union = tracker.prompt(frame, [p for p, _ in SUBJECTS]) if i == 0 else tracker.track(frame)
        assert union.frame_index == i and len(tracker.last_results) == 2
        for k, obj_id in enumerate((1, 2)):
            torch.testing.assert_close(tracker.last_results[k].logits, reference[obj_id][i], atol=1e-3, rtol=1e-4)
        # The key is the union of the two subjects (taken at the tracker's resolution, so the
        # upsampled edge may differ by a pixel or two from (random weights give soft logits) the union of the upsampled masks).
        lows = [r.low_res_logits for r in tracker.last_results]
        assert torch.equal(union.low_res_logits.gt(0), lows[0].gt(0) | lows[1].gt(0))
        either = reference[1][i].gt(0) | reference[2][i].gt(0)
        keyed = union.logits.gt(0)
        assert (keyed & either).sum() / (keyed | either).sum() >= 0.95, f"frame {i}"
    # Both objects must be non-trivial and different for the comparison to mean anything.
    assert reference[1][0].gt(0).any() and reference[2][0].gt(0).any()
    assert not torch.equal(reference[1][0].gt(0), reference[2][0].gt(0))


def test_memory_bounded_per_subject_and_one_encoding_per_frame(tiny_model):
    frames = moving_disc_frames(20)
    tracker = MultiTracker(tiny_model, profile=True)
    tracker.prompt(frames[0], [SUBJECTS[0][0], SUBJECTS[1][0]])
    sizes = []
    for frame in frames[1:]:
        tracker.track(frame)
        sizes.append(tracker.stored_bytes())
    # Once the memory window is full, every subject holds a constant amount.
    assert len(set(map(tuple, sizes[-5:]))) == 1, sizes[-5:]
    for sub in tracker.subjects:
        assert sub.stored_entries()[1] <= sub._keep_ptr
    timings = tracker.timings
    assert len(timings["image_encoder"]) == len(frames)  # one encoding per frame, not per subject
    assert len(timings["mask_decoder"]) == 2 * len(frames)


def test_add_and_drop_subjects_mid_stream(tiny_model):
    frames = moving_disc_frames(6)
    tracker = MultiTracker(tiny_model, max_subjects=2)
    tracker.prompt(frames[0], SUBJECTS[0][0])
    tracker.track(frames[1])
    union = tracker.add(frames[2], SUBJECTS[1][0])
    assert union.is_prompt_frame and len(tracker.subjects) == 2
    # The added subject starts a fresh memory of its own, like a single tracker prompted there.
    single = StreamingTracker(tiny_model)
    alone = single.prompt(frames[2], SUBJECTS[1][0])
    torch.testing.assert_close(tracker.last_results[1].low_res_logits, alone.low_res_logits)
    with pytest.raises(PromptError, match="at most|the most is 2"):
        tracker.add(frames[2], SUBJECTS[1][0])
    tracker.track(frames[3])
    cx, cy = 160 // 3 + 6, 60  # the disc's centre on frame 3
    picked = tracker.subject_at(cx, cy)
    assert picked is not None and tracker.last_results[picked].logits[cy, cx] > 0
    tracker.drop(picked)
    assert len(tracker.subjects) == 1
    with pytest.raises(PromptError, match="no subject 5"):
        tracker.drop(4)
    tracker.track(frames[4])
    assert len(tracker.last_results) == 1


def test_rejects_too_many_and_empty_selections(tiny_model):
    frame = moving_disc_frames(1)[0]
    tracker = MultiTracker(tiny_model, max_subjects=1)
    with pytest.raises(PromptError, match="at most 1"):
        tracker.prompt(frame, [SUBJECTS[0][0], SUBJECTS[1][0]])
    with pytest.raises(PromptError, match="at least one"):
        tracker.prompt(frame, [])
    with pytest.raises(PromptError, match="no prompt"):
        tracker.track(frame)
