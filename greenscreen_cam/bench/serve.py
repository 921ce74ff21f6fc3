"""``greencam serve`` under load: N camera clients against one server process, and the worker step alone.

- :func:`bench_link`: N real-time clients (:class:`~greenscreen_cam.link.client.RemoteTracker`) against
  a fresh server in its own process (its CPU time and memory read from ``/proc``).
- :func:`bench_step`: the server's batched worker step without the network.
- :func:`sessions_at_fps`: the most sessions whose step still fits a frame rate.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenscreen_cam.config import ServeSettings
from greenscreen_cam.core import percentile

if TYPE_CHECKING:
    from greenscreen_cam.config import ModelSettings

TOKEN = "bench-token-not-secret"


def _serve_child(opts: ServeSettings, urls: Any, stop: Any, random_weights: bool, batch: bool) -> None:
    """The server process: ``greencam serve``'s host until the parent sets ``stop``."""
    stop_local = threading.Event()

    def watch() -> None:
        stop.wait()
        stop_local.set()

    threading.Thread(target=watch, daemon=True).start()
    from greenscreen_cam.app import run_serve

    run_serve(opts, say=lambda line: None, ready=urls.put, stop=stop_local, random_weights=random_weights, batch=batch)


def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _proc_rss_mib(pid: int) -> tuple[float | None, float | None]:
    """(current RSS, peak RSS) of process ``pid`` in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    values: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS"), values.get("VmHWM")


def bench_link(
    settings: ModelSettings,
    sessions: int,
    source: Path,
    seconds: float = 20.0,
    *,
    random_weights: bool = True,
    batch: bool = True,
    on_event: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``sessions`` camera clients from ``source`` (at its frame rate) for ``seconds`` against a fresh server.

    Args:
        sessions: Simultaneous clients (each with its own session on the server).
        source: A video file; each client plays it in real time from its own reader, looping.
        seconds: Measured time, after every client got its first mask.
        settings: The server's model, checkpoint, input size and device.
        random_weights: Use seeded random weights (no download needed; same speed).
        batch: Server batches the image encoder over sessions (False: one by one).
        on_event: Progress lines.

    Returns:
        A dict: settings, then ``per_session`` (masks/s, latency p50/p95 ms, drops, kbit/s up and
        down) and their means, and the server's CPU use (% of one core), RSS and peak RSS (MiB).
    """
    from greenscreen_cam.link.client import RemoteTracker
    from greenscreen_cam.media.sources import VideoFileSource
    from greenscreen_cam.track.prompt import Prompt

    say = on_event or (lambda line: None)
    opts = ServeSettings(
        port=0,
        token=TOKEN,
        model=settings.model,
        resolution=settings.resolution,
        device=settings.device,
        checkpoint=str(settings.checkpoint) if settings.checkpoint else None,
        max_sessions=max(sessions, 1),
        min_fps=0.0,
    )
    ctx = mp.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve_child, args=(opts, urls, stop, random_weights, batch), daemon=True)
    proc.start()
    clients: list[Any] = []
    try:
        url = urls.get(timeout=180)
        assert proc.pid is not None
        probe = VideoFileSource(source)
        width, height, fps = probe.width, probe.height, probe.fps
        probe.close()
        box = Prompt(box=(width * 0.25, height * 0.2, width * 0.5, height * 0.7))
        for _ in range(sessions):
            c = RemoteTracker(url, TOKEN, width=width, height=height)
            c.start()
            c.reselect(box)
            clients.append(c)
        say(f"{sessions} session(s) connected to {url}; warming up")
        measuring = threading.Event()
        finished = threading.Event()
        got_first = [threading.Event() for _ in clients]
        per: list[dict[str, Any]] = [{} for _ in clients]

        def feed(i: int) -> None:
            c = clients[i]
            src = VideoFileSource(source, realtime=True)
            lat: list[float] = []
            masks = 0
            base: dict[str, Any] = {}
            deadline = time.monotonic() + seconds + 120.0
            while not finished.is_set() and time.monotonic() < deadline:
                frame = src.read()
                if frame is None:
                    src.close()
                    src = VideoFileSource(source, realtime=True)
                    continue
                c.submit(frame)
                for m in c.poll():
                    got_first[i].set()
                    if measuring.is_set() and m.state != "waiting":
                        masks += 1
                        lat.append(m.received - m.timestamp)
                if measuring.is_set() and not base:
                    base = {**c.stats(), "t": time.perf_counter()}
            src.close()
            end = {**c.stats(), "t": time.perf_counter()}
            span = end["t"] - base.get("t", end["t"]) or 1e-9
            per[i] = {
                "masks_per_s": round(masks / span, 2),
                "latency_p50_ms": round(1000 * percentile(lat, 50), 1),
                "latency_p95_ms": round(1000 * percentile(lat, 95), 1),
                "frames_per_s_in": round((end["submitted"] - base.get("submitted", 0)) / span, 2),
                "dropped_client": end["dropped"] - base.get("dropped", 0),
                "dropped_server": end["server_dropped"] - base.get("server_dropped", 0),
                "uplink_kbps": end["uplink_kbps"],
                "downlink_kbps": end["downlink_kbps"],
            }

        threads = [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(len(clients))]
        for t in threads:
            t.start()
        for ev in got_first:
            ev.wait(120)
        time.sleep(2.0)  # let the pipelines settle
        cpu0, t0 = _proc_cpu_seconds(proc.pid), time.perf_counter()
        measuring.set()
        say(f"measuring for {seconds:g} s")
        rss_samples: list[float] = []
        while time.perf_counter() - t0 < seconds:
            time.sleep(0.5)
            rss, _ = _proc_rss_mib(proc.pid)
            if rss is not None:
                rss_samples.append(rss)
        cpu1, t1 = _proc_cpu_seconds(proc.pid), time.perf_counter()
        finished.set()
        for t in threads:
            t.join(30)
        _, peak = _proc_rss_mib(proc.pid)
        import urllib.request

        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            step_ms = json.loads(r.read()).get("step_ms")
        keys = [
            *("masks_per_s", "latency_p50_ms", "latency_p95_ms", "dropped_client", "dropped_server"),
            *("uplink_kbps", "downlink_kbps", "frames_per_s_in"),
        ]
        mean = {k: round(sum(p[k] for p in per) / len(per), 2) for k in keys}
        return {
            "kind": "serve",
            "sessions": sessions,
            "batch": batch,
            "model": settings.model,
            "resolution": opts.resolution,
            "device": opts.device,
            "source": source.name,
            "source_fps": fps,
            "source_size": [width, height],
            "seconds": round(t1 - t0, 1),
            "per_session": per,
            "mean": mean,
            "server_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1) if cpu0 is not None and cpu1 else None,
            "server_rss_mib": round(max(rss_samples), 1) if rss_samples else None,
            "server_peak_rss_mib": round(peak, 1) if peak is not None else None,
            "server_step_ms_by_batch": step_ms,
            "options": {k: str(v) for k, v in asdict(opts).items() if k not in ("token",)},
        }
    finally:
        for c in clients:
            c.close()
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def bench_step(
    model: Any,
    sessions: int,
    *,
    steps: int = 20,
    warmup: int | None = None,
    batch: bool = True,
    frame_hw: tuple[int, int] = (720, 1280),
) -> dict[str, Any]:
    """Time the server's worker step alone (no network): ``sessions`` trackers on one model.

    Each step is what ``greencam serve`` runs per round: every session's newest frame
    through preprocessing, one batched image encoder call and, once the banks are full, one
    stacked memory attention + decoder + memory encoder step for all sessions
    (:class:`greenscreen_cam.track.batched.SessionBatch`); with ``batch=False`` everything one by one.
    The masks are copied to the host.

    Args:
        model: A loaded SAM 2 model (:func:`greenscreen_cam.track.models.load_model`).
        sessions: Trackers stepped together.
        steps: Timed steps (after ``warmup`` untimed ones; the first step prompts).
        warmup: Untimed steps; None = 20 on a GPU (until SAM 2's memory bank is full, so every
            kernel shape has been seen) and 2 on the CPU.
        batch: Batch the image encoder over sessions.
        frame_hw: Size of the frames the server receives (the client sends its shorter side at most
            the model size).

    Returns:
        ``sessions``, ``batch``, ``step_ms_p50``, ``step_ms_mean``, ``masks_per_s_per_session`` and
        ``fits_fps`` (the frame rate every session can get: 1000 / p50).
    """
    import numpy as np
    import torch

    from greenscreen_cam.link.server import track_batch
    from greenscreen_cam.track import models
    from greenscreen_cam.track.prompt import Prompt
    from greenscreen_cam.track.segmenter import StreamingTracker

    device = str(model.device)
    if warmup is None:
        warmup = 20 if device.startswith("cuda") else 2
    from greenscreen_cam.track.batched import SessionBatch

    trackers = [StreamingTracker(model, autocast=models.autocast_dtype(device)) for _ in range(sessions)]
    stacked = SessionBatch(model, autocast=models.autocast_dtype(device)) if batch else None
    h, w = frame_hw
    rng = np.random.default_rng(0)
    bases = [rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1) for _ in trackers]
    prompt = Prompt(box=(w * 0.25, h * 0.2, w * 0.5, h * 0.7))

    def frames(i: int) -> list[np.ndarray]:
        out = []
        for b in bases:
            f = b.copy()
            x = int(w * 0.3 + (i % 30) * w * 0.01)
            f[h // 4 : 3 * h // 4, x : x + w // 4] = (230, 50, 40)
            out.append(f)
        return out

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    for i in range(warmup + steps):
        imgs = frames(i)
        sync()
        t0 = time.perf_counter()
        results = track_batch(trackers, imgs, [prompt if i == 0 else None] * sessions, batch=batch, stacked=stacked)
        for r in results:
            if isinstance(r, Exception):
                raise r
            r.low_res_numpy()
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    p50 = percentile(times, 50)
    return {
        "sessions": sessions,
        "batch": batch,
        "device": device,
        "resolution": int(model.image_size),
        "frame_hw": list(frame_hw),
        "step_ms_p50": round(p50, 2),
        "step_ms_mean": round(sum(times) / len(times), 2),
        "masks_per_s_per_session": round(1000.0 / p50, 1) if p50 else None,
    }


def sessions_at_fps(
    model: Any,
    fps: float = 30.0,
    *,
    limit: int = 64,
    batch: bool = True,
    steps: int = 10,
    frame_hw: tuple[int, int] | None = None,
) -> dict:
    """The most sessions whose worker step still fits ``1/fps`` (doubling, then bisection), with the timings.

    ``frame_hw`` defaults to a 1280x720 camera as the client sends it (shorter side at most the model size).
    """
    if frame_hw is None:
        from greenscreen_cam.link.client import send_size

        w, h = send_size(1280, 720, int(model.image_size))
        frame_hw = (h, w)
    budget = 1000.0 / fps
    runs: dict[int, dict[str, Any]] = {}

    def fits(n: int) -> bool:
        runs[n] = bench_step(model, n, steps=steps, batch=batch, frame_hw=frame_hw)
        return runs[n]["step_ms_p50"] <= budget

    if not fits(1):
        return {"fps": fps, "sessions": 0, "runs": list(runs.values())}
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return {"fps": fps, "sessions": lo, "batch": batch, "runs": [runs[k] for k in sorted(runs)]}


def bench_capacity(
    settings: ModelSettings, fps: float = 30.0, *, random_weights: bool = False, batch: bool = True
) -> dict[str, Any]:
    """How many ``greencam serve`` sessions one worker can step at ``fps`` (:func:`sessions_at_fps`) on this machine."""
    import tempfile

    from greenscreen_cam.track.tracking import load_model, resolve_model

    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        choice = resolve_model(settings, random_weights=Path(tmp) if random_weights else None)
        model = load_model(choice).net  # the one factory of start, bench and serve
    result = sessions_at_fps(model, fps, batch=batch)
    result.update(kind="capacity", model=choice.spec.name, device=choice.device, resolution=choice.resolution)
    if choice.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name()
    return result


def bench_serve_step(
    settings: ModelSettings,
    source: str | None,
    sessions: int = 4,
    *,
    steps: int = 10,
    random_weights: bool = False,
) -> dict[str, Any]:
    """One steady-state step of ``sessions`` sessions: stacked (one batched step) against one by one.

    Each session tracks ``source`` from its own starting frame with its own prompt box (so its
    frame counter and pointer positions differ). Both sides run the same image-encoder outputs
    (encoded once per session and frame, not timed); after the banks fill, ``steps`` steps are
    timed: ``batched_ms`` (:class:`greenscreen_cam.track.batched.SessionBatch`) and ``sequential_ms``
    (each tracker's own steady-state step, one after another), medians; the masks of both sides
    are compared (mean and minimum IoU, largest logit difference).
    """
    import tempfile

    import cv2
    import numpy as np
    import torch

    from greenscreen_cam.app import resolve_model
    from greenscreen_cam.errors import ConfigError
    from greenscreen_cam.track import models
    from greenscreen_cam.track.batched import SessionBatch
    from greenscreen_cam.track.segmenter import Prompt, StreamingTracker
    from greenscreen_cam.track.steady import bank_full_at

    if source is None:
        raise ConfigError("--serve-step needs a SOURCE video")
    with tempfile.TemporaryDirectory(prefix="greencam-bench-") as tmp:
        choice = resolve_model(settings, random_weights=Path(tmp) if random_weights else None)
        model = models.load_model(choice.spec, choice.checkpoint, device=choice.device, resolution=choice.resolution)
    full_at = bank_full_at(model)
    need = full_at + steps + sessions
    cap = cv2.VideoCapture(str(source))
    frames: list[np.ndarray] = []
    while len(frames) < need:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise ConfigError(f"cannot read frames from {source}")
    h, w = frames[0].shape[:2]
    autocast = models.autocast_dtype(choice.device)
    alone = [StreamingTracker(model, autocast=autocast) for _ in range(sessions)]
    together = [StreamingTracker(model, autocast=autocast) for _ in range(sessions)]
    stacked = SessionBatch(model, autocast=autocast)

    def sync() -> None:
        if choice.device.startswith("cuda"):
            torch.cuda.synchronize()

    batched_ms: list[float] = []
    sequential_ms: list[float] = []
    ious: list[float] = []
    max_diff = 0.0
    for i in range(full_at + steps):
        encoded = []
        for k in range(sessions):
            frame = frames[(i + k) % len(frames)]
            encoded.append(alone[k].encode(alone[k].preprocess(frame))[0])
        prompts = [
            Prompt(box=(w * (0.2 + 0.05 * k), h * 0.2, w * 0.4, h * 0.6)) if i == 0 else None for k in range(sessions)
        ]
        sync()
        t0 = time.perf_counter()
        expected = [t.step_encoded(e, (h, w), p) for t, e, p in zip(alone, encoded, prompts, strict=True)]
        lows_a = [r.low_res_numpy() for r in expected]
        sync()
        t1 = time.perf_counter()
        got = stacked.track([(t, t, e, (h, w), p) for t, e, p in zip(together, encoded, prompts, strict=True)])
        lows_b = [r.low_res_numpy() for r in got if not isinstance(r, Exception)]
        sync()
        t2 = time.perf_counter()
        if i >= full_at:
            assert len(stacked) == sessions
            sequential_ms.append((t1 - t0) * 1000.0)
            batched_ms.append((t2 - t1) * 1000.0)
            for a, b in zip(lows_a, lows_b, strict=True):
                max_diff = max(max_diff, float(np.abs(a - b).max()))
                union = np.logical_or(a > 0, b > 0).sum()
                ious.append(1.0 if union == 0 else float(np.logical_and(a > 0, b > 0).sum() / union))
    batched, sequential = percentile(batched_ms, 50), percentile(sequential_ms, 50)
    result: dict[str, Any] = {
        "kind": "serve_step",
        "model": choice.spec.name,
        "device": choice.device,
        "resolution": choice.resolution,
        "sessions": sessions,
        "bucket": stacked.bucket,
        "steps": steps,
        "batched_ms": round(batched, 2),
        "sequential_ms": round(sequential, 2),
        "ratio_batched_vs_sequential": round(batched / sequential, 3) if sequential else None,
        "iou_batched_vs_sequential": round(float(np.mean(ious)), 5),
        "min_iou_batched_vs_sequential": round(float(np.min(ious)), 5),
        "max_logit_diff": max_diff,
    }
    if choice.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    return result
