"""Pieces every benchmark shares: frames to measure on, the tracker under test, machine facts, medians."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from greenscreen_cam.core import percentile
from greenscreen_cam.errors import ConfigError

if TYPE_CHECKING:
    from greenscreen_cam.app import ModelChoice
    from greenscreen_cam.config import ModelSettings


def _ellipse(img: np.ndarray, i: int, n: int) -> None:
    height, width = img.shape[:2]
    cx = int(width * (0.35 + 0.3 * (i / max(1, n - 1))))
    cv2.ellipse(img, (cx, height // 2), (width // 8, height // 3 + (i % 5)), 0, 0, 360, (230, 80, 40), -1)


def synthetic_frames(
    n: int,
    width: int = 1280,
    height: int = 720,
    seed: int = 0,
    *,
    grid: tuple[int, int] = (18, 32),
    draw: Callable[[np.ndarray, int, int], None] = _ellipse,
) -> list[np.ndarray]:
    """``n`` frames (``(height, width, 3)`` uint8 RGB): a textured background and a moving subject.

    Args:
        grid: ``(rows, cols)`` of seeded random colours, smoothly scaled up into the background.
        draw: ``draw(image, i, n)`` paints frame ``i``'s subject in place; the default is an
            ellipse moving right and slowly deforming.

    Example:
        >>> [f.shape for f in synthetic_frames(2, 64, 36)]
        [(36, 64, 3), (36, 64, 3)]
    """
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 255, (*grid, 3), dtype=np.uint8)
    base = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(n):
        img = base.copy()
        draw(img, i, n)
        frames.append(img)
    return frames


def load_frames(source: str, n: int) -> list[np.ndarray]:
    """The first ``n`` frames (RGB) of a video file or image folder; at least 2."""
    from greenscreen_cam.media.sources import ImageFolderSource, VideoFileSource

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


def write_jpeg_folder(folder: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """Write RGB ``images`` as ``00000.jpg``… (quality 95) and return them as decoded back.

    The official predictor reads a JPEG folder: both sides of a comparison then run on the very
    same decoded frames.
    """
    folder.mkdir()
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]


def machine() -> dict[str, Any]:
    """CPU, core count and the library versions a timing depends on."""
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


def median_ms(values: list[float]) -> float:
    """The median of ``values`` (0.0 when empty), through :func:`greenscreen_cam.core.percentile`."""
    return percentile(values, 50)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """This process's resident memory now in MiB (Linux ``/proc``; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()


def parse_box(bbox: str | None, width: int, height: int) -> tuple[float, ...]:
    """``--bbox x,y,w,h``, or the centre half of a ``width x height`` frame."""
    from greenscreen_cam.track.prompt import default_box, parse_numbers

    return parse_numbers(bbox, 4, "--bbox") if bbox else default_box(width, height)


class CountingSink:
    """Counts frames as they arrive: the 'external count' the status line is checked against."""

    def __init__(self) -> None:
        self.count = 0
        self.times: list[float] = []

    def send(self, frame: np.ndarray) -> None:
        import time

        self.count += 1
        self.times.append(time.perf_counter())

    def close(self) -> None:
        pass


def load_bench_tracker(
    settings: ModelSettings,
    random_weights: bool,
    tmpdir: Path,
    *,
    profile: bool = False,
    compile_model: bool | str = False,
) -> tuple[Any, ModelChoice]:
    """Load the tracker a benchmark runs: ``(tracker, choice)`` (model spec, device, resolution, checkpoint).

    The same checks and loading as ``greencam start`` (:mod:`greenscreen_cam.app`); with
    ``random_weights`` a seeded random checkpoint is written into ``tmpdir`` first.
    """
    from greenscreen_cam.app import load_tracker, resolve_model

    choice = resolve_model(settings, random_weights=tmpdir if random_weights else None)
    tracker = load_tracker(choice, profile=profile, compile_mode=compile_model)
    return tracker, choice


def free_device_memory() -> None:
    """Collect garbage and return cached CUDA memory between benchmark steps."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def json_dumps(value: Any) -> str:
    """``value`` as indented JSON; anything JSON cannot hold (paths) as its string."""
    import json

    return json.dumps(value, indent=1, default=str)
