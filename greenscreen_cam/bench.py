"""Benchmarks behind ``greencam bench`` (medians, never single timings).

- :func:`bench_tracker`: per-stage median ms/frame of the streaming tracker and,
  in the same run on the same frames, the official ``SAM2VideoPredictor``.
- ``e2e=True``: the whole offline pipeline (decode, track, composite, encode)
  against the bare tracker on the same frames.
- :func:`bench_compositor`: the compositor's default path at 1280x720.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from greenscreen_cam.errors import ConfigError


def synthetic_frames(n: int, width: int = 1280, height: int = 720, seed: int = 0) -> list[np.ndarray]:
    """A textured background with a moving, slowly deforming ellipse (RGB uint8)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (18, 32, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(n):
        img = base.copy()
        cx = int(width * (0.35 + 0.3 * (i / max(1, n - 1))))
        cv2.ellipse(img, (cx, height // 2), (width // 8, height // 3 + (i % 5)), 0, 0, 360, (230, 80, 40), -1)
        frames.append(img)
    return frames


def load_frames(source: str, n: int) -> list[np.ndarray]:
    from greenscreen_cam.sources import ImageFolderSource, VideoFileSource

    path = Path(source)
    src = ImageFolderSource(path) if path.is_dir() else VideoFileSource(path)
    frames: list[np.ndarray] = []
    try:
        while len(frames) < n and (f := src.read()) is not None:
            frames.append(f.image)
    finally:
        src.close()
    if len(frames) < 2:
        raise ConfigError(f"{source} has fewer than 2 frames")
    return frames


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _median_ms(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_tracker(
    *,
    source: str | None,
    frames: int,
    model: str,
    checkpoint: str | None,
    random_weights: bool,
    resolution: int | None,
    device: str,
    bbox: str | None,
    reference: bool,
    e2e: bool,
    compile_model: bool | str = False,
    warmup: int = 3,
) -> dict[str, Any]:
    """Per-stage medians of the streaming tracker and, on the same frames, the official predictor.

    Args:
        compile_model: False, True (``torch.compile`` of the image encoder, default mode) or a
            ``torch.compile`` mode such as ``"reduce-overhead"`` (CUDA graphs).
        warmup: Tracked frames before the measured pass (kernels, allocator, compilation).

    Returns:
        ``stages_ms`` (median ms per stage), ``total_ms`` and ``greencam_ms_per_frame`` (median
        per frame), and with ``reference``: ``official_ms_per_frame`` (the official
        ``propagate_in_video`` step) and ``ratio_vs_official`` (greencam / official).
    """
    import torch

    from greenscreen_cam import models
    from greenscreen_cam.segmenter import STAGES, Prompt

    imgs = synthetic_frames(frames) if source is None else load_frames(source, frames)
    h, w = imgs[0].shape[:2]
    box = _parse_box(bbox, w, h)
    prompt = Prompt(box=box)  # type: ignore[arg-type]
    prompt.validate(w, h)
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tmpdir = Path(tmp)
        tracker, spec, dev, res, ckpt = _pipeline_setup(
            model, checkpoint, random_weights, resolution, device, tmpdir, profile=True, compile_model=compile_model
        )
        # The official predictor reads a JPEG folder: both sides run on the very same decoded frames.
        folder = tmpdir / "frames"
        folder.mkdir()
        for i, img in enumerate(imgs):
            cv2.imwrite(
                str(folder / f"{i:05d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
        imgs = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]

        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        # warm-up pass (kernels, allocator, compile), then the measured pass
        tracker.prompt(imgs[0], prompt)
        for i in range(max(0, warmup)):
            tracker.track(imgs[1 + i % (len(imgs) - 1)])
        tracker.timings.clear()
        totals: list[float] = []
        for i, img in enumerate(imgs):
            start = time.perf_counter()
            if i == 0:
                tracker.prompt(img, prompt)
            else:
                tracker.track(img)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:
                totals.append((time.perf_counter() - start) * 1000.0)
        stages = {name: _median_ms(tracker.timings[name][1:]) for name in STAGES}
        result: dict[str, Any] = {
            "kind": "tracker",
            "model": spec.name,
            "resolution": res,
            "device": dev,
            "dtype": "bf16 autocast" if models.autocast_dtype(dev) is not None else "float32",
            "compiled": compile_model,
            "frames": len(imgs),
            "frame_size": f"{w}x{h}",
            "source": source or "synthetic",
            "weights": "random (seeded)" if random_weights else str(ckpt),
            "stages_ms": stages,
            "total_ms": _median_ms(totals),
            "greencam_ms_per_frame": _median_ms(totals),
            "stored_entries": list(tracker.stored_entries()),
            "machine": machine(),
        }
        if dev.startswith("cuda"):
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_rss_mb"] = _peak_rss_mb()

        if e2e:
            result.update(_bench_pipeline(folder, tracker, prompt, result["total_ms"], tmpdir))
            result["kind"] = "e2e"
        if reference:
            result["reference"] = _bench_official(spec, ckpt, dev, res, folder, box, len(imgs))
            ref = result["reference"]["propagate_ms"]
            result["official_ms_per_frame"] = ref
            result["ratio_vs_official"] = result["total_ms"] / ref if ref else None
            with_load = result["reference"]["per_frame_with_loading_ms"]
            result["ratio_vs_official_with_loading"] = (result["total_ms"]) / with_load if with_load else None
        del tracker
    return result


def _bench_official(
    spec: Any, ckpt: Path, dev: str, res: int, folder: Path, box: tuple[float, ...], n: int
) -> dict[str, Any]:
    import contextlib
    import warnings

    import torch
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        spec.config, str(ckpt), device=dev, hydra_overrides_extra=[f"++model.image_size={res}"]
    )
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.startswith("cuda") else contextlib.nullcontext()
    x, y, bw, bh = box
    with warnings.catch_warnings(), amp, open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        warnings.simplefilter("ignore")
        # warm-up on a short prefix, then the measured run
        state = predictor.init_state(str(folder))
        predictor.add_new_points_or_box(state, 0, 1, box=[x, y, x + bw, y + bh])
        for i, _ in enumerate(predictor.propagate_in_video(state)):
            if i >= 3:
                break
        t0 = time.perf_counter()
        state = predictor.init_state(str(folder))
        load_s = time.perf_counter() - t0
        predictor.add_new_points_or_box(state, 0, 1, box=[x, y, x + bw, y + bh])
        times = []
        last = time.perf_counter()
        for i, _ in enumerate(predictor.propagate_in_video(state)):
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            now = time.perf_counter()
            if i > 0:
                times.append((now - last) * 1000.0)
            last = now
    propagate = _median_ms(times)
    return {
        "propagate_ms": propagate,
        "loading_ms_per_frame": load_s * 1000.0 / n,
        "per_frame_with_loading_ms": propagate + load_s * 1000.0 / n,
    }


def _bench_pipeline(folder: Path, tracker: Any, prompt: Any, bare_ms: float, tmpdir: Path) -> dict[str, Any]:
    """The offline pipeline on the same frames, into a virtual-camera-like sink and into an mp4 file."""
    from greenscreen_cam.compositor import Compositor, CompositorSettings
    from greenscreen_cam.pipeline import Pipeline
    from greenscreen_cam.sinks import VideoFileSink
    from greenscreen_cam.sources import ImageFolderSource

    out: dict[str, Any] = {"bare_tracker_ms": bare_ms}
    for name in ("vcam", "mp4"):
        src = ImageFolderSource(folder)
        sink: Any = (
            _CountingSink() if name == "vcam" else VideoFileSink(tmpdir / "e2e.mp4", src.width, src.height, src.fps)
        )
        try:
            pipe = Pipeline(src, tracker, Compositor(CompositorSettings(smooth=0.3)), sink, prompt=prompt)
            start = time.perf_counter()
            summary = pipe.run()
            wall = time.perf_counter() - start
        finally:
            sink.close()
        per_frame = wall * 1000.0 / max(1, summary["frames_out"])
        out[f"e2e_{name}_ms_per_frame"] = per_frame
        out[f"e2e_{name}_track_ms"] = _median_ms([t * 1000.0 for t in pipe.stats.track_times][1:])
        out[f"e2e_{name}_compose_ms"] = _median_ms([t * 1000.0 for t in pipe.stats.compose_times])
        out[f"pipeline_overhead_{name}"] = per_frame / bare_ms - 1.0 if bare_ms else None
    return out


class _CountingSink:
    """Counts frames as they arrive: the 'external count' the status line is checked against."""

    def __init__(self) -> None:
        self.count = 0
        self.times: list[float] = []

    def send(self, frame: np.ndarray) -> None:
        self.count += 1
        self.times.append(time.perf_counter())

    def close(self) -> None:
        pass


def _pipeline_setup(
    model: str,
    checkpoint: str | None,
    random_weights: bool,
    resolution: int | None,
    device: str,
    tmpdir: Path,
    *,
    profile: bool = False,
    compile_model: bool | str = False,
) -> tuple[Any, Any, str, int, Path]:
    """Load the tracker a benchmark runs: ``(tracker, spec, device, resolution, checkpoint path)``.

    The same checks and loading as ``greencam start`` (:mod:`greenscreen_cam.app`); with
    ``random_weights`` a seeded random checkpoint is written into ``tmpdir`` first.
    """
    from greenscreen_cam.app import load_tracker, resolve_model
    from greenscreen_cam.config import ModelSettings

    wanted = ModelSettings(model=model, checkpoint=checkpoint, resolution=resolution, device=device)
    choice = resolve_model(wanted, random_weights=tmpdir if random_weights else None)
    tracker = load_tracker(choice, profile=profile, compile_mode=compile_model)
    return tracker, choice.spec, choice.device, choice.resolution, choice.checkpoint


def bench_live(
    *,
    source: str,
    seconds: float,
    model: str,
    checkpoint: str | None,
    random_weights: bool,
    resolution: int | None,
    device: str,
    bbox: str | None,
    flow: bool = False,
    sync: str = "auto",
    bare_frames: int = 0,
) -> dict[str, Any]:
    """Run the live loop on a file paced at its own fps (like a camera) and compare the stats to an external count.

    With ``bare_frames`` > 0 the same tracker first runs that many frames of the clip
    alone in the same process (same thread policy), giving ``bare_tracker_fps`` and
    ``live_vs_bare`` (tracker rate in the loop / bare rate).
    """
    from greenscreen_cam.compositor import Compositor, CompositorSettings
    from greenscreen_cam.pipeline import Pipeline
    from greenscreen_cam.segmenter import Prompt
    from greenscreen_cam.sources import open_source

    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tracker, spec, dev, res, _ = _pipeline_setup(model, checkpoint, random_weights, resolution, device, Path(tmp))
        bare = _bare_rate(tracker, source, bare_frames, bbox) if bare_frames > 0 else None
        tracker.reset()
        src = open_source(source, realtime=True)
        box = _parse_box(bbox, src.width, src.height)
        sink = _CountingSink()
        pipe = Pipeline(
            src,
            tracker,
            Compositor(CompositorSettings(smooth=0.3), device=dev if dev.startswith("cuda") else None),
            sink,
            prompt=Prompt(box=box),  # type: ignore[arg-type]
            flow=flow,
            sync=sync,
            max_frames=max(2, int(seconds * src.fps)),
        )
        summary = pipe.run()
        src.close()
    gaps = np.diff(sink.times) * 1000.0 if len(sink.times) > 1 else np.zeros(1)
    return {
        "kind": "live",
        "model": spec.name,
        "resolution": res,
        "device": dev,
        "source": source,
        "source_fps": src.fps,
        "frame_size": f"{src.width}x{src.height}",
        "flow": flow,
        "sync": sync,
        "status": {
            k: summary[k]
            for k in (
                "frames_in",
                "frames_out",
                "tracked",
                "dropped",
                "input_fps",
                "output_fps",
                "tracker_fps",
                "latency_p50_ms",
                "latency_p95_ms",
                "delay_p50_ms",
                "delay_p95_ms",
                "own_mask_share",
                "filler_frames",
                "sync",
                "seconds",
            )
        },
        "external_frames_written": sink.count,
        "external_output_fps": (sink.count - 1) / (sink.times[-1] - sink.times[0]) if sink.count > 1 else 0.0,
        "median_gap_ms": float(np.median(gaps)),
        "p95_gap_ms": float(np.percentile(gaps, 95)),
        "bare_tracker_fps": bare,
        "live_vs_bare": summary["tracker_fps"] / bare if bare else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "opencv_threads": cv2.getNumThreads(),
        "machine": machine(),
    }


def _bare_rate(tracker: Any, source: str, n: int, bbox: str | None) -> float:
    """Frames per second of ``tracker`` alone on the first ``n + 1`` frames of ``source`` (median step)."""
    import torch

    from greenscreen_cam.segmenter import Prompt

    imgs = load_frames(source, n + 2)
    h, w = imgs[0].shape[:2]
    tracker.prompt(imgs[0], Prompt(box=_parse_box(bbox, w, h)))  # type: ignore[arg-type]
    tracker.track(imgs[1])
    times = []
    for img in imgs[2:]:
        start = time.perf_counter()
        tracker.track(img)
        if tracker.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1.0 / float(statistics.median(times))


def bench_soak(
    *,
    source: str | None,
    frames: int,
    model: str,
    checkpoint: str | None,
    random_weights: bool,
    resolution: int | None,
    device: str,
    size: int = 96,
) -> dict[str, Any]:
    """Track ``frames`` frames of a looped clip (scaled down to ``size`` px wide) and sample the process RSS."""
    from greenscreen_cam.compositor import Compositor, CompositorSettings
    from greenscreen_cam.segmenter import Prompt

    clip = synthetic_frames(30) if source is None else load_frames(source, 60)
    h = max(2, round(clip[0].shape[0] * size / clip[0].shape[1]))
    clip = [cv2.resize(f, (size, h), interpolation=cv2.INTER_AREA) for f in clip]
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tracker, spec, dev, res, _ = _pipeline_setup(model, checkpoint, random_weights, resolution, device, Path(tmp))
        comp = Compositor(CompositorSettings(smooth=0.3))
        tracker.prompt(clip[0], Prompt(box=(size / 4, h / 4, size / 2, h / 2)))
        samples: list[tuple[int, float]] = []
        start = time.perf_counter()
        for i in range(1, frames):
            frame = clip[i % len(clip)]
            result = tracker.track(frame)
            comp.compose(frame, result.low_res_numpy())
            if i % 100 == 0:
                samples.append((i, _rss_mb()))
        elapsed = time.perf_counter() - start
    warm = next((rss for i, rss in samples if i >= 300), samples[0][1] if samples else 0.0)
    peak_after = max((rss for i, rss in samples if i >= 300), default=warm)
    return {
        "kind": "soak",
        "model": spec.name,
        "resolution": res,
        "device": dev,
        "frames": frames,
        "frame_size": f"{size}x{h}",
        "seconds": elapsed,
        "rss_samples_mb": samples,
        "rss_at_300_mb": warm,
        "rss_max_after_300_mb": peak_after,
        "rss_growth": peak_after / warm - 1.0 if warm else 0.0,
        "stored_entries": list(tracker.stored_entries()),
        "machine": machine(),
    }


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return _peak_rss_mb()


def _parse_box(bbox: str | None, width: int, height: int) -> tuple[float, ...]:
    from greenscreen_cam.prompt import default_box, parse_numbers

    return parse_numbers(bbox, 4, "--bbox") if bbox else default_box(width, height)


def bench_compositor(frames: int, width: int = 1280, height: int = 720, *, device: str | None = None) -> dict[str, Any]:
    """Median and p95 ms per frame of the compositor's paths at ``width x height``.

    With ``device`` (e.g. ``"cuda"``) the torch path on that device is timed too, and
    on CUDA whether it waits for kernels other work queued on the GPU
    (:func:`_compositor_overlap`).
    """
    from greenscreen_cam.compositor import Compositor, CompositorSettings

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:64, 0:64]
    results: dict[str, Any] = {
        "kind": "compositor",
        "frame_size": f"{width}x{height}",
        "frames": frames,
        "machine": machine(),
    }
    for name, settings in [
        ("default (smooth 0.3)", CompositorSettings(smooth=0.3)),
        ("no smoothing", CompositorSettings(smooth=0.0)),
        ("despill", CompositorSettings(smooth=0.3, despill=True)),
        ("refine none", CompositorSettings(refine="none", smooth=0.0)),
    ] + ([(f"torch on {device}", CompositorSettings(smooth=0.3))] if device else []):
        comp = Compositor(settings, device=device if name.startswith("torch") else None)
        times = []
        for i in range(frames + 10):
            logits = (22.0 - np.hypot(yy - 32 - (i % 3), xx - 32)).astype(np.float32)
            start = time.perf_counter()
            comp.compose(frame, logits)
            if i >= 10:
                times.append((time.perf_counter() - start) * 1000.0)
        results[name] = {"median_ms": _median_ms(times), "p95_ms": float(np.percentile(times, 95))}
    if device is not None and device.startswith("cuda"):
        results["gpu_overlap"] = _compositor_overlap(device, frame, (yy, xx))
    return results


def _compositor_overlap(device: str, frame: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Does the torch compositor wait for GPU work queued by someone else (the tracker)?

    Queues about 50 ms of matrix products on the current stream without waiting,
    then times one ``compose`` right away. A compositor on its own stream with no
    hidden synchronisation returns in about its usual time; one that shares the
    stream (or synchronises the device) returns only after the queued work.
    """
    import torch

    from greenscreen_cam.compositor import Compositor, CompositorSettings

    yy, xx = grid
    logits = (22.0 - np.hypot(yy - 32, xx - 32)).astype(np.float32)
    comp = Compositor(CompositorSettings(smooth=0.3), device=device)
    a = torch.randn(4096, 4096, device=device)
    for _ in range(5):
        comp.compose(frame, logits)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    busy_ms = (time.perf_counter() - start) * 100.0  # per product
    reps = max(1, int(50.0 / max(busy_ms, 1e-3)))
    alone, queued = [], []
    for _ in range(10):
        torch.cuda.synchronize()
        start = time.perf_counter()
        comp.compose(frame, logits)
        alone.append((time.perf_counter() - start) * 1000.0)
        for _ in range(reps):
            a @ a
        start = time.perf_counter()
        comp.compose(frame, logits)
        queued.append((time.perf_counter() - start) * 1000.0)
        torch.cuda.synchronize()
    return {
        "queued_gpu_work_ms": busy_ms * reps,
        "compose_ms_alone": _median_ms(alone),
        "compose_ms_with_queued_work": _median_ms(queued),
    }


def print_result(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    if result["kind"] in ("live", "soak"):
        import json

        console.print_json(json.dumps(result))
        return
    if result["kind"] == "compositor":
        table = Table(title=f"compositor, {result['frame_size']}, {result['frames']} frames")
        table.add_column("path")
        table.add_column("median ms")
        table.add_column("p95 ms")
        for key, value in result.items():
            if isinstance(value, dict) and "median_ms" in value:
                table.add_row(key, f"{value['median_ms']:.2f}", f"{value['p95_ms']:.2f}")
        console.print(table)
        return
    title = (
        f"{result['model']} @ {result['resolution']} on {result['device']} ({result['dtype']}"
        f"{', compiled' if result['compiled'] else ''}), {result['frames']} frames {result['frame_size']}"
    )
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("median ms/frame", justify="right")
    for stage, ms in result["stages_ms"].items():
        table.add_row(stage, f"{ms:.1f}")
    table.add_row("[bold]total[/]", f"[bold]{result['total_ms']:.1f}[/]")
    console.print(table)
    if "peak_gpu_mb" in result:
        console.print(f"peak GPU memory: {result['peak_gpu_mb']:.0f} MiB")
    console.print(
        f"peak process RSS: {result['peak_rss_mb']:.0f} MiB; stored memory entries: {result['stored_entries']}"
    )
    if "reference" in result:
        ref = result["reference"]
        console.print(
            f"official SAM2VideoPredictor: propagate {ref['propagate_ms']:.1f} ms/frame "
            f"(+{ref['loading_ms_per_frame']:.1f} ms/frame loading) -> ratio {result['ratio_vs_official']:.3f} "
            f"(with loading {result['ratio_vs_official_with_loading']:.3f})"
        )
    for name, label in (("vcam", "to a virtual camera"), ("mp4", "to an mp4 file")):
        if f"e2e_{name}_ms_per_frame" in result:
            console.print(
                f"end to end {label}: {result[f'e2e_{name}_ms_per_frame']:.1f} ms/frame "
                f"(track {result[f'e2e_{name}_track_ms']:.1f}, composite {result[f'e2e_{name}_compose_ms']:.1f}) "
                f"vs bare tracker {result['bare_tracker_ms']:.1f} -> overhead "
                f"{100 * result[f'pipeline_overhead_{name}']:.1f}%"
            )


# --------------------------------------------------------------------------- whole processes

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
    *,
    source: str | None,
    frames: int = 40,
    model: str = "tiny",
    resolution: int = 256,
    device: str = "cpu",
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
        model: Registry model name.
        resolution: SAM 2 input size.
        device: Device both processes use.
        bbox: Prompt box ``x,y,w,h`` (default: the centre half of the frame).
        repeats: Runs of each process.
        env: Extra environment for the greencam process only (e.g. ``{"OMP_WAIT_POLICY": "ACTIVE"}``).
        extra_args: Extra ``greencam start`` arguments.

    Returns:
        Per-run wall times and peak RSS of both processes, their medians,
        ``ms_per_frame`` of each (median wall / frames) and ``ratio_vs_official``.
    """
    import sys

    from greenscreen_cam import models

    imgs = synthetic_frames(frames) if source is None else load_frames(source, frames)
    h, w = imgs[0].shape[:2]
    box = ",".join(f"{v:g}" for v in _parse_box(bbox, w, h))
    spec = models.get_spec(model)
    runs: dict[str, list[tuple[float, float]]] = {"greencam": [], "official": []}
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tmpdir = Path(tmp)
        folder = tmpdir / "frames"
        folder.mkdir()
        for i, img in enumerate(imgs):
            cv2.imwrite(
                str(folder / f"{i:05d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
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
    med = {k: float(statistics.median(t for t, _ in v)) for k, v in runs.items()}
    rss = {k: float(statistics.median(r for _, r in v)) for k, v in runs.items()}
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


# --------------------------------------------------------------------------- the GPU suite (make bench-gpu)

SUITE_MODELS = ("tiny", "small", "base-plus", "large")


def versions() -> dict[str, Any]:
    """Device name and the versions a result depends on."""
    import importlib.metadata

    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        info["sam2"] = importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        info["sam2"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return info


def make_clip(path: Path, width: int, height: int, fps: float, frames: int, source: str | None) -> Path:
    """Write an mp4 of ``frames`` frames at ``width x height`` and ``fps``: ``source`` resized, or synthetic."""
    imgs = load_frames(source, frames) if source else synthetic_frames(frames, width, height)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ConfigError(f"cannot write the benchmark clip {path}")
    try:
        for i in range(frames):
            img = imgs[i % len(imgs)]
            if img.shape[:2] != (height, width):
                img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def bench_suite(
    *,
    device: str = "cuda",
    out_dir: Path = Path("bench-results"),
    small: bool = False,
    clip: str | None = None,
    models_to_run: tuple[str, ...] = SUITE_MODELS,
    budget_s: float = 360.0,
) -> dict[str, Any]:
    """Everything ``make bench-gpu`` records, in one go, into ``out_dir`` (JSON + a markdown table).

    On CUDA: the bare tracker for each model at 512 and 1024 px, eager; ``tiny`` also with
    ``torch.compile`` (default mode) and with CUDA graphs (``reduce-overhead``) and against
    the official predictor; the live loop on a 720p and a 1080p clip at 30 fps (tiny @ 1024);
    the end-to-end offline pipeline at 720p; the compositor's OpenCV and torch paths and
    whether the torch path waits for queued GPU work; and ``greencam serve``'s batched
    worker step when :mod:`greenscreen_cam.link.bench` is present. Weights are seeded random
    (speed does not depend on their values), so nothing is downloaded.

    ``small`` runs the same steps with tiny settings (tiny @ 256, a few frames, 1 s clips)
    so that the suite can be exercised on a CPU in a test. Steps that fail are recorded
    under ``errors`` and the suite goes on; once ``budget_s`` seconds have passed, the
    optional steps (compiled runs, larger models) are skipped and listed under ``skipped``.

    Returns:
        The results dict that was written to ``out_dir/bench-<device>-<time>.json``.
    """
    import contextlib
    import importlib
    import traceback

    from greenscreen_cam import models

    t_start = time.perf_counter()
    dev = models.resolve_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    result: dict[str, Any] = {
        "kind": "suite",
        "device": dev,
        "small": small,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "versions": versions(),
        "machine": machine(),
        "tracker": [],
        "live": [],
        "e2e": [],
        "compositor": None,
        "serve_step": [],
        "errors": [],
        "skipped": [],
        "step_seconds": {},
    }
    if clip is None:
        default = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos" / "default_juggle.mp4"
        clip = str(default) if default.is_file() else None
    resolutions: tuple[int, ...]
    if small:
        resolutions, frames, live_s = (256,), 3, 1.0
        sizes = {"720p": (320, 180), "1080p": (480, 270)}
        models_to_run = models_to_run[:1]
        compile_modes: tuple[bool | str, ...] = ()
    else:
        resolutions, frames, live_s = (512, 1024), 60, 10.0
        sizes = {"720p": (1280, 720), "1080p": (1920, 1080)}
        compile_modes = (True, "reduce-overhead")

    def over_budget() -> bool:
        return time.perf_counter() - t_start > budget_s

    def step(name: str, fn: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (a benchmark step that fails is recorded, the rest goes on)
            result["errors"].append(
                {"step": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
            )
            return None
        finally:
            result["step_seconds"][name] = round(time.perf_counter() - began, 1)

    with tempfile.TemporaryDirectory(prefix="greencam-suite-") as tmp:
        tmpdir = Path(tmp)
        clips = {
            label: make_clip(tmpdir / f"{label}.mp4", w, h, 30.0, int(live_s * 30) + 2, clip)
            for label, (w, h) in sizes.items()
        }
        ckpts: dict[str, Path] = {}

        def checkpoint(name: str) -> Path:
            if name not in ckpts:
                spec = models.get_spec(name)
                ckpts[name] = models.save_random_checkpoint(spec, tmpdir / spec.filename, seed=0)
            return ckpts[name]

        def run_trackers(plan: list[tuple[str, int, bool | str]]) -> None:
            for name, res, mode in plan:
                run_tracker(name, res, mode)

        def run_tracker(name: str, res: int, mode: bool | str) -> None:
            label = f"{name}@{res} {'eager' if mode is False else ('compile' if mode is True else mode)}"
            if over_budget() and (mode is not False or name != "tiny"):
                result["skipped"].append(label)
                return
            r = step(
                label,
                lambda name=name, res=res, mode=mode: bench_tracker(
                    source=str(clips["720p"]),
                    frames=frames,
                    model=name,
                    checkpoint=str(checkpoint(name)),
                    random_weights=False,
                    resolution=res,
                    device=dev,
                    bbox=None,
                    reference=(name == "tiny" and mode is False and not small),
                    e2e=False,
                    compile_model=mode,
                    warmup=1 if small else 25,
                ),
            )
            if r is not None:
                r.pop("machine", None)
                r["label"] = label
                result["tracker"].append(r)
            _free_device_memory()

        # 1. the bare tracker, eager: every model at every size (compiled runs come last: slow to build)
        run_trackers([(name, res, False) for name in models_to_run for res in resolutions])

        # 2. the live loop at 30 fps and the offline pipeline, tiny at the device's default size
        live_res = 256 if small else 1024
        tiny: dict[str, Any] = dict(
            model="tiny",
            checkpoint=str(checkpoint("tiny")),
            random_weights=False,
            resolution=live_res,
            device=dev,
            bbox=None,
        )
        for label, path in clips.items():
            r = step(
                f"live {label}",
                lambda path=path: bench_live(source=str(path), seconds=live_s, bare_frames=1 if small else 30, **tiny),
            )
            if r is not None:
                r.pop("machine", None)
                r["label"] = f"live {label}"
                result["live"].append(r)
            _free_device_memory()
        r = step(
            "e2e 720p",
            lambda: bench_tracker(
                source=str(clips["720p"]),
                frames=frames,
                reference=False,
                e2e=True,
                warmup=1 if small else 25,
                **tiny,
            ),
        )
        if r is not None:
            r.pop("machine", None)
            result["e2e"].append(r)
        _free_device_memory()

        # 3. the compositor (OpenCV path, and the torch path on a GPU)
        comp_dev = dev if dev.startswith("cuda") else None
        r = step("compositor", lambda: bench_compositor(10 if small else 300, device=comp_dev))
        if r is not None:
            r.pop("machine", None)
            result["compositor"] = r

        # 4. greencam serve's worker step (batched sessions), when the link package has its bench
        link_bench: Any = None
        with contextlib.suppress(ImportError):
            link_bench = importlib.import_module("greenscreen_cam.link.bench")
        if link_bench is None or not hasattr(link_bench, "bench_step"):
            result["skipped"].append("serve step (greenscreen_cam.link.bench not present)")
        else:
            net = step(
                "serve model",
                lambda: models.load_model(models.get_spec("tiny"), checkpoint("tiny"), device=dev, resolution=live_res),
            )
            for sessions in (1,) if small else (1, 4, 8):
                if net is None or over_budget():
                    result["skipped"].append(f"serve step x{sessions}")
                    continue
                r = step(
                    f"serve step x{sessions}",
                    lambda sessions=sessions: link_bench.bench_step(
                        net, sessions, steps=1 if small else 20, warmup=1 if small else None
                    ),
                )
                if r is not None:
                    result["serve_step"].append(r)
            del net
            _free_device_memory()

        # 5. tiny compiled (Inductor) and with CUDA graphs, while the time budget lasts
        run_trackers([("tiny", res, mode) for res in sorted(resolutions, reverse=True) for mode in compile_modes])

    result["seconds"] = time.perf_counter() - t_start
    name = f"bench-{dev.replace(':', '')}-{stamp}"
    (out_dir / f"{name}.json").write_text(json_dumps(result))
    (out_dir / f"{name}.md").write_text(suite_markdown(result))
    result["files"] = [str(out_dir / f"{name}.json"), str(out_dir / f"{name}.md")]
    return result


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, indent=1, default=str)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def suite_markdown(result: dict[str, Any]) -> str:
    """The suite's results as markdown tables (what goes into docs/benchmarks.md)."""
    v = result["versions"]
    lines = [
        f"# greencam benchmark suite on {v.get('gpu') or result['machine'].get('cpu')} ({result['device']})",
        "",
        f"- date (UTC): {result['date_utc']}; run time {_fmt(result.get('seconds'))} s"
        + (" (small settings)" if result["small"] else ""),
        f"- torch {v['torch']} (CUDA {v['cuda']}, cuDNN {v['cudnn']}), sam2 {v['sam2']}, OpenCV {v['opencv']}, "
        f"Python {v['python']}",
        "- SAM 2.1 with seeded random weights; medians over the measured frames after warm-up",
        "",
        f"## Bare tracker ({result['tracker'][0]['frame_size'] if result['tracker'] else '–'} frames)",
        "",
        "| run | ms/frame | fps | image encoder | memory attention | mask decoder | memory encoder "
        "| official ms/frame | ratio vs official | peak GPU MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["tracker"]:
        st = r["stages_ms"]
        total = r["total_ms"]
        lines.append(
            f"| {r['label']} | {_fmt(total, 2)} | {_fmt(1000.0 / total if total else None)} "
            f"| {_fmt(st['image_encoder'], 2)} | {_fmt(st['memory_attention'], 2)} | {_fmt(st['mask_decoder'], 2)} "
            f"| {_fmt(st['memory_encoder'], 2)} | {_fmt(r.get('official_ms_per_frame'), 2)} "
            f"| {_fmt(r.get('ratio_vs_official'), 3)} | {_fmt(r.get('peak_gpu_mb'), 0)} |"
        )
    lines += [
        "",
        "## Live loop (tiny, source paced at 30 fps; latency = capture to output)",
        "",
        "| clip | frames in / out | output fps | tracker fps | bare tracker fps | live / bare "
        "| latency p50 / p95 ms | send gap p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["live"]:
        s = r["status"]
        lines.append(
            f"| {r['label']} {r['frame_size']} | {s['frames_in']} / {s['frames_out']} | {_fmt(s['output_fps'])} "
            f"| {_fmt(s['tracker_fps'])} | {_fmt(r.get('bare_tracker_fps'))} | {_fmt(r.get('live_vs_bare'), 2)} "
            f"| {_fmt(s['latency_p50_ms'])} / {_fmt(s['latency_p95_ms'])} | {_fmt(r['p95_gap_ms'])} |"
        )
    for r in result["e2e"]:
        lines += [
            "",
            f"## Offline pipeline, every frame keyed by its own mask (tiny @ {r['resolution']}, {r['frame_size']})",
            "",
            "| sink | ms/frame | fps | track ms | composite ms | bare tracker ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for sink in ("vcam", "mp4"):
            ms = r.get(f"e2e_{sink}_ms_per_frame")
            lines.append(
                f"| {sink} | {_fmt(ms, 2)} | {_fmt(1000.0 / ms if ms else None)} | {_fmt(r.get(f'e2e_{sink}_track_ms'), 2)} "
                f"| {_fmt(r.get(f'e2e_{sink}_compose_ms'), 2)} | {_fmt(r.get('bare_tracker_ms'), 2)} |"
            )
    comp = result.get("compositor")
    if comp:
        lines += ["", f"## Compositor ({comp['frame_size']})", "", "| path | median ms | p95 ms |", "|---|---:|---:|"]
        for key, value in comp.items():
            if isinstance(value, dict) and "median_ms" in value:
                lines.append(f"| {key} | {_fmt(value['median_ms'], 2)} | {_fmt(value['p95_ms'], 2)} |")
        if "gpu_overlap" in comp:
            o = comp["gpu_overlap"]
            lines += [
                "",
                f"Torch path with {_fmt(o['queued_gpu_work_ms'])} ms of other GPU work queued: "
                f"{_fmt(o['compose_ms_with_queued_work'], 2)} ms (alone {_fmt(o['compose_ms_alone'], 2)} ms). "
                "About the queued time means the compositor waits for the tracker's kernels.",
            ]
    if result["serve_step"]:
        lines += [
            "",
            "## greencam serve worker step (batched sessions)",
            "",
            "| sessions | step p50 ms | masks/s per session |",
            "|---:|---:|---:|",
        ]
        for r in result["serve_step"]:
            lines.append(f"| {r['sessions']} | {_fmt(r['step_ms_p50'], 2)} | {_fmt(r['masks_per_s_per_session'])} |")
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(result["skipped"])]
    if result["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['step']}: {e['error']}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m greenscreen_cam.bench suite --device cuda --out bench-results [--small]`` (used by make bench-gpu)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m greenscreen_cam.bench", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    suite = sub.add_parser("suite", help="run the whole benchmark suite and record it")
    suite.add_argument("--device", default="cuda")
    suite.add_argument("--out", type=Path, default=Path("bench-results"))
    suite.add_argument("--small", action="store_true", help="tiny settings (a CPU smoke run)")
    suite.add_argument("--clip", default=None, help="video to cut the 720p/1080p clips from")
    suite.add_argument("--models", default=",".join(SUITE_MODELS))
    suite.add_argument("--budget", type=float, default=360.0, help="seconds after which optional steps are skipped")
    process = sub.add_parser("process", help="greencam start vs the official predictor's script, whole processes")
    process.add_argument("source", nargs="?", default=None)
    process.add_argument("--frames", type=int, default=40)
    process.add_argument("--repeats", type=int, default=3)
    process.add_argument("--resolution", type=int, default=256)
    process.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "suite":
        result = bench_suite(
            device=args.device,
            out_dir=args.out,
            small=args.small,
            clip=args.clip,
            models_to_run=tuple(m for m in args.models.split(",") if m),
            budget_s=args.budget,
        )
        sys.stdout.write(suite_markdown(result))
        sys.stdout.write(f"\nwritten: {', '.join(result['files'])}\n")
        # compiled variants are optional (they need Triton and a C compiler on the machine)
        fatal = [e for e in result["errors"] if not e["step"].endswith((" compile", " reduce-overhead"))]
        return 1 if fatal else 0
    result = bench_process(
        source=args.source, frames=args.frames, repeats=args.repeats, resolution=args.resolution, device=args.device
    )
    sys.stdout.write(json_dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
