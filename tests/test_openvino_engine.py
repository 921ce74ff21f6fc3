"""The OpenVINO engine: the engine choice, its errors, its cache, and one step against torch's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from greenscreen_cam.config import ModelSettings
from greenscreen_cam.errors import ConfigError, EngineError
from greenscreen_cam.track import engines
from greenscreen_cam.track.engines import resolve_engine

from .conftest import moving_disc_frames


@pytest.mark.parametrize(
    ("setting", "device", "installed", "expected"),
    [
        ("auto", "cpu", True, "openvino"),
        ("auto", "cpu", False, "torch"),
        ("auto", "cuda:0", True, "torch"),
        ("auto", "mps", True, "torch"),
        ("torch", "cpu", True, "torch"),
        ("openvino", "cpu", True, "openvino"),
        ("openvino", "cuda:0", True, ConfigError),
        ("openvino", "cpu", False, EngineError),
        ("tensorrt", "cpu", True, ConfigError),
    ],
)
def test_resolve_engine(monkeypatch, setting, device, installed, expected):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    if isinstance(expected, type):
        with pytest.raises(expected):
            resolve_engine(setting, device, installed=installed)
    else:
        assert resolve_engine(setting, device, installed=installed) == expected


def test_missing_openvino_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setattr(engines, "openvino_installed", lambda: False)
    with pytest.raises(EngineError) as info:
        resolve_engine("openvino", "cpu")
    message = str(info.value)
    assert "\n" not in message and engines.OPENVINO_INSTALL in message


def test_the_environment_decides_what_auto_means(monkeypatch):
    monkeypatch.setenv(engines.ENGINE_ENV, "torch")
    assert resolve_engine("auto", "cpu", installed=True) == "torch"
    assert resolve_engine("openvino", "cpu", installed=True) == "openvino"  # an explicit choice wins


def test_engine_settings_are_checked_and_reach_the_model_choice(monkeypatch, tmp_path):
    from greenscreen_cam.config import check_fields, load_settings
    from greenscreen_cam.track.tracking import resolve_model

    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.setattr(engines, "openvino_installed", lambda: True)
    choice = resolve_model(ModelSettings(engine="openvino", openvino_device="gpu"), random_weights=tmp_path)
    assert (choice.engine, choice.openvino_device) == ("openvino", "GPU")
    assert "OpenVINO GPU" in choice.describe()
    assert resolve_model(ModelSettings(engine="torch"), random_weights=tmp_path).engine == "torch"
    with pytest.raises(ConfigError):
        check_fields(ModelSettings(engine="bogus"))
    with pytest.raises(ConfigError):
        check_fields(ModelSettings(openvino_device="TPU"))
    with pytest.raises(ConfigError, match="f32, bf16"):
        check_fields(ModelSettings(openvino_precision="fp8"))
    bf16 = resolve_model(ModelSettings(engine="openvino", openvino_precision="bf16"), random_weights=tmp_path)
    assert bf16.openvino_precision == "bf16" and "OpenVINO CPU bf16" in bf16.describe()
    config = tmp_path / "greencam.toml"
    config.write_text('engine = "openvino"\nopenvino_device = "AUTO"\n')
    loaded = load_settings(config, defaults_file=None, user_file=False)
    assert (loaded.engine, loaded.openvino_device) == ("openvino", "AUTO")


def test_cli_refuses_a_bad_engine_in_one_line():
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    result = CliRunner().invoke(app, ["start", "--engine", "bogus", "--source", "nothing.mp4"])
    assert result.exit_code == 2
    assert "engine" in result.output


# --------------------------------------------------------------------------- the converted graphs
openvino = pytest.importorskip("openvino")


@pytest.fixture(scope="session")
def ov_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture(scope="session")
def ov_engine(tiny_model, tiny_checkpoint, ov_cache):
    """The tiny model's engine, converted once per test session (the slow part: minutes on 2 cores)."""
    from greenscreen_cam.track.openvino_engine import OpenVINOEngine

    lines: list[str] = []
    engine = OpenVINOEngine(
        tiny_model, name="tiny", checkpoint=tiny_checkpoint, cache_dir=ov_cache, notify=lines.append
    )
    engine.lines = lines
    return engine


def test_rotate_real_equals_sams_complex_rotation():
    import torch
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    from greenscreen_cam.track.openvino_engine import rotate_real

    freqs = compute_axial_cis(dim=64, end_x=8, end_y=8)
    q = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    expected, _ = apply_rotary_enc(q, q[:, :, :0], freqs_cis=freqs)
    got = rotate_real(q, freqs.real, freqs.imag)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.slow
def test_one_openvino_step_matches_one_torch_step(tiny_model, ov_engine):
    from greenscreen_cam.track.segmenter import Prompt, StreamingTracker
    from greenscreen_cam.track.steady import bank_full_at

    assert any(line.startswith("openvino: compiled for CPU") for line in ov_engine.lines)
    frames = moving_disc_frames(bank_full_at(tiny_model) + 1, seed=3)
    ref = StreamingTracker(tiny_model)
    ours = StreamingTracker(tiny_model, engine=ov_engine)
    for i, frame in enumerate(frames):
        image = ref.preprocess(frame)
        encoded = ref.encode(image)[0]  # the same state: both steps read torch's features
        prompt = Prompt(box=(30, 25, 60, 70)) if i == 0 else None
        a = ref.step_encoded(encoded, frame.shape[:2], prompt)
        b = ours.step_encoded(encoded, frame.shape[:2], prompt)
    assert ours.steady_active  # the last frame ran the OpenVINO step from the same bank as torch's
    la, lb = a.low_res_numpy(), b.low_res_numpy()
    assert np.abs(la - lb).max() <= 1e-3
    ma, mb = la > 0, lb > 0
    union = (ma | mb).sum()
    assert union == 0 or (ma & mb).sum() / union >= 0.999
    assert abs(a.object_score - b.object_score) <= 1e-3
    # the converted image encoder too
    feats = ours.encode(image)[0].feats
    assert max(float((x - y).abs().max()) for x, y in zip(encoded.feats, feats, strict=True)) <= 1e-3


@pytest.mark.slow
def test_bf16_is_compiled_from_the_same_cache_and_stays_close(tiny_model, tiny_checkpoint, ov_engine, ov_cache):
    """``--openvino-precision bf16``: no second conversion; one step from torch's state stays near torch's
    (a speed option: its distance is measured in docs/benchmarks.md, never the default)."""
    from greenscreen_cam.track.openvino_engine import DEFAULT_CONFIG, OpenVINOEngine
    from greenscreen_cam.track.segmenter import Prompt, StreamingTracker
    from greenscreen_cam.track.steady import bank_full_at

    lines: list[str] = []
    config = {**DEFAULT_CONFIG, "INFERENCE_PRECISION_HINT": "bf16"}
    engine = OpenVINOEngine(
        tiny_model, name="tiny", checkpoint=tiny_checkpoint, cache_dir=ov_cache, notify=lines.append, config=config
    )
    assert engine.cache_path == ov_engine.cache_path and not any("converting" in line for line in lines)
    frames = moving_disc_frames(bank_full_at(tiny_model) + 1, seed=3)
    ref, ours = StreamingTracker(tiny_model), StreamingTracker(tiny_model, engine=engine)
    for i, frame in enumerate(frames):
        encoded = ref.encode(ref.preprocess(frame))[0]
        prompt = Prompt(box=(30, 25, 60, 70)) if i == 0 else None
        a = ref.step_encoded(encoded, frame.shape[:2], prompt)
        b = ours.step_encoded(encoded, frame.shape[:2], prompt)
    assert ours.steady_active
    ma, mb = a.low_res_numpy() > 0, b.low_res_numpy() > 0
    union = (ma | mb).sum()
    assert union == 0 or (ma & mb).sum() / union >= 0.98


@pytest.mark.slow
def test_a_second_engine_reads_the_cache_and_a_corrupt_entry_is_rebuilt_in_one_line(
    tiny_model, tiny_checkpoint, ov_engine, ov_cache
):
    from greenscreen_cam.track.openvino_engine import OpenVINOEngine

    lines: list[str] = []
    again = OpenVINOEngine(tiny_model, name="tiny", checkpoint=tiny_checkpoint, cache_dir=ov_cache, notify=lines.append)
    assert again.cache_path == ov_engine.cache_path
    assert not any("converting" in line for line in lines) and not again.rebuilt
    key = json.loads((again.cache_path / "manifest.json").read_text())
    # a corrupt graph: the entry is dropped with one line (the caller then converts again)
    (again.cache_path / "step.xml").write_text("<not a model")
    said: list[str] = []
    again.say = said.append
    assert again._cached(key) is None
    assert len(said) == 1 and "rebuilding" in said[0] and "\n" not in said[0]
    assert not again.cache_path.exists()


@pytest.mark.slow
def test_greencam_serve_steps_each_session_through_the_engine(tiny_model, ov_engine, tmp_path, monkeypatch):
    """A CPU serve with the OpenVINO engine: sessions step one by one through it, masks as a local run's."""
    from greenscreen_cam.track.engines import engine_for, register_engine
    from greenscreen_cam.track.segmenter import StreamingTracker
    from tests.test_link import DISC_BOX, ServerThread, decoded_clip, iou, remote_masks, upsampled

    steps = []
    real = ov_engine.steady
    monkeypatch.setattr(ov_engine, "steady", lambda *a, **k: steps.append(1) or real(*a, **k))
    frames = decoded_clip(tmp_path, 20)  # past the bank filling up (frame 16): the steady OpenVINO step runs
    register_engine(tiny_model, ov_engine)
    try:
        server = ServerThread(tiny_model, max_sessions=1)
        try:
            masks, stats = remote_masks(server.url, frames, DISC_BOX)
        finally:
            server.close()
    finally:
        register_engine(tiny_model, None)
    assert engine_for(tiny_model) is None
    assert [m.frame_index for m in masks] == [f.index for f in frames] and stats["unmatched"] == 0
    served = len(steps)
    assert served >= 3, "the server never ran the OpenVINO step"
    local = StreamingTracker(tiny_model, engine=ov_engine)
    hw = frames[0].image.shape[:2]
    ious = []
    for i, (f, m) in enumerate(zip(frames, masks, strict=True)):
        res = local.prompt(f.image, DISC_BOX) if i == 0 else local.track(f.image)
        mine, theirs = upsampled(res.low_res_numpy(), hw) > 0, upsampled(m.logits, hw) > 0
        assert 0.02 < mine.mean() < 0.98
        ious.append(iou(mine, theirs))
    assert len(steps) == 2 * served  # the local run took as many OpenVINO steps as the server did
    assert np.mean(ious) >= 0.9, ious  # the video codec on the way up is the only difference


@pytest.mark.slow
def test_several_subjects_step_through_the_engine_too(tiny_model, ov_engine, monkeypatch):
    """``--bbox`` twice (or the preview's r) with ``--engine openvino``: every subject takes the OpenVINO step."""
    from greenscreen_cam.track.multi import MultiTracker
    from greenscreen_cam.track.segmenter import Prompt
    from greenscreen_cam.track.steady import bank_full_at

    steps = []
    real = ov_engine.steady
    monkeypatch.setattr(ov_engine, "steady", lambda *a, **k: steps.append(1) or real(*a, **k))
    frames = moving_disc_frames(bank_full_at(tiny_model) + 3, seed=5)
    multi = MultiTracker(tiny_model, engine=ov_engine)
    multi.prompt(frames[0], [Prompt(box=(30, 25, 60, 70)), Prompt(box=(5, 5, 40, 40))])
    for frame in frames[1:]:
        multi.track(frame)
    assert all(sub.engine is ov_engine and sub.steady_active for sub in multi.subjects)
    assert len(steps) == 2 * 3  # two subjects, the three frames after the bank filled up
