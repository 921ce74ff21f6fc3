"""Shared fixtures: seeded random SAM 2 checkpoints, small real video files, a recording virtual camera."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from greenscreen_cam.bench.common import synthetic_frames

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
# ``--engine auto`` would pick OpenVINO on this CPU: the suite compares against the official predictor
# bit for bit, so ``auto`` means torch here (and in every greencam subprocess); OpenVINO tests ask for it.
os.environ.setdefault("GREENCAM_ENGINE", "torch")


def _hardware_missing(marker: str) -> str | None:
    """Why a test marked ``marker`` cannot run on this machine (None: it can)."""
    if marker == "gpu":
        import torch

        return None if torch.cuda.is_available() else "needs a CUDA GPU (torch.cuda.is_available() is False)"
    sysfs = Path("/sys/class/video4linux")
    names = [(d / "name").read_text().strip().lower() for d in sysfs.glob("video*") if (d / "name").is_file()]
    if marker == "vcam":
        loopback = any("loopback" in n or "greencam" in n for n in names)
        return None if loopback else "needs a v4l2loopback virtual camera (sudo modprobe v4l2loopback ...)"
    if marker == "camera":
        real = any("loopback" not in n and "greencam" not in n for n in names)
        return None if real else "needs a physical webcam (none under /sys/class/video4linux)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu``, ``camera`` or ``vcam`` skip with the reason when the hardware is absent."""
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker in ("gpu", "camera", "vcam"):
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = _hardware_missing(marker)
            if reasons[marker]:
                item.add_marker(pytest.mark.skip(reason=reasons[marker]))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when the data is absent (e.g. a user's machine)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not available: {path}")
    return path


def _disc(img: np.ndarray, i: int, n: int) -> None:
    height, width = img.shape[:2]
    cv2.circle(img, (width // 3 + 2 * i, height // 2), height // 4, (230, 50, 40), -1)


def moving_disc_frames(n: int, width: int = 160, height: int = 120, seed: int = 0) -> list[np.ndarray]:
    """RGB frames: a textured background with a red disc moving right (the benchmarks' generator)."""
    return synthetic_frames(n, width, height, seed, grid=(6, 8), draw=_disc)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_jpeg_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def official_logits(checkpoint: Path, folder: Path, prompts: list[dict], device: str = "cpu") -> list:
    """The official ``SAM2VideoPredictor`` (tiny at 256 px) on a JPEG folder, one object per prompt added on frame 0.

    Per frame, in order: its full-resolution logits, shape (objects, H, W), on the CPU.
    """
    from sam2.build_sam import build_sam2_video_predictor

    from greenscreen_cam.track import models

    predictor = build_sam2_video_predictor(
        models.get_spec("tiny").config, str(checkpoint), device=device, hydra_overrides_extra=["++model.image_size=256"]
    )
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = predictor.init_state(str(folder))
        for obj_id, prompt in enumerate(prompts, start=1):
            predictor.add_new_points_or_box(state, 0, obj_id, **prompt)
        for i, obj_ids, masks in predictor.propagate_in_video(state):
            assert list(obj_ids) == list(range(1, len(prompts) + 1))
            out[i] = masks[:, 0].detach().cpu().clone()
    assert sorted(out) == list(range(len(out)))
    return [out[i] for i in range(len(out))]


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoints/ folder holding a seeded random ``tiny`` checkpoint under its official file name."""
    from greenscreen_cam.track import models

    folder = tmp_path_factory.mktemp("checkpoints")
    models.save_random_checkpoint(models.get_spec("tiny"), folder / models.get_spec("tiny").filename, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_dir: Path) -> Path:
    from greenscreen_cam.track import models

    return checkpoint_dir / models.get_spec("tiny").filename


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    """SAM 2.1 tiny at 256 px with seeded random weights, loaded through the real loader."""
    from greenscreen_cam.track import models

    return models.load_model(models.get_spec("tiny"), tiny_checkpoint, device="cpu", resolution=256)


@pytest.fixture(scope="session")
def short_bank_model(tiny_model):
    """The tiny model reading a shorter bank (2 spatial memories, 4 pointers: full from frame 4, not 16).

    The same weights and code; only the bank length changes, so that a CPU test sees sessions join
    (and leave and rejoin) the stacked serve step within a few frames. ``greencam bench --serve-step`` checks the real 1 + 6 + 15 bank.
    """
    import copy

    from greenscreen_cam.track.steady import bank_full_at

    model = copy.copy(tiny_model)  # shares every module and weight
    model.num_maskmem = 3
    model.max_obj_ptrs_in_encoder = 4
    assert bank_full_at(model) == 4
    return model


@pytest.fixture()
def clip(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    frames = moving_disc_frames(12)
    return write_video(tmp_path / "clip.mp4", frames), frames


class RecordingBackend:
    """A pyvirtualcam backend that records what it receives (registered as ``greencam-test``)."""

    instances: list[RecordingBackend] = []
    lock = threading.Lock()

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: object) -> None:
        if device == "missing-cam":
            raise RuntimeError("device not found")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.dev = device or "/dev/video-test"
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.closed = 0
        with RecordingBackend.lock:
            RecordingBackend.instances.append(self)

    def close(self) -> None:
        self.closed += 1

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())
        self.times.append(time.perf_counter())

    def device(self) -> str:
        return self.dev

    def native_fourcc(self) -> int | None:
        return None


@pytest.fixture()
def vcam_backend():
    import pyvirtualcam

    RecordingBackend.instances.clear()
    pyvirtualcam.register_backend("greencam-test", RecordingBackend)
    yield RecordingBackend
    pyvirtualcam.camera.BACKENDS.pop("greencam-test", None)


@pytest.fixture(scope="module")
def loopback_ice() -> Iterator[None]:
    """Keep WebRTC media on 127.0.0.1 (aioice leaves loopback out of its host candidates)."""
    import aioice.ice

    mp = pytest.MonkeyPatch()
    mp.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield
    mp.undo()
