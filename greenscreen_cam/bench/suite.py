"""The suite ``make bench-gpu`` records: tracker, live loop, pipeline, compositor and serve step in one go."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

from greenscreen_cam.bench.common import (
    free_device_memory,
    json_dumps,
    load_frames,
    machine,
    synthetic_frames,
    versions,
)
from greenscreen_cam.bench.compositor import bench_compositor
from greenscreen_cam.bench.report import suite_markdown
from greenscreen_cam.bench.serve import bench_step, sessions_at_fps
from greenscreen_cam.bench.tracker import bench_live, bench_tracker
from greenscreen_cam.config import ModelSettings
from greenscreen_cam.errors import ConfigError

SUITE_MODELS = ("tiny", "small", "base-plus", "large")


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

    On CUDA: the bare tracker for each model at 512 and 1024 px, eager; ``tiny`` also with its
    steady-state step replayed as a CUDA graph (``--compile on``, against the official
    VOS-optimized predictor, ``vos_optimized=True``, in the same run), with
    ``torch.compile`` (default mode) and with CUDA graphs (``reduce-overhead``) and against
    the official predictor; the live loop on a 720p and a 1080p clip at 30 fps (tiny @ 1024);
    the end-to-end offline pipeline at 720p; the compositor's OpenCV and torch paths and
    whether the torch path waits for queued GPU work; and ``greencam serve``'s batched
    worker step (:func:`greenscreen_cam.bench.serve.bench_step`). Weights are seeded random
    (speed does not depend on their values), so nothing is downloaded.

    ``small`` runs the same steps with tiny settings (tiny @ 256, a few frames, 1 s clips)
    so that the suite can be exercised on a CPU in a test. Steps that fail are recorded
    under ``errors`` and the suite goes on; once ``budget_s`` seconds have passed, the
    optional steps (compiled runs, larger models) are skipped and listed under ``skipped``.

    Returns:
        The results dict that was written to ``out_dir/bench-<device>-<time>.json``.
    """
    import traceback

    from greenscreen_cam.track import models

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
        default = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos" / "default_juggle.mp4"
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
        compile_modes = ("graph", True, "reduce-overhead")

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
            graph = mode == "graph"  # the steady-state step as a CUDA graph (--compile on)
            r = step(
                label,
                lambda name=name, res=res, mode=mode, graph=graph: bench_tracker(
                    ModelSettings(
                        model=name,
                        checkpoint=str(checkpoint(name)),
                        resolution=res,
                        device=dev,
                        compile="on" if graph else "off",
                    ),
                    source=str(clips["720p"]),
                    frames=frames,
                    reference=(name == "tiny" and mode is False and not small),
                    reference_vos=(name == "tiny" and graph),
                    count_ops=(name == "tiny"),
                    e2e=False,
                    compile_model=False if graph else mode,
                    warmup=1 if small else 25,
                ),
            )
            if r is not None:
                r.pop("machine", None)
                r["label"] = label
                result["tracker"].append(r)
            free_device_memory()

        # 1. the bare tracker, eager: every model at every size (compiled runs come last: slow to build)
        run_trackers([(name, res, False) for name in models_to_run for res in resolutions])

        # 2. the live loop at 30 fps and the offline pipeline, tiny at the device's default size
        live_res = 256 if small else 1024
        tiny = ModelSettings(model="tiny", checkpoint=str(checkpoint("tiny")), resolution=live_res, device=dev)
        for label, path in clips.items():
            r = step(
                f"live {label}",
                lambda path=path: bench_live(tiny, source=str(path), seconds=live_s, bare_frames=1 if small else 30),
            )
            if r is not None:
                r.pop("machine", None)
                r["label"] = f"live {label}"
                result["live"].append(r)
            free_device_memory()
        r = step(
            "e2e 720p",
            lambda: bench_tracker(
                tiny, source=str(clips["720p"]), frames=frames, reference=False, e2e=True, warmup=1 if small else 25
            ),
        )
        if r is not None:
            r.pop("machine", None)
            result["e2e"].append(r)
        free_device_memory()

        # 3. the compositor (OpenCV path, and the torch path on a GPU)
        comp_dev = dev if dev.startswith("cuda") else None
        r = step("compositor", lambda: bench_compositor(10 if small else 300, device=comp_dev))
        if r is not None:
            r.pop("machine", None)
            result["compositor"] = r

        # 4. greencam serve's worker step (batched sessions)
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
                lambda sessions=sessions, net=net: bench_step(
                    net, sessions, steps=1 if small else 20, warmup=1 if small else None
                ),
            )
            if r is not None:
                result["serve_step"].append(r)
        del net
        free_device_memory()

        # 4b. sessions per GPU at 30 fps with the stacked serve step, tiny@512 and tiny@1024 (GPU runs)
        result["serve_capacity"] = []
        for cap_res in () if small else (512, 1024):
            if over_budget():
                result["skipped"].append(f"serve capacity tiny@{cap_res}")
                continue
            r = step(
                f"serve capacity tiny@{cap_res}",
                lambda cap_res=cap_res: sessions_at_fps(
                    models.load_model(models.get_spec("tiny"), checkpoint("tiny"), device=dev, resolution=cap_res),
                    30.0,
                    limit=16,
                ),
            )
            if r is not None:
                r.update(model="tiny", resolution=cap_res)
                result["serve_capacity"].append(r)
            free_device_memory()

        # 5. tiny compiled (Inductor) and with CUDA graphs, while the time budget lasts
        run_trackers([("tiny", res, mode) for res in sorted(resolutions, reverse=True) for mode in compile_modes])

    result["seconds"] = time.perf_counter() - t_start
    name = f"bench-{dev.replace(':', '')}-{stamp}"
    (out_dir / f"{name}.json").write_text(json_dumps(result))
    (out_dir / f"{name}.md").write_text(suite_markdown(result))
    result["files"] = [str(out_dir / f"{name}.json"), str(out_dir / f"{name}.md")]
    return result
