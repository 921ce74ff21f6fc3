"""The real commands: exit codes and one-line errors, end-to-end runs from files to files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.cli import app

from .conftest import REPO, moving_disc_frames, official_logits, write_jpeg_folder, write_video

runner = CliRunner()


@pytest.fixture()
def env(checkpoint_dir, monkeypatch):
    monkeypatch.delenv("GREENCAM_TOKEN", raising=False)
    monkeypatch.delenv("GREENCAM_SERVER", raising=False)
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    return checkpoint_dir


def start(*args: str):
    return runner.invoke(app, ["start", "--device", "cpu", "--resolution", "256", *args])


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def test_help_lists_every_command_fast():
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "greenscreen_cam", "--help"], capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0
    for cmd in ("start", "devices", "download", "models", "config", "bench"):
        assert cmd in proc.stdout
    # torch and sam2 are not imported for --help (timing itself lives in the benchmarks)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, greenscreen_cam.cli; print('torch' in sys.modules, 'sam2' in sys.modules, 'pyvirtualcam' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False False False"
    assert elapsed < 30


def test_devices_command_stays_light():
    """`greencam devices` must not pull in OpenCV, torch or sam2 on Linux (it only reads sysfs)."""
    code = (
        "import sys\nfrom greenscreen_cam.cli import app\n"
        "try:\n    app(['devices'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('cv2', 'torch', 'sam2', 'pyvirtualcam') if m in sys.modules])"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().splitlines()[-1] == "[]"


def test_start_help_has_examples():
    result = runner.invoke(app, ["start", "--help"])
    assert result.exit_code == 0
    assert "greencam start --bbox" in result.output and "--matte-output" in result.output


@pytest.mark.slow
def test_file_to_file_end_to_end(env, tmp_path):
    frames = moving_disc_frames(10)
    src = write_video(tmp_path / "in.mp4", frames)
    out = tmp_path / "out.mp4"
    mattes = tmp_path / "mattes"
    result = start("--source", str(src), "--bbox", "30,25,60,70", "--output", str(out), "--matte-output", str(mattes))
    assert result.exit_code == 0, result.output
    assert "done: 10 frames out of 10" in result.output
    written = read_video(out)
    alphas = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(mattes.glob("*.png"))]
    assert len(written) == 10 == len(alphas) and written[0].shape == (120, 160, 3)
    assert sorted(p.name for p in mattes.iterdir())[0] == "000000.png"
    for img, alpha in zip(written, alphas):
        assert (alpha == 0).any(), "random weights still give a background somewhere"
        bg = cv2.erode((alpha == 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # away from codec ringing
        assert np.abs(img[bg].astype(int) - np.array(KEY_COLOR)).mean() < 6


@pytest.mark.slow
def test_virtual_camera_end_to_end(env, tmp_path, vcam_backend):
    src = write_jpeg_folder(tmp_path / "in", moving_disc_frames(6))
    result = start("--source", str(src), "--bbox", "30,25,60,70", "--virtual-backend", "greencam-test", "--fps", "60")
    assert result.exit_code == 0, result.output
    (cam,) = vcam_backend.instances
    assert len(cam.frames) == 6 and cam.closed == 1 and (cam.width, cam.height) == (160, 120)
    assert "sending to virtual camera /dev/video-test" in result.output


@pytest.mark.slow
def test_matte_matches_official_predictor(env, tmp_path, tiny_checkpoint):
    """start --refine none --matte-output gives the official SAM2VideoPredictor's masks (IoU >= 0.99).

    120 frames in which the subject leaves the frame (the disc moves out after frame ~68); the
    default --smooth is left on: --refine none alone must give the tracker's own probability.
    """
    n = 120
    folder = write_jpeg_folder(tmp_path / "frames", moving_disc_frames(n))
    result = start(
        "--source",
        str(folder),
        "--bbox",
        "30,25,60,70",
        "--refine",
        "none",
        "--lost-after",
        "0",
        "--output",
        str(tmp_path / "o.mp4"),
        "--matte-output",
        str(tmp_path / "m"),
    )
    assert result.exit_code == 0, result.output
    reference = {
        i: (m[0] > 0).numpy()
        for i, m in enumerate(official_logits(tiny_checkpoint, folder, [{"box": [30, 25, 90, 95]}]))
    }
    for i in range(n):
        ours = cv2.imread(str(tmp_path / "m" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE) > 127
        ref = reference[i]
        union = (ours | ref).sum()
        if union == 0:
            continue  # both empty: the subject is gone in both
        assert (ours & ref).sum() / union >= 0.99, f"frame {i}"
    gone = moving_disc_frames(n)[-1]
    assert not (np.abs(gone.astype(int) - [230, 50, 40]).sum(axis=2) < 10).any(), "the subject left the frame"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--bbox", "1,2,3"], 2, "malformed --bbox"),
        (["--bbox", "a,b,c,d"], 2, "malformed --bbox"),
        (["--bbox", "10,10,0,10"], 2, "zero or negative size"),
        (["--bbox", "100,10,100,10"], 2, "outside the 160x120 frame"),
        (["--bbox", "-5,10,20,20"], 2, "outside the 160x120 frame"),
        (["--point", "500,5"], 2, "outside"),
        (["--point", "5"], 2, "malformed --point"),
        (["--negative-point", "5,5"], 2, "needs a --bbox or a --point"),
        (["--bbox", "10,10,20,20", "--auto"], 2, "either --auto or --bbox"),
        (["--bbox", "10,10,20,20", "--grow", "2", "--shrink", "2"], 2, "cannot be used together"),
        (["--bbox", "10,10,20,20", "--color", "#12"], 2, "--color is not a colour"),
        (["--bbox", "10,10,20,20", "--background", "nope.png"], 2, "background file not found"),
        (["--bbox", "10,10,20,20", "--threshold", "2"], 2, "--threshold"),
        (["--bbox", "10,10,20,20", "--resolution", "300"], 2, "--resolution 300 is not supported"),
        (["--bbox", "10,10,20,20", "--model", "huge"], 3, "unknown model 'huge'"),
        (["--bbox", "10,10,20,20", "--checkpoint", "/nope/x.pt"], 3, "checkpoint file not found"),
        (["--bbox", "10,10,20,20", "--max-frames", "0"], 2, "--max-frames must be positive"),
        (["--bbox", "10,10,20,20", "--lost-after", "-1"], 2, "--lost-after must be in [0, 3600]"),
        (["--bbox", "10,10,20,20", "--refine", "magic"], 2, "--refine must be one of auto, none"),
        (["--bbox", "10,10,20,20", "--sync", "maybe"], 2, "--sync must be one of auto, on, off"),
        (["--bbox", "10,10,20,20", "--max-delay", "-5"], 2, "--max-delay must be in [0, 5000] ms"),
        (["--bbox", "10,10,20,20", "--token", "abc"], 2, "--token needs --server"),
        (["--bbox", "10,10,20,20", "--server", "http://127.0.0.1:9"], 2, "--server needs --token"),
        (["--bbox", "10,10,20,20", "--smooth", "1.5"], 2, "--smooth must be in [0, 1)"),
        (["--bbox", "10,10,20,20", "--output", "x.gif"], 5, "unsupported extension"),
    ],
)
def test_bad_inputs_one_line_no_traceback(env, clip, args, code, message, tmp_path):
    path, _ = clip
    result = start("--source", str(path), "--output", str(tmp_path / "out.mp4"), *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(error_lines) == 1


def test_missing_checkpoint_names_download_command(tmp_path, monkeypatch, clip):
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(tmp_path / "empty"))
    result = start("--source", str(clip[0]), "--bbox", "10,10,20,20", "--output", str(tmp_path / "o.mp4"))
    assert result.exit_code == 3 and "greencam download tiny" in result.output


def test_corrupt_checkpoint(tmp_path, clip):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 1000)
    result = start(
        "--source", str(clip[0]), "--bbox", "10,10,20,20", "--checkpoint", str(bad), "--output", str(tmp_path / "o.mp4")
    )
    assert result.exit_code == 3 and "corrupt or truncated" in result.output


@pytest.mark.parametrize(
    "source, message",
    [("nope.mp4", "no such camera index, device, video file"), ("/dev/video42", "does not exist"), ("9", "camera")],
)
def test_bad_sources(env, source, message, tmp_path):
    result = start("--source", source, "--bbox", "1,1,5,5", "--output", str(tmp_path / "out.mp4"))
    assert result.exit_code == 4 and message in result.output and "Traceback" not in result.output


def test_unreadable_video(env, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    result = start("--source", str(bad), "--bbox", "1,1,5,5")
    assert result.exit_code == 4 and "cannot read video" in result.output


class _NoLoopback:
    """Stands in for pyvirtualcam's v4l2 backend on a machine without v4l2loopback."""

    def __init__(self, **kwargs):
        raise RuntimeError("no v4l2 loopback device found at /dev/video[0-99]")


def test_no_virtual_camera_prints_modprobe(env, clip, monkeypatch):
    import pyvirtualcam

    # The same on every host, whether or not it has a v4l2loopback device or OBS.
    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", {"v4l2loopback": _NoLoopback})
    result = start("--source", str(clip[0]), "--bbox", "10,10,20,20")
    assert result.exit_code == 5
    assert "loading SAM 2" not in result.output, "a missing virtual camera is reported before the slow model load"
    assert (
        'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="greencam" exclusive_caps=1'
        in result.output.replace("\n", "")
    )


def test_bad_config_file_via_start(env, tmp_path, clip):
    cfg = tmp_path / "c.toml"
    cfg.write_text("smooth = 'x'\n")
    result = start("--source", str(clip[0]), "--config", str(cfg))
    assert result.exit_code == 2 and "smooth must be a number" in result.output


@pytest.mark.slow
def test_config_file_drives_start(env, tmp_path, clip):
    cfg = tmp_path / "c.toml"
    out = tmp_path / "o.mp4"
    cfg.write_text(
        f'source = "{clip[0]}"\nbbox = "30,25,60,70"\noutputs = ["{out}"]\nmax_frames = 3\nbackground = "#0000ff"\n'
    )
    result = start("--config", str(cfg))
    assert result.exit_code == 0, result.output
    frames = read_video(out)
    assert len(frames) == 3


@pytest.mark.slow
def test_auto_with_no_face_sends_the_key_and_says_so(env, clip, tmp_path):
    out = tmp_path / "o.mp4"
    result = start("--source", str(clip[0]), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.count("no face found yet") == 1
    # ...and closes with a warning, still exit 0: the file is all key colour
    assert result.output.strip().splitlines()[-1].startswith("greencam: warning: no subject was found in any frame")
    frames = read_video(out)
    assert len(frames) == 12 and all(np.abs(f.astype(int) - np.array(KEY_COLOR)).mean() < 3 for f in frames)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_signal_exits_cleanly(checkpoint_dir, tmp_path, signum):
    """An offline `greencam start` gets Ctrl-C or SIGTERM: exit 130 / 143, one line, no traceback, no file."""
    frames = moving_disc_frames(4)
    folder = write_jpeg_folder(tmp_path / "f", frames * 100)  # 400 frames: far longer than we wait
    out = tmp_path / "o.mp4"
    env = dict(
        os.environ, GREENCAM_CHECKPOINTS=str(checkpoint_dir), PYTHONUNBUFFERED="1", XDG_CONFIG_HOME="/nonexistent"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "greenscreen_cam",
            "start",
            "--source",
            str(folder),
            "--bbox",
            "30,25,60,70",
            "--device",
            "cpu",
            "--resolution",
            "256",
            "--output",
            str(out),
            "--matte-output",
            str(tmp_path / "m"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(tmp_path.glob(".m.greencam-tmp-*/*.png"))) < 3:
            time.sleep(0.2)
        assert len(list(tmp_path.glob(".m.greencam-tmp-*/*.png"))) >= 3, "greencam did not start producing frames"
        sent = time.time()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
        stopped_in = time.time() - sent
    finally:
        proc.kill()
    # An offline run that was interrupted did not complete: 128 + the signal, one line, no output, no temp files.
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "done:" not in stderr
    assert stopped_in < 5
    [line] = [x for x in stderr.splitlines() if "interrupted after" in x]
    assert line.endswith(f"of 400 frames; {out} and {tmp_path / 'm'}/ not written"), line
    assert not out.exists() and not (tmp_path / "m").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.slow
def test_bench_command_runs_small(env):
    result = runner.invoke(
        app,
        [
            "bench",
            "--synthetic",
            "--random-weights",
            "--resolution",
            "256",
            "--device",
            "cpu",
            "--frames",
            "3",
            "--no-reference",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.output)
    assert data["total_ms"] > 0 and set(data["stages_ms"]) >= {"image_encoder", "memory_attention", "mask_decoder"}
    torch.set_num_threads(torch.get_num_threads())


def test_bench_needs_a_source():
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 2 and "give a SOURCE" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("greencam ")
