"""The benchmark entry points run for real (small settings on the CPU), so they cannot rot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from greenscreen_cam import bench
from greenscreen_cam.config import ModelSettings
from greenscreen_cam.live.threads import configure_threads
from greenscreen_cam.track.segmenter import STAGES

from .conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.slow
def test_make_bench_gpu_runs_on_the_cpu_with_small_settings(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        ["make", "-s", "bench-gpu", "DEVICE=cpu", f"BENCH_GPU_OUT={out}", f"PY={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(out.iterdir())
    assert [f.suffix for f in files] == [".json", ".md"]
    result = json.loads(files[0].read_text())
    assert result["errors"] == [] and result["device"] == "cpu" and result["small"]
    assert result["versions"]["torch"] and result["versions"]["sam2"]
    # every part of the suite ran and produced numbers
    (tracker,) = result["tracker"]
    assert tracker["label"] == "tiny@256 eager" and tracker["total_ms"] > 0
    assert {r["label"] for r in result["live"]} == {"live 720p", "live 1080p"}
    assert {r["frame_size"] for r in result["live"]} == {"320x180", "480x270"}
    for live in result["live"]:
        assert live["status"]["frames_out"] == live["external_frames_written"] > 0
        assert live["bare_tracker_fps"] > 0
    assert result["e2e"][0]["e2e_mp4_ms_per_frame"] > 0
    assert result["compositor"]["default (smooth 0.3)"]["median_ms"] > 0
    table = files[1].read_text()
    assert "| tiny@256 eager |" in table and "| live 720p 320x180 |" in table
    assert "written:" in proc.stdout
    assert set(result["step_seconds"]) >= {"tiny@256 eager", "live 720p", "live 1080p", "e2e 720p", "compositor"}


@pytest.mark.slow
def test_tracker_bench_stages_account_for_the_frame_time_and_the_official_run_is_timed(tmp_path):
    result = bench.bench_tracker(
        ModelSettings(model="tiny", resolution=256, device="cpu"),
        source=None,
        frames=3,
        random_weights=True,
        reference=True,
        warmup=1,
    )
    json.dumps(result)  # what `greencam bench --json` prints
    stages = result["stages_ms"]
    assert set(stages) == set(STAGES)
    assert stages["image_encoder"] > 0 and stages["memory_attention"] > 0
    # the stages are timed inside each measured frame: together they are most of its time, never more
    assert 0.5 * result["total_ms"] <= sum(stages.values()) <= result["total_ms"] * 1.02
    assert result["official_ms_per_frame"] > 0 and result["reference"]["loading_ms_per_frame"] > 0


def test_python_m_bench_forms_are_greencam_bench_with_the_old_defaults():
    from greenscreen_cam.bench.__main__ import bench_args

    assert bench_args(["suite", "--device", "cpu", "--small"]) == [
        *("bench", "--suite", "--device", "cuda", "--device", "cpu", "--small"),
    ]
    assert bench_args(["serve", "clip.mp4", "1", "4", "--seconds", "5", "--one-by-one"]) == [
        *("bench", "--serve", "--random-weights", "--resolution", "256", "--device", "cpu", "clip.mp4"),
        *("--seconds", "5", "--one-by-one", "--sessions", "1", "--sessions", "4"),
    ]
    assert "--random-weights" not in bench_args(["capacity", "--checkpoint", "x.pt"])
    with pytest.raises(SystemExit, match="usage"):
        bench_args(["serve-step"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--serve"], "--serve needs a SOURCE video"),
        (["--live"], "--live needs a SOURCE video or image folder"),
        (["--oracle", "masks"], "--oracle needs a SOURCE folder of frames"),
        (["--frames", "1"], "--frames must be at least 2"),
    ],
)
def test_greencam_bench_modes_refuse_missing_input_in_one_line(args, message):
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    res = CliRunner().invoke(app, ["bench", *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "mode, preset, expected",
    [
        ("offline", None, None),
        ("offline", "PASSIVE", "PASSIVE"),
        ("live", None, "PASSIVE"),
        ("live", "ACTIVE", "ACTIVE"),
    ],
)
def test_configure_threads_sets_policy_per_mode_and_keeps_the_users(mode, preset, expected):
    import cv2
    import torch

    from greenscreen_cam.live.threads import live_torch_threads

    env: dict[str, str] = {} if preset is None else {"OMP_WAIT_POLICY": preset}
    before, torch_before = cv2.getNumThreads(), torch.get_num_threads()
    try:
        applied = configure_threads(mode, environ=env)
        assert env.get("OMP_WAIT_POLICY") == expected == applied["omp_wait_policy"]
        assert cv2.getNumThreads() == applied["opencv_threads"]
        # torch is already imported in the test process: the policy is reported as not effective
        assert applied["omp_policy_effective"] is False
        # live leaves a core to capture and compositing; offline keeps torch's own count
        want = live_torch_threads() if mode == "live" else torch_before
        assert torch.get_num_threads() == applied["torch_threads"] == want
    finally:
        cv2.setNumThreads(before)
        torch.set_num_threads(torch_before)


@pytest.mark.slow
def test_configure_threads_before_torch_sets_the_environment():
    from greenscreen_cam.live.threads import live_torch_threads

    code = (
        "import json, os, sys; from greenscreen_cam.live.threads import configure_threads; "
        "r = configure_threads(sys.argv[1]); import torch; "
        "print(json.dumps([r, os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads()]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    for mode in ("live", "offline"):
        out = subprocess.run(
            [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        applied, omp_threads, torch_threads = json.loads(out.stdout.strip().splitlines()[-1])
        assert applied["omp_policy_effective"] is True
        if mode == "live":
            assert omp_threads == str(live_torch_threads()) and torch_threads == live_torch_threads()
        else:
            assert omp_threads is None and torch_threads >= 1  # torch's own default


def test_configure_threads_rejects_unknown_modes():
    with pytest.raises(ValueError, match="offline' or 'live"):
        configure_threads("fast", environ={})  # type: ignore[arg-type]
