"""The compositor alone: each path's median and p95 ms per frame, and whether the torch path waits for the GPU."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from greenscreen_cam.bench.common import machine, median_ms
from greenscreen_cam.core import percentile


def bench_compositor(frames: int, width: int = 1280, height: int = 720, *, device: str | None = None) -> dict[str, Any]:
    """Median and p95 ms per frame of the compositor's paths at ``width x height``.

    With ``device`` (e.g. ``"cuda"``) the torch path on that device is timed too, and
    on CUDA whether it waits for kernels other work queued on the GPU
    (:func:`compositor_overlap`).
    """
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings

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
        results[name] = {"median_ms": median_ms(times), "p95_ms": percentile(times, 95)}
    if device is not None and device.startswith("cuda"):
        results["gpu_overlap"] = compositor_overlap(device, frame, (yy, xx))
    results["subjects"] = subjects_union(min(frames, 60))
    return results


def subjects_union(frames: int) -> dict[str, dict[str, float]]:
    """What keying several subjects costs: each subject upsampled, then the union (ms per frame, medians).

    Per frame size (720p, 1080p) and subject count (1, 2, 8): the official order with torch's
    kernel (``refine none``'s exact path), the same with OpenCV (the refined path's kernel, at the
    frame size here), the old order (maximum at 64x64, one upsampling) for comparison, and whole
    ``compose`` calls on both paths.
    """
    from greenscreen_cam.key.compositor import Compositor, CompositorSettings, upsample_union

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    out: dict[str, dict[str, float]] = {}
    for width, height in ((1280, 720), (1920, 1080)):
        frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for n in (1, 2, 8):
            centres = [(8 + 48 * k / max(1, n - 1), 32.0) for k in range(n)]
            planes = np.stack([(10.0 - np.hypot(yy - cy, xx - cx)).astype(np.float32) for cx, cy in centres])
            size = (height, width)
            cases: dict[str, Any] = {
                "exact (torch)": lambda p=planes, s=size: upsample_union(p, s, exact=True),
                "opencv": lambda p=planes, s=size: upsample_union(p, s),
                "max first (old)": lambda p=planes, s=size: upsample_union(p.max(axis=0), s, exact=True),
            }
            for label, settings in (("compose refine none", CompositorSettings(refine="none", smooth=0.0)),
                                    ("compose default", CompositorSettings(smooth=0.3))):  # fmt: skip
                comp = Compositor(settings)
                cases[label] = lambda c=comp, p=planes, f=frame: c.compose(f, p)
            row: dict[str, float] = {}
            for label, fn in cases.items():
                times = []
                for i in range(frames + 3):
                    start = time.perf_counter()
                    fn()
                    if i >= 3:
                        times.append((time.perf_counter() - start) * 1000.0)
                row[label] = median_ms(times)
            out[f"{width}x{height}, {n} subject{'s' if n > 1 else ''}"] = row
    return out


def compositor_overlap(device: str, frame: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Does the torch compositor wait for GPU work queued by someone else (the tracker)?

    Queues about 50 ms of matrix products on the current stream without waiting,
    then times one ``compose`` right away. A compositor on its own stream with no
    hidden synchronisation returns in about its usual time; one that shares the
    stream (or synchronises the device) returns only after the queued work.
    """
    import torch

    from greenscreen_cam.key.compositor import Compositor, CompositorSettings

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
        "compose_ms_alone": median_ms(alone),
        "compose_ms_with_queued_work": median_ms(queued),
    }
