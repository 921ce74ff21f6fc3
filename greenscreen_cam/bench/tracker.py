"""The tracker under test: per-stage medians against the official predictor, the live loop, a soak run.

- :func:`bench_tracker`: per-stage median ms/frame of the streaming tracker and, in the same run
  on the same frames, the official ``SAM2VideoPredictor``; with ``e2e=True`` also the whole
  offline pipeline (decode, track, composite, encode) against the bare tracker.
- :func:`bench_live`: the live loop on a file paced like a camera, against an external frame count.
- :func:`bench_soak`: memory over a long run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from greenscreen_cam.bench.common import (
    CountingSink,
    load_bench_tracker,
    load_frames,
    machine,
    median_ms,
    parse_box,
    peak_rss_mb,
    rss_mb,
    synthetic_frames,
    write_jpeg_folder,
)
from greenscreen_cam.bench.steady import count_frame_ops, deviation, steady_figures
from greenscreen_cam.core import percentile

if TYPE_CHECKING:
    from greenscreen_cam.config import ModelSettings


def bench_tracker(
    settings: ModelSettings,
    *,
    source: str | None,
    frames: int,
    random_weights: bool = False,
    bbox: str | None = None,
    reference: bool = True,
    e2e: bool = False,
    compile_model: bool | str = False,
    warmup: int = 3,
    reference_vos: bool = False,
    count_ops: bool = False,
) -> dict[str, Any]:
    """Per-stage medians of the streaming tracker and, on the same frames, the official predictor.

    Args:
        settings: Which model, checkpoint, resolution and device (as ``greencam start`` takes them).
        source: Video file or image folder; None for synthetic 1280x720 frames.
        frames: Frames to measure.
        random_weights: Seeded random weights instead of ``settings.checkpoint`` (same speed).
        bbox: Prompt box ``x,y,w,h`` (default: the centre half of the frame).
        reference: Also time the official predictor on the same frames.
        e2e: Also time the whole offline pipeline on the same frames.
        compile_model: False, True (``torch.compile`` of the image encoder, default mode) or a
            ``torch.compile`` mode such as ``"reduce-overhead"`` (CUDA graphs).
        warmup: Tracked frames before the measured pass (kernels, allocator, compilation).
        reference_vos: Also time the official VOS-optimized predictor (``vos_optimized=True``:
            torch.compile of its parts, slow to build) on the same frames.
        count_ops: Also count aten ops and host syncs per steady-state frame (``greencam bench`` does; see
            :func:`greenscreen_cam.bench.steady.count_frame_ops`).

    Returns:
        ``stages_ms`` (median ms per stage), ``total_ms`` (median per frame), and with ``reference``:
        ``official_ms_per_frame`` (the official ``propagate_in_video`` step) and ``ratio_vs_official``
        (greencam / official).
    """
    import torch

    from greenscreen_cam.track import models
    from greenscreen_cam.track.segmenter import STAGES, Prompt

    imgs = synthetic_frames(frames) if source is None else load_frames(source, frames)
    h, w = imgs[0].shape[:2]
    box = parse_box(bbox, w, h)
    prompt = Prompt(box=box)  # type: ignore[arg-type]
    prompt.validate(w, h)
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tmpdir = Path(tmp)
        tracker, choice = load_bench_tracker(
            settings, random_weights, tmpdir, profile=True, compile_model=compile_model
        )
        dev = choice.device
        folder = tmpdir / "frames"
        imgs = write_jpeg_folder(folder, imgs)

        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        # warm-up pass (kernels, allocator, compile), then the measured pass
        tracker.prompt(imgs[0], prompt)
        for i in range(max(0, warmup)):
            tracker.track(imgs[1 + i % (len(imgs) - 1)])
        tracker.timings.clear()
        totals: list[float] = []
        logits = []
        for i, img in enumerate(imgs):
            start = time.perf_counter()
            out = tracker.prompt(img, prompt) if i == 0 else tracker.track(img)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:
                totals.append((time.perf_counter() - start) * 1000.0)
            logits.append(out.low_res_logits.clone())
        stages = {name: median_ms(tracker.timings[name][1:]) for name in STAGES}
        if tracker.timings.get("steady_step"):  # the OpenVINO step: attention, decoder and memory encoder in one graph
            stages["steady_step"] = median_ms(tracker.timings["steady_step"])
        result: dict[str, Any] = {
            "kind": "tracker",
            "model": choice.spec.name,
            "resolution": choice.resolution,
            "device": dev,
            "dtype": "bf16 autocast" if models.autocast_dtype(dev) is not None else "float32",
            "compiled": compile_model,
            "compile": settings.compile,
            "captured": bool(getattr(tracker, "captured", False)),
            "engine": choice.engine,
            "openvino_device": choice.openvino_device if choice.engine == "openvino" else None,
            "openvino_precision": choice.openvino_precision if choice.engine == "openvino" else None,
            "frames": len(imgs),
            "frame_size": f"{w}x{h}",
            "source": source or "synthetic",
            "weights": "random (seeded)" if random_weights else str(choice.checkpoint),
            "stages_ms": stages,
            "total_ms": median_ms(totals),
            "stored_entries": list(tracker.stored_entries()),
            "machine": machine(),
        }
        if dev.startswith("cuda"):
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_rss_mb"] = peak_rss_mb()

        if e2e:
            result.update(_bench_pipeline(folder, tracker, prompt, result["total_ms"], tmpdir))
            result["kind"] = "e2e"
        from greenscreen_cam.track.steady import bank_full_at

        full_at = bank_full_at(tracker.model)
        dev_result = deviation(tracker, imgs, prompt, logits)
        if dev_result is not None:
            result["deviation_vs_eager_fp32"] = dev_result
        if count_ops:
            result.update(count_frame_ops(tracker, imgs, prompt))
        result.update(steady_figures(totals, None, full_at))
        if reference:
            ref = bench_official(choice.spec, choice.checkpoint, dev, choice.resolution, folder, box, len(imgs))
            result.update(reference=ref, official_ms_per_frame=ref["propagate_ms"])
            result["ratio_vs_official"] = _ratio(result["total_ms"], ref["propagate_ms"])
            result["ratio_vs_official_with_loading"] = _ratio(result["total_ms"], ref["per_frame_with_loading_ms"])
            result.update(steady_figures(totals, ref["times_ms"], full_at))
        if reference_vos:
            vos = bench_official(
                choice.spec, choice.checkpoint, dev, choice.resolution, folder, box, len(imgs), vos=True
            )
            result.update(reference_vos=vos, official_vos_ms_per_frame=vos["propagate_ms"])
            result["ratio_vs_official_vos"] = _ratio(result["total_ms"], vos["propagate_ms"])
            steady_vos = steady_figures(totals, vos["times_ms"], full_at)
            result["ratio_steady_vs_official_vos"] = steady_vos.get("ratio_steady_vs_official")
        del tracker
    return result


def _ratio(ours: float, theirs: float) -> float | None:
    return ours / theirs if theirs else None


def bench_official(
    spec: Any, ckpt: Path, dev: str, res: int, folder: Path, box: tuple[float, ...], n: int, *, vos: bool = False
) -> dict[str, Any]:
    """The official ``SAM2VideoPredictor`` on the JPEG ``folder``: median ``propagate_ms`` and loading per frame.

    ``vos``: the official VOS-optimized predictor (``vos_optimized=True``, torch.compile'd parts);
    ``times_ms`` lists every propagated frame's time (frame 1 first).
    """
    import contextlib
    import warnings

    import torch
    from sam2.build_sam import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(
        spec.config, str(ckpt), device=dev, hydra_overrides_extra=[f"++model.image_size={res}"], vos_optimized=vos
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
    propagate = median_ms(times)
    return {
        "propagate_ms": propagate,
        "loading_ms_per_frame": load_s * 1000.0 / n,
        "per_frame_with_loading_ms": propagate + load_s * 1000.0 / n,
        "times_ms": times,
        "vos_optimized": vos,
    }


def _bench_pipeline(folder: Path, tracker: Any, prompt: Any, bare_ms: float, tmpdir: Path) -> dict[str, Any]:
    """The offline pipeline on the same frames, into a virtual-camera-like sink and into an mp4 file."""
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.sinks import VideoFileSink
    from greenscreen_cam.media.sources import ImageFolderSource

    out: dict[str, Any] = {"bare_tracker_ms": bare_ms}
    for name in ("vcam", "mp4"):
        src = ImageFolderSource(folder)
        sink: Any = (
            CountingSink() if name == "vcam" else VideoFileSink(tmpdir / "e2e.mp4", src.width, src.height, src.fps)
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
        out[f"e2e_{name}_track_ms"] = median_ms([t * 1000.0 for t in pipe.stats.track_times][1:])
        out[f"e2e_{name}_compose_ms"] = median_ms([t * 1000.0 for t in pipe.stats.compose_times])
        out[f"pipeline_overhead_{name}"] = per_frame / bare_ms - 1.0 if bare_ms else None
    return out


LIVE_STATUS_KEYS = (
    *("frames_in", "frames_out", "tracked", "dropped", "input_fps", "output_fps", "tracker_fps"),
    *("latency_p50_ms", "latency_p95_ms", "delay_p50_ms", "delay_p95_ms", "own_mask_share", "filler_frames"),
    *("sync", "seconds"),
)
"""The pipeline summary's fields a live benchmark records under ``status``."""


def bench_live(
    settings: ModelSettings,
    *,
    source: str,
    seconds: float,
    random_weights: bool = False,
    bbox: str | None = None,
    flow: bool = False,
    sync: str = "auto",
    bare_frames: int = 0,
) -> dict[str, Any]:
    """Run the live loop on a file paced at its own fps (like a camera) and compare the stats to an external count.

    With ``bare_frames`` > 0 the same tracker first runs that many frames of the clip
    alone in the same process (same thread policy), giving ``bare_tracker_fps`` and
    ``live_vs_bare`` (tracker rate in the loop / bare rate).
    """
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.sources import open_source
    from greenscreen_cam.track.segmenter import Prompt

    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tracker, choice = load_bench_tracker(settings, random_weights, Path(tmp))
        dev = choice.device
        bare = _bare_rate(tracker, source, bare_frames, bbox) if bare_frames > 0 else None
        tracker.reset()
        src = open_source(source, realtime=True)
        box = parse_box(bbox, src.width, src.height)
        sink = CountingSink()
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
        "model": choice.spec.name,
        "resolution": choice.resolution,
        "device": dev,
        "source": source,
        "source_fps": src.fps,
        "frame_size": f"{src.width}x{src.height}",
        "flow": flow,
        "sync": sync,
        "status": {k: summary[k] for k in LIVE_STATUS_KEYS},
        "external_frames_written": sink.count,
        "external_output_fps": (sink.count - 1) / (sink.times[-1] - sink.times[0]) if sink.count > 1 else 0.0,
        "median_gap_ms": percentile(gaps, 50),
        "p95_gap_ms": percentile(gaps, 95),
        "bare_tracker_fps": bare,
        "live_vs_bare": summary["tracker_fps"] / bare if bare else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "opencv_threads": cv2.getNumThreads(),
        "machine": machine(),
    }


def _bare_rate(tracker: Any, source: str, n: int, bbox: str | None) -> float:
    """Frames per second of ``tracker`` alone on the first ``n + 1`` frames of ``source`` (median step)."""
    import torch

    from greenscreen_cam.track.segmenter import Prompt

    imgs = load_frames(source, n + 2)
    h, w = imgs[0].shape[:2]
    tracker.prompt(imgs[0], Prompt(box=parse_box(bbox, w, h)))  # type: ignore[arg-type]
    tracker.track(imgs[1])
    times = []
    for img in imgs[2:]:
        start = time.perf_counter()
        tracker.track(img)
        if tracker.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1.0 / percentile(times, 50)


def bench_soak(
    settings: ModelSettings,
    *,
    source: str | None,
    frames: int,
    random_weights: bool = False,
    size: int = 96,
) -> dict[str, Any]:
    """Track ``frames`` frames of a looped clip (scaled down to ``size`` px wide) and sample the process RSS."""
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings
    from greenscreen_cam.track.segmenter import Prompt

    clip = synthetic_frames(30) if source is None else load_frames(source, 60)
    h = max(2, round(clip[0].shape[0] * size / clip[0].shape[1]))
    clip = [cv2.resize(f, (size, h), interpolation=cv2.INTER_AREA) for f in clip]
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        tracker, choice = load_bench_tracker(settings, random_weights, Path(tmp))
        comp = Compositor(CompositorSettings(smooth=0.3))
        tracker.prompt(clip[0], Prompt(box=(size / 4, h / 4, size / 2, h / 2)))
        samples: list[tuple[int, float]] = []
        start = time.perf_counter()
        for i in range(1, frames):
            frame = clip[i % len(clip)]
            result = tracker.track(frame)
            comp.compose(frame, result.low_res_numpy())
            if i % 100 == 0:
                samples.append((i, rss_mb()))
        elapsed = time.perf_counter() - start
    warm = next((rss for i, rss in samples if i >= 300), samples[0][1] if samples else 0.0)
    peak_after = max((rss for i, rss in samples if i >= 300), default=warm)
    return {
        "kind": "soak",
        "model": choice.spec.name,
        "resolution": choice.resolution,
        "device": choice.device,
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
