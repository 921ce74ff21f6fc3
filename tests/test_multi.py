"""Several subjects: each subject's mask against the official SAM2VideoPredictor with two objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from greenscreen_cam.errors import PromptError
from greenscreen_cam.track.multi import MultiTracker
from greenscreen_cam.track.prompt import Prompt
from greenscreen_cam.track.segmenter import StreamingTracker

from .conftest import moving_disc_frames, official_logits, write_jpeg_folder

N_FRAMES = 18  # past the 7-frame spatial memory window and the 16-pointer bank (the steady step runs)
# (At least 16 frames, too: on a shorter video the official predictor scales its pointers' temporal
# encoding by the video's length, a stream's never; see segmenter._STREAM_LENGTH.)

SUBJECTS = [
    (Prompt(box=(30.0, 25.0, 60.0, 70.0)), {"box": [30, 25, 90, 95]}),
    (
        Prompt(points=((130.0, 20.0), (20.0, 100.0)), labels=(1, 0)),
        {"points": [[130, 20], [20, 100]], "labels": [1, 0]},
    ),
]


def official_two_objects(checkpoint: Path, folder: Path) -> dict[int, list[torch.Tensor]]:
    """Per object id (1, 2), the official predictor's full-resolution logits on every frame."""
    frames = official_logits(checkpoint, folder, [official for _, official in SUBJECTS])
    return {obj_id: [m[obj_id - 1] for m in frames] for obj_id in (1, 2)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = write_jpeg_folder(tmp_path_factory.mktemp("multi") / "frames", moving_disc_frames(N_FRAMES))
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]
    return folder, frames


@pytest.mark.slow
def test_each_subject_matches_official_predictor_with_two_objects(tiny_model, tiny_checkpoint, clip):
    folder, frames = clip
    reference = official_two_objects(tiny_checkpoint, folder)
    tracker = MultiTracker(tiny_model)
    for i, frame in enumerate(frames):
        union = tracker.prompt(frame, [p for p, _ in SUBJECTS]) if i == 0 else tracker.track(frame)
        assert union.frame_index == i and len(tracker.last_results) == 2
        for k, obj_id in enumerate((1, 2)):
            ours, theirs = tracker.last_results[k].logits, reference[obj_id][i]
            assert torch.equal(ours, theirs), f"frame {i}, subject {k + 1}: {(ours - theirs).abs().max().item()}"
        # The key is the union of the two subjects upsampled one by one: the official order, bit for bit.
        either = reference[1][i].gt(0) | reference[2][i].gt(0)
        assert torch.equal(union.logits.gt(0), either), f"frame {i}"
        assert union.low_res_numpy().shape == (2, 64, 64)  # one plane per subject for the compositor
    # Both objects must be non-trivial and different for the comparison to mean anything.
    assert reference[1][0].gt(0).any() and reference[2][0].gt(0).any()
    assert not torch.equal(reference[1][0].gt(0), reference[2][0].gt(0))


def test_memory_bounded_per_subject_and_one_encoding_per_frame(tiny_model):
    frames = moving_disc_frames(9)
    tracker = MultiTracker(tiny_model, profile=True)
    tracker.prompt(frames[0], [SUBJECTS[0][0], SUBJECTS[1][0]])
    sizes = []
    for frame in frames[1:]:
        tracker.track(frame)
        sizes.append(tracker.stored_bytes())
    ptr_bytes = int(tiny_model.hidden_dim) * 4  # one float32 object pointer
    # Past the 7-frame spatial window a subject's memory grows by one object pointer per frame at most
    # (pointers are kept for 16 frames, then dropped too), never by a spatial memory.
    for before, after in zip(sizes[-3:], sizes[-2:]):  # frames 6 -> 7 -> 8
        for b, a in zip(before, after, strict=True):
            assert 0 <= a - b <= ptr_bytes, (before, after)
    timings = tracker.timings
    assert len(timings["image_encoder"]) == len(frames)  # one encoding per frame, not per subject
    assert len(timings["mask_decoder"]) == 2 * len(frames)


def test_add_and_drop_subjects_mid_stream(tiny_model):
    frames = moving_disc_frames(5)
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


# --------------------------------------------------------------------------- the CLI's repeatable flags
from greenscreen_cam.track.prompt import Selection, build_prompt  # noqa: E402


@pytest.mark.parametrize(
    "bboxes, points, negative, expected",
    [
        (["1,2,3,4"], [], [], Prompt(box=(1, 2, 3, 4))),
        ("1,2,3,4", [], [], Prompt(box=(1, 2, 3, 4))),
        (
            ["1,2,3,4", "10,10,5,5"],
            [],
            ["12,12"],
            Selection((Prompt(box=(1, 2, 3, 4)), Prompt(box=(10, 10, 5, 5), points=((12, 12),), labels=(0,)))),
        ),
        (
            ["1,2,3,4"],
            ["50,50", "60,60"],
            ["61,61", "62,62"],
            Selection(
                (
                    Prompt(box=(1, 2, 3, 4)),
                    Prompt(points=((50, 50),), labels=(1,)),
                    Prompt(points=((60, 60), (61, 61), (62, 62)), labels=(1, 0, 0)),
                )
            ),
        ),
        ([], [], [], None),
    ],
)
def test_each_bbox_and_point_is_one_subject(bboxes, points, negative, expected):
    assert build_prompt(bboxes, points, negative) == expected


def test_selection_names_the_subject_that_does_not_fit():
    sel = build_prompt(["1,2,3,4", "150,10,50,50"])
    assert isinstance(sel, Selection)
    with pytest.raises(PromptError, match="subject 2: --bbox 150,10,50,50 lies outside the 160x120 frame"):
        sel.validate(160, 120)


def test_two_bboxes_end_to_end_key_both_subjects(checkpoint_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    from .conftest import write_video

    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    monkeypatch.delenv("GREENCAM_SERVER", raising=False)
    src = write_video(tmp_path / "in.mp4", moving_disc_frames(4))
    mattes = {}
    for name, boxes in {"one": ["30,25,60,70"], "two": ["30,25,60,70", "110,5,45,40"]}.items():
        args = ["start", "--device", "cpu", "--resolution", "256", "--source", str(src), "--refine", "none"]
        for b in boxes:
            args += ["--bbox", b]
        out = tmp_path / name
        out.mkdir()
        result = CliRunner().invoke(app, [*args, "--output", str(out / "o.mp4"), "--matte-output", str(out / "m")])
        assert result.exit_code == 0, result.output
        mattes[name] = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((out / "m").glob("*.png"))]
        if name == "two":
            assert "tracking 2 subjects" in result.output
    assert len(mattes["one"]) == len(mattes["two"]) == 4
    for one, two in zip(mattes["one"], mattes["two"], strict=True):
        # The union keeps the first subject everywhere it was keyed alone (a key that kept only the
        # last subject fails this). Random weights give soft, nearly flat logits, so how much the
        # second subject adds is not asserted here; test_each_subject_matches_... checks the union.
        assert (two >= one - 1).all()


class _Preview:
    """The preview window's side of the pipeline (no display needed): a cursor, keys and one dragged box."""

    def __init__(self) -> None:
        self.overlay: list[str] = []
        self.last_key = -1
        self.cursor: tuple[float, float] | None = None
        self.box: tuple[int, int, int, int] | None = None
        self.selecting = False

    def send(self, frame: np.ndarray) -> None:
        pass

    def begin_select(self) -> None:
        self.selecting = True

    def take_selection(self):
        box, self.box = self.box, None
        return box


def _only_under(results, index: int, frame_hw: tuple[int, int]) -> tuple[float, float]:
    """A frame pixel where subject ``index``'s mask is on and beats every other subject's."""
    logits = [r.low_res_logits[0, 0].float() for r in results]
    others = torch.stack([lg for i, lg in enumerate(logits) if i != index]).amax(0) if len(logits) > 1 else None
    margin = logits[index] - (others if others is not None else 0)
    margin = torch.where(logits[index] > 0, margin, torch.full_like(margin, -1e9))
    iy, ix = divmod(int(margin.argmax()), margin.shape[1])
    assert float(margin[iy, ix]) > 0, "the subject's mask is on somewhere"
    h, w = frame_hw
    return ((ix + 0.5) * w / margin.shape[1], (iy + 0.5) * h / margin.shape[0])


@pytest.mark.slow
def test_preview_r_adds_a_subject_and_d_drops_the_one_under_the_cursor(tiny_model, tmp_path):
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.sources import ImageFolderSource

    frames = moving_disc_frames(8)
    events: list[str] = []
    preview = _Preview()
    tracker = MultiTracker(tiny_model)
    pipe = Pipeline(
        ImageFolderSource(write_jpeg_folder(tmp_path / "f", frames)),
        tracker,
        Compositor(CompositorSettings()),
        _Preview(),
        prompt=Prompt(box=(30, 25, 60, 70)),
        preview=preview,  # type: ignore[arg-type]
        on_event=events.append,
    )
    src = pipe.source
    pipe._track(src.read())
    assert len(tracker.subjects) == 1
    pipe._hotkey(ord("r"))
    assert preview.selecting and "subject to add" in events[-1]
    preview.box = (100, 10, 50, 60)  # the user finished dragging a second box
    pipe._update_preview(frames[0])
    result = pipe._track(src.read())
    assert len(tracker.subjects) == 2 and "subject 2 added" in events[-1] and result.logits is not None
    hw = frames[0].shape[:2]
    preview.cursor = _only_under(tracker.last_results, 1, hw)
    pipe._hotkey(ord("d"))
    pipe._track(src.read())
    assert len(tracker.subjects) == 1 and "subject 2 dropped; 1 left" in events[-1]
    preview.cursor = _only_under(tracker.last_results, 0, hw)
    pipe._hotkey(ord("d"))
    assert pipe._track(src.read()) is None and not tracker.is_prompted
    assert "last subject dropped" in events[-1] and "press r" in events[-1]
    preview.box = (30, 25, 60, 70)  # r on an empty tracker selects again
    pipe._update_preview(frames[0])
    assert pipe._track(src.read()) is not None and len(tracker.subjects) == 1
    pipe.reselect(Prompt(box=(30, 25, 60, 70)))  # a re-selection and an added subject before one frame:
    pipe.add_subject(Prompt(box=(100, 10, 50, 60)))  # the re-selection takes it, the subject joins next
    pipe._track(src.read())
    assert len(tracker.subjects) == 1
    pipe._track(src.read())
    assert len(tracker.subjects) == 2 and "subject 2 added" in events[-1]


# --------------------------------------------------------------------------- several subjects in one serve session
class DrivenWorker:
    """A real :class:`ModelWorker` with one session ``"s"``, its loop on a thread; one frame in, one mask out."""

    def __init__(self, model, **kw) -> None:
        import asyncio
        import queue
        import threading

        from greenscreen_cam.link.worker import ModelWorker

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.masks: queue.Queue[bytes] = queue.Queue()
        self.errors: queue.Queue[str] = queue.Queue()
        self.worker = ModelWorker(model, model_name="tiny", device="cpu", resolution=256, **kw)
        self.worker.add("s", lambda msg, state: self.masks.put(msg), self.errors.put)
        self.entry = self.worker._entries["s"]
        self.worker.start(self.loop)

    def prompt(self, prompt: Prompt | None, *, add: bool = False, hw: tuple[int, int] = (120, 160)) -> None:
        from greenscreen_cam.link.protocol import parse_text, prompt_message

        msg = None if prompt is None else parse_text(prompt_message(prompt, hw[1], hw[0], add=add))
        self.worker.set_prompt("s", msg)

    def drop(self, subject: Any) -> None:
        from greenscreen_cam.link.protocol import parse_text

        self.worker.set_prompt("s", parse_text(json.dumps({"type": "prompt", "drop": subject})))

    def frame(self, rgb: np.ndarray, tag: int):
        """The mask message for ``rgb`` (decoded) and the error lines sent before it."""
        import av

        from greenscreen_cam.link.protocol import decode_mask

        self.worker.put_frame("s", av.VideoFrame.from_ndarray(rgb, format="rgb24"), tag)
        mask = decode_mask(self.masks.get(timeout=120))
        errors = []
        while not self.errors.empty():
            errors.append(self.errors.get_nowait())
        return mask, errors

    def close(self) -> None:
        self.worker.stop()
        self.worker.release()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


UNIQUE = 3  # the clips below loop over their first frames: the reference encodes each once


@pytest.mark.slow
def test_a_serve_session_with_an_added_subject_keys_the_union_of_two_trackers(short_bank_model):
    """Prompt, then ``add``: the session's mask is the union of two StreamingTrackers on the same frames.

    The first subject joins the stacked step once its bank is full (frame 4 of the short bank);
    the added one keeps stepping on its own on the same encoding. The mask carries one plane per
    subject (the client upsamples each before they meet). Until the stacked step the planes are
    bit for bit the two trackers'; after it, within the stacked step's float rounding (one level
    of 255). A plain prompt then drops the added subject.
    """
    from greenscreen_cam.link.protocol import STATE_LOST, STATE_TRACKING, probability_u8
    from greenscreen_cam.track.steady import bank_full_at

    model = short_bank_model
    frames = moving_disc_frames(UNIQUE, seed=3)
    hw = frames[0].shape[:2]
    first, second, third = SUBJECTS[0][0], SUBJECTS[1][0], Prompt(box=(100.0, 10.0, 50.0, 60.0))
    alone = [StreamingTracker(model), StreamingTracker(model)]
    encoded = [alone[0].encode(alone[0].preprocess(f))[0] for f in frames]
    n = bank_full_at(model) + 3
    driven = DrivenWorker(model, batch=True)
    try:
        stacked = driven.worker.stacked
        assert stacked is not None
        differs = 0
        for i in range(n):
            if i == 0:
                driven.prompt(first)
            if i == 1:
                driven.prompt(second, add=True)
            mask, errors = driven.frame(frames[i % UNIQUE], tag=100 + i)
            assert not errors and mask.tag == 100 + i
            results = [alone[0].step_encoded(encoded[i % UNIQUE], hw, first if i == 0 else None)]
            if i >= 1:
                results.append(alone[1].step_encoded(encoded[i % UNIQUE], hw, second if i == 1 else None))
            lows = [r.low_res_numpy() for r in results]  # one plane per subject goes down the link
            expected = probability_u8(lows[0] if len(lows) == 1 else np.stack(lows))
            assert mask.probability.shape == expected.shape, f"frame {i}"
            score = max(r.object_score for r in results)
            assert mask.state == (STATE_TRACKING if score > 0 else STATE_LOST)
            assert len(driven.entry.extras) == min(i, 1)
            if driven.entry.tracker in stacked:
                diff = np.abs(mask.probability.astype(int) - expected.astype(int)).max()
                assert diff <= 1, f"frame {i}: stacked union off by {diff}"
                assert mask.object_score == pytest.approx(score, abs=1e-3)
            else:
                np.testing.assert_array_equal(mask.probability, expected, err_msg=f"frame {i}")
                assert mask.object_score == np.float32(score)
            if i >= 1:
                differs += int((expected[0] != expected[1]).any())
        assert driven.entry.tracker in stacked, "the first subject should have joined the stacked step"
        assert differs, "the two subjects' planes never differed: the union was not tested"

        # A plain prompt replaces both subjects: the mask is that of a fresh tracker prompted there.
        driven.prompt(third)
        mask, errors = driven.frame(frames[0], tag=200)
        fresh = StreamingTracker(model).step_encoded(encoded[0], hw, third)
        assert not errors and not driven.entry.extras and driven.entry.tracker not in stacked
        np.testing.assert_array_equal(mask.probability, probability_u8(fresh.low_res_numpy()))
    finally:
        driven.close()


@pytest.mark.slow
def test_a_serve_session_drops_one_subject_and_the_others_keep_tracking(short_bank_model):
    """``"drop": n`` forgets subject n only: the others' planes go on as their own trackers', the
    next one becomes the first (leaving the stacked step where the dropped one was in it), and
    dropping the last one leaves the session waiting. A drop of a subject not there changes nothing."""
    from greenscreen_cam.link.protocol import STATE_WAITING, LinkProtocolError, probability_u8
    from greenscreen_cam.track.steady import bank_full_at

    model = short_bank_model
    frames = moving_disc_frames(UNIQUE, seed=4)
    hw = frames[0].shape[:2]
    prompts = [SUBJECTS[0][0], SUBJECTS[1][0], Prompt(box=(100.0, 10.0, 50.0, 60.0))]
    alone = [StreamingTracker(model) for _ in prompts]
    encoded = [alone[0].encode(alone[0].preprocess(f))[0] for f in frames]
    driven = DrivenWorker(model, batch=True)
    stacked = driven.worker.stacked
    assert stacked is not None

    def step(i: int, keep: list[int]) -> None:
        mask, errors = driven.frame(frames[i % UNIQUE], tag=100 + i)
        assert not errors and mask.tag == 100 + i
        planes = [alone[k].step_encoded(encoded[i % UNIQUE], hw, prompts[k] if i == 0 else None) for k in keep]
        expected = probability_u8(np.stack([r.low_res_numpy() for r in planes]))
        got = mask.probability if mask.probability.ndim == 3 else mask.probability[None]
        assert got.shape == expected.shape, f"frame {i}: {got.shape} planes, expected {expected.shape}"
        off = 1 if driven.entry.tracker in stacked else 0  # the first subject's plane: the stacked step's rounding
        assert np.abs(got[0].astype(int) - expected[0]).max() <= off, f"frame {i}"
        np.testing.assert_array_equal(got[1:], expected[1:], err_msg=f"frame {i}")

    try:
        driven.prompt(prompts[0])
        driven.prompt(prompts[1], add=True)
        driven.prompt(prompts[2], add=True)
        i = 0
        while i < bank_full_at(model) + 1:
            step(i, [0, 1, 2])
            i += 1
        assert driven.entry.tracker in stacked
        first = driven.entry.tracker

        for bad, message in ((4, "no subject 4 to drop: the session tracks 3"), (9, "out of range"), (0, "out of range"),
                             (True, "not bool"), (1.0, "not float"), ("2", "not str"), (None, "not NoneType")):  # fmt: skip
            with pytest.raises((PromptError, LinkProtocolError), match=message):
                driven.drop(bad)
        driven.drop(2)  # the middle one
        step(i, [0, 2])
        i += 1
        assert len(driven.entry.extras) == 1 and driven.entry.tracker is first

        driven.drop(1)  # the first: the third takes its place, and the stacked row is given up
        step(i, [2])
        i += 1
        assert first not in stacked and not first.is_prompted and not driven.entry.extras

        driven.drop(1)  # the last one: waiting for a prompt
        mask, errors = driven.frame(frames[i % UNIQUE], tag=100 + i)
        assert not errors and mask.state == STATE_WAITING and not driven.entry.tracker.is_prompted
        with pytest.raises(PromptError, match="no subject 1 to drop: the session tracks 0"):
            driven.drop(1)
    finally:
        driven.close()


def test_a_serve_session_refuses_a_subject_beyond_the_most_and_keeps_tracking(tiny_model):
    from greenscreen_cam.link.protocol import STATE_WAITING
    from greenscreen_cam.track.multi import MAX_SUBJECTS

    frames = moving_disc_frames(2, seed=5)
    boxes = [Prompt(box=(5.0 + 15 * k, 10.0, 30.0, 40.0)) for k in range(MAX_SUBJECTS + 1)]
    driven = DrivenWorker(tiny_model, batch=False)
    try:
        # One plain prompt and MAX_SUBJECTS - 1 adds, all queued before one frame: all tracked on it.
        driven.prompt(boxes[0])
        for box in boxes[1:MAX_SUBJECTS]:
            driven.prompt(box, add=True)
        with pytest.raises(PromptError, match=f"already tracking {MAX_SUBJECTS} subjects .the most is {MAX_SUBJECTS}"):
            driven.prompt(boxes[MAX_SUBJECTS], add=True)
        mask, errors = driven.frame(frames[0], tag=1)
        assert not errors and mask.state != STATE_WAITING
        assert len(driven.entry.extras) == MAX_SUBJECTS - 1
        # Still full after the step; the session keeps tracking every subject.
        with pytest.raises(PromptError, match="already tracking"):
            driven.prompt(boxes[MAX_SUBJECTS], add=True)
        mask, errors = driven.frame(frames[1], tag=2)
        assert not errors and mask.state != STATE_WAITING and mask.seq == 2
        assert len(driven.entry.extras) == MAX_SUBJECTS - 1

        # A reset drops them all (their memory freed); an add with no subject left is the first.
        driven.prompt(None)
        mask, _ = driven.frame(frames[0], tag=3)
        assert mask.state == STATE_WAITING and not driven.entry.extras
        assert not driven.entry.tracker.is_prompted
        driven.prompt(boxes[1], add=True)
        mask, errors = driven.frame(frames[0], tag=4)
        assert not errors and mask.state != STATE_WAITING
        assert driven.entry.tracker.is_prompted and not driven.entry.extras
    finally:
        driven.close()


# --------------------------------------------------------------------------- the standing official comparison
PINGPONG_BOXES = [(760, 140, 280, 390), (515, 10, 210, 460)]  # the player; the door beside him (1280x720)


@pytest.mark.slow
def test_two_subjects_through_start_equal_the_official_two_object_run_bit_for_bit(
    tiny_checkpoint, checkpoint_dir, tmp_path, monkeypatch
):
    """``start --bbox A --bbox B --refine none``: every matte equals ``(official logits > 0).any(0)``.

    16 frames of shared/data/videos/pingpong.mp4 (decoded by OpenCV, kept as JPEGs so that both
    runs read the very same pixels; 16, so that the official predictor encodes its object pointers'
    times as a stream does), tiny at 256 px on the CPU, random seeded weights. Taking the union
    before upsampling gave an IoU of 0.9855 on the worst of the first 12.
    """
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    from .conftest import shared_data

    video = shared_data("videos", "pingpong.mp4")
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < 16:
        ok, img = cap.read()
        assert ok, "pingpong.mp4 has at least 16 frames"
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    cap.release()
    folder = write_jpeg_folder(tmp_path / "frames", frames)
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    boxes = [a for x, y, w, h in PINGPONG_BOXES for a in ("--bbox", f"{x},{y},{w},{h}")]
    result = CliRunner().invoke(
        app,
        ["start", "--device", "cpu", "--resolution", "256", "--source", str(folder), *boxes, "--refine", "none",
         "--lost-after", "0", "--output", str(tmp_path / "o.mp4"), "--matte-output", str(tmp_path / "m")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    boxes_xyxy = [{"box": [x, y, x + w, y + h]} for x, y, w, h in PINGPONG_BOXES]
    official = {i: (m > 0).any(0).numpy() for i, m in enumerate(official_logits(tiny_checkpoint, folder, boxes_xyxy))}
    assert sorted(official) == list(range(16))
    for i in range(16):
        ours = cv2.imread(str(tmp_path / "m" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE) > 127
        assert ours.any() and official[i].any(), f"frame {i}: empty masks compare nothing"
        assert np.array_equal(ours, official[i]), f"frame {i}: {np.count_nonzero(ours != official[i])} pixels differ"
