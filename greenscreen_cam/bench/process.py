"""Whole processes: ``greencam start`` on a frame folder against the official predictor's script."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenscreen_cam.bench.common import load_frames, machine, parse_box, synthetic_frames, write_jpeg_folder
from greenscreen_cam.core import percentile
from greenscreen_cam.errors import ConfigError

if TYPE_CHECKING:
    from greenscreen_cam.config import ModelSettings

OFFICIAL_SCRIPT = """
import sys, warnings
import torch
from sam2.build_sam import build_sam2_video_predictor

folder, ckpt, config, res, device, box = sys.argv[1:7]
x, y, w, h = map(float, box.split(","))
predictor = build_sam2_video_predictor(config, ckpt, device=device, hydra_overrides_extra=[f"++model.image_size={res}"])
with warnings.catch_warnings(), torch.inference_mode():
    warnings.simplefilter("ignore")
    state = predictor.init_state(folder)
    predictor.add_new_points_or_box(state, 0, 1, box=[x, y, x + w, y + h])
    masks = [(m[0, 0] > 0).cpu().numpy() for _, _, m in predictor.propagate_in_video(state)]
print(len(masks))
"""
"""The official way to track a folder of frames: build, ``init_state``, box on frame 0, propagate.

Each frame's mask is thresholded into a numpy array (what any use of the masks needs);
nothing is composited or encoded, so greencam's process does strictly more work.
"""


def _run_timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Run ``cmd``; return ``(wall seconds, peak RSS MiB of the child, stderr tail)``."""
    import subprocess

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise ConfigError(f"benchmark run failed (exit {proc.returncode}): {' '.join(cmd[:4])} ...: {stderr[-400:]}")
    return wall, usage.ru_maxrss / 1024.0, stderr[-400:]


def bench_process(
    settings: ModelSettings,
    *,
    source: str | None,
    frames: int = 40,
    bbox: str | None = None,
    repeats: int = 3,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``greencam start --source FRAMES --output out.mp4`` against the official predictor's script, whole processes.

    Both run on the same ``frames`` JPEG frames (decoded once from ``source``, or
    synthetic) with the same seeded random checkpoint, one after the other,
    ``repeats`` times, start-up included; the ratio is of the medians.

    Args:
        source: Video file or image folder, or None for synthetic 1280x720 frames.
        frames: Frames to track.
        settings: Model name, SAM 2 input size and the device both processes use (the checkpoint is
            always seeded random weights).
        bbox: Prompt box ``x,y,w,h`` (default: the centre half of the frame).
        repeats: Runs of each process.
        env: Extra environment for the greencam process only (e.g. ``{"OMP_WAIT_POLICY": "ACTIVE"}``).
        extra_args: Extra ``greencam start`` arguments.

    Returns:
        Per-run wall times and peak RSS of both processes, their medians,
        ``ms_per_frame`` of each (median wall / frames) and ``ratio_vs_official``.
    """
    import sys

    from greenscreen_cam.track import models

    spec, device, resolution = models.choose(settings.model, settings.device, settings.resolution)
    model = spec.name
    imgs = synthetic_frames(frames) if source is None else load_frames(source, frames)
    h, w = imgs[0].shape[:2]
    box = ",".join(f"{v:g}" for v in parse_box(bbox, w, h))
    runs: dict[str, list[tuple[float, float]]] = {"greencam": [], "official": []}
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tmpdir = Path(tmp)
        folder = tmpdir / "frames"
        write_jpeg_folder(folder, imgs)
        ckpt = models.save_random_checkpoint(spec, tmpdir / spec.filename, seed=0)
        out = tmpdir / "out.mp4"
        greencam = [sys.executable, "-m", "greenscreen_cam", "start", "--source", str(folder)]
        greencam += ["--output", str(out), "--max-frames", str(len(imgs)), "--model", model]
        greencam += ["--checkpoint", str(ckpt), "--resolution", str(resolution), "--device", device, "--bbox", box]
        greencam += list(extra_args)
        official = [sys.executable, "-c", OFFICIAL_SCRIPT, str(folder), str(ckpt), spec.config, str(resolution)]
        official += [device, box]
        base_env = dict(os.environ)
        gc_env = {**base_env, **(env or {})}
        for _ in range(max(1, repeats)):
            out.unlink(missing_ok=True)
            runs["greencam"].append(_run_timed(greencam, gc_env, tmpdir)[:2])
            runs["official"].append(_run_timed(official, base_env, tmpdir)[:2])
    med = {k: percentile([t for t, _ in v], 50) for k, v in runs.items()}
    rss = {k: percentile([r for _, r in v], 50) for k, v in runs.items()}
    return {
        "kind": "process",
        "model": spec.name,
        "resolution": resolution,
        "device": device,
        "frames": len(imgs),
        "frame_size": f"{w}x{h}",
        "source": source or "synthetic",
        "repeats": max(1, repeats),
        "command": " ".join(greencam[3:]),
        "env": env or {},
        "greencam_s": [t for t, _ in runs["greencam"]],
        "official_s": [t for t, _ in runs["official"]],
        "greencam_median_s": med["greencam"],
        "official_median_s": med["official"],
        "greencam_ms_per_frame": med["greencam"] * 1000.0 / len(imgs),
        "official_ms_per_frame": med["official"] * 1000.0 / len(imgs),
        "ratio_vs_official": med["greencam"] / med["official"],
        # the fastest run of each: the least disturbed by other processes on a shared machine
        "ratio_of_fastest": min(t for t, _ in runs["greencam"]) / min(t for t, _ in runs["official"]),
        "ratios_per_repeat": [g / o for (g, _), (o, _) in zip(runs["greencam"], runs["official"], strict=True)],
        "greencam_peak_rss_mb": rss["greencam"],
        "official_peak_rss_mb": rss["official"],
        "machine": machine(),
    }
