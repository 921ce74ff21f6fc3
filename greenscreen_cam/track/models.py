"""SAM 2 model registry, checkpoint download/verification and loading.

The registry names every official SAM 2 / SAM 2.1 checkpoint with its sam2
config, file name, Meta's public URL and, where known, its size and SHA-256.
:func:`download` fetches one with a progress callback into a temporary file and
renames it into place only after it verifies. :func:`load_model` builds the
model from its config and loads *any* checkpoint file with strict key and shape
checks, turning every failure into one :class:`~greenscreen_cam.errors.CheckpointError`
line. torch and sam2 are imported lazily so the CLI starts fast.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from greenscreen_cam.config import check_resolution
from greenscreen_cam.errors import CheckpointError, DeviceError, DownloadError

if TYPE_CHECKING:
    import torch

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"

DEFAULT_RESOLUTION = {"cuda": 1024, "mps": 512, "cpu": 256}
"""Default ``--resolution`` per device: full quality on CUDA, real time elsewhere."""


@dataclass(frozen=True)
class ModelSpec:
    """One official SAM 2 checkpoint.

    Attributes:
        name: The name users type (``tiny``, ``sam2.0-large``...).
        config: The sam2 Hydra config name shipped in the sam2 package.
        filename: The checkpoint's file name in ``checkpoints/``.
        url: Meta's public download URL.
        size: File size in bytes, or None where not published.
        sha256: Hex SHA-256 of the file, or None where not published.
        embed_dim: Hiera trunk width (tells model sizes apart in a checkpoint).
        blocks: Number of Hiera trunk blocks.
        family: The tracker backends that can load it (:mod:`greenscreen_cam.track.tracking` registry key).
    """

    name: str
    config: str
    filename: str
    url: str
    size: int | None
    sha256: str | None
    embed_dim: int
    blocks: int
    family: str = "sam2"

    @property
    def version(self) -> str:
        return "2.0" if self.name.startswith("sam2.0-") else "2.1"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "tiny",
            "configs/sam2.1/sam2.1_hiera_t.yaml",
            "sam2.1_hiera_tiny.pt",
            _BASE_21 + "sam2.1_hiera_tiny.pt",
            None,
            "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
            96,
            12,
        ),
        ModelSpec(
            "small",
            "configs/sam2.1/sam2.1_hiera_s.yaml",
            "sam2.1_hiera_small.pt",
            _BASE_21 + "sam2.1_hiera_small.pt",
            None,
            None,
            96,
            16,
        ),
        ModelSpec(
            "base-plus",
            "configs/sam2.1/sam2.1_hiera_b+.yaml",
            "sam2.1_hiera_base_plus.pt",
            _BASE_21 + "sam2.1_hiera_base_plus.pt",
            None,
            None,
            112,
            24,
        ),
        ModelSpec(
            "large",
            "configs/sam2.1/sam2.1_hiera_l.yaml",
            "sam2.1_hiera_large.pt",
            _BASE_21 + "sam2.1_hiera_large.pt",
            None,
            None,
            144,
            48,
        ),
        ModelSpec(
            "sam2.0-tiny",
            "configs/sam2/sam2_hiera_t.yaml",
            "sam2_hiera_tiny.pt",
            _BASE_20 + "sam2_hiera_tiny.pt",
            155906050,
            "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
            96,
            12,
        ),
        ModelSpec(
            "sam2.0-small",
            "configs/sam2/sam2_hiera_s.yaml",
            "sam2_hiera_small.pt",
            _BASE_20 + "sam2_hiera_small.pt",
            184309650,
            "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
            96,
            16,
        ),
        ModelSpec(
            "sam2.0-base-plus",
            "configs/sam2/sam2_hiera_b+.yaml",
            "sam2_hiera_base_plus.pt",
            _BASE_20 + "sam2_hiera_base_plus.pt",
            323493298,
            "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
            112,
            24,
        ),
        ModelSpec(
            "sam2.0-large",
            "configs/sam2/sam2_hiera_l.yaml",
            "sam2_hiera_large.pt",
            _BASE_20 + "sam2_hiera_large.pt",
            897952466,
            "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
            144,
            48,
        ),
    ]
}

DEFAULT_MODEL = "tiny"


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for ``name`` or raise a CheckpointError listing the choices."""
    try:
        return MODELS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def default_checkpoint_dir() -> Path:
    """Where checkpoints live: ``$GREENCAM_CHECKPOINTS``, a checkout's ``checkpoints/``, else the user's data folder.

    See :func:`greenscreen_cam.paths.checkpoint_dir`.
    """
    from greenscreen_cam.paths import checkpoint_dir

    return checkpoint_dir()


def resolve_checkpoint(spec: ModelSpec, checkpoint: Path | None, directory: Path | None = None) -> Path:
    """Return the checkpoint file to load, or raise a CheckpointError saying how to get it."""
    path = checkpoint if checkpoint is not None else (directory or default_checkpoint_dir()) / spec.filename
    if not path.is_file():
        if checkpoint is not None:
            raise CheckpointError(f"checkpoint file not found: {path}")
        raise CheckpointError(
            f"no checkpoint for model {spec.name!r} at {path}; download it with: greencam download {spec.name}"
        )
    return path


# --------------------------------------------------------------------------- download

ProgressFn = Callable[[int, int | None], None]
"""Called as ``progress(bytes_done, bytes_total_or_None)`` while downloading."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


Verification = Literal["sha256", "size", "none"]
"""What a checkpoint file was checked against: Meta's SHA-256, a byte count only, or nothing."""


@dataclass(frozen=True)
class DownloadResult:
    """What :func:`download` did.

    Attributes:
        path: The checkpoint file.
        verified: ``"sha256"`` (matches the published SHA-256), ``"size"`` (only its
            byte count was checked: the registry size or the server's
            Content-Length) or ``"none"`` (nothing was published to check it against).
        downloaded: False when an existing file was kept.
        size: The file's size in bytes.
    """

    path: Path
    verified: Verification
    downloaded: bool
    size: int

    def describe(self) -> str:
        """One line for the user, e.g. ``"downloaded, SHA-256 verified"``."""
        what = "downloaded" if self.downloaded else "already present"
        check = {
            "sha256": "SHA-256 verified",
            "size": "size checked (Meta published no SHA-256 for it)",
            "none": "not verified (Meta published no SHA-256 or size for it)",
        }[self.verified]
        return f"{what}, {check}"


def _check_existing(spec: ModelSpec, dest: Path) -> Verification | None:
    """How an existing ``dest`` passes the registry's checks, or None when it fails them."""
    if spec.sha256 is not None:
        return "sha256" if sha256_file(dest) == spec.sha256 else None
    if spec.size is not None:
        return "size" if dest.stat().st_size == spec.size else None
    return "none"


def download(
    spec: ModelSpec,
    directory: Path,
    *,
    url: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 30.0,
    force: bool = False,
) -> DownloadResult:
    """Download ``spec``'s checkpoint into ``directory`` and verify it.

    The bytes go to a temporary ``*.part`` file in the same directory, which is
    renamed to ``spec.filename`` only once the size (the registry's, else the
    server's Content-Length) and SHA-256 (where published) match. Any failure,
    network errors and a connection cut mid-transfer included, deletes the
    temporary file and raises one DownloadError line. An existing file that
    passes the registry's checks is kept unless ``force``; the result says what
    those checks were, so nothing is called verified that was not.

    Args:
        spec: The model to fetch.
        directory: Destination folder (created if missing).
        url: Override the source URL (a mirror, or a test server).
        progress: Optional callback, see :data:`ProgressFn`.
        timeout: Socket timeout in seconds for connect and each read.
        force: Download even when an existing file passes the checks.

    Returns:
        The file and what it was checked against.

    Raises:
        DownloadError: unreachable server, HTTP error, cut or short transfer, or a wrong SHA-256.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create checkpoint folder {directory}: {e.strerror or e}") from None
    dest = directory / spec.filename
    if dest.is_file() and not force:
        kept = _check_existing(spec, dest)
        if kept is not None:
            return DownloadResult(dest, kept, False, dest.stat().st_size)
    source = url or spec.url
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=spec.filename + ".", suffix=".part", dir=directory)
    except OSError as e:
        raise DownloadError(f"cannot write into checkpoint folder {directory}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:  # owns fd from here on, whatever happens next
            done, total, digest = _transfer(spec, source, out, progress, timeout)
        expected_size = spec.size if spec.size is not None else total
        if expected_size is not None and done != expected_size:
            raise DownloadError(
                f"download of {spec.name} is truncated: got {done} of {expected_size} bytes; "
                "the partial file was deleted, run greencam download again"
            )
        if spec.sha256 is not None and digest != spec.sha256:
            raise DownloadError(
                f"download of {spec.name} failed verification: SHA-256 {digest} "
                f"!= expected {spec.sha256}; the file was deleted"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    verified: Verification = "sha256" if spec.sha256 is not None else ("size" if expected_size is not None else "none")
    return DownloadResult(dest, verified, True, done)


def _transfer(
    spec: ModelSpec, source: str, out: Any, progress: ProgressFn | None, timeout: float
) -> tuple[int, int | None, str]:
    """Copy ``source`` into the open file ``out``; ``(bytes, Content-Length or None, hex SHA-256)``.

    Every network failure becomes one DownloadError line.
    """
    import http.client

    digest = hashlib.sha256()
    done = 0
    try:
        request = urllib.request.Request(source, headers={"User-Agent": "greencam"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            header = response.headers.get("Content-Length")
            total = int(header) if header and header.isdigit() else spec.size
            if progress:
                progress(0, total)
            while block := response.read(1 << 16):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {spec.name} failed: HTTP {e.code} {e.reason} from {source}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {spec.name} failed: cannot reach {source} ({e.reason})") from None
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"download of {spec.name} was cut after {done + len(e.partial)} bytes "
            "(the server closed the connection mid-transfer); "
            "the partial file was deleted, run greencam download again"
        ) from None
    except TimeoutError:
        raise DownloadError(
            f"download of {spec.name} timed out after {done} bytes (no data for {timeout:g} s); "
            "the partial file was deleted, run greencam download again"
        ) from None
    except (http.client.HTTPException, OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DownloadError(
            f"download of {spec.name} failed after {done} bytes ({reason}); the partial file was deleted"
        ) from None
    return done, total, digest.hexdigest()


# --------------------------------------------------------------------------- device


def resolve_device(name: str) -> str:
    """Turn ``auto|cuda|mps|cpu`` (or ``cuda:N``) into an available torch device string."""
    import torch

    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is available to torch here; use --device cpu or auto")
        return name
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple MPS is not available here; use --device cpu or auto")
        return name
    if name == "cpu":
        return name
    raise DeviceError(f"unknown --device {name!r}; choose auto, cuda, mps or cpu")


# --------------------------------------------------------------------------- loading


def choose(model: str, device: str, resolution: int | None) -> tuple[ModelSpec, str, int]:
    """Check a model name, device and input size (fast, nothing is loaded).

    Returns:
        ``(registry entry, torch device, resolution)``; the resolution defaults per device type.
    """
    spec = get_spec(model)
    dev = resolve_device(device)
    return spec, dev, check_resolution(resolution or DEFAULT_RESOLUTION[dev.split(":")[0]])


def _video_overrides(resolution: int) -> list[str]:
    """Hydra overrides: the official video-predictor settings at ``resolution`` px."""
    return [
        "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
        f"++model.image_size={resolution}",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
        "++model.binarize_mask_from_pts_for_mem_enc=true",
        "++model.fill_hole_area=8",
    ]


def build_model(spec: ModelSpec, resolution: int) -> Any:
    """Instantiate ``spec``'s architecture with random weights on the CPU, in eval mode.

    The class is sam2's ``SAM2VideoPredictor`` (a ``SAM2Base``) configured exactly as
    ``sam2.build_sam.build_sam2_video_predictor`` configures it.
    """
    check_resolution(resolution)
    import sam2  # noqa: F401  (registers sam2's Hydra config module)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name=spec.config, overrides=_video_overrides(resolution))
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True).eval()


def describe_state_dict(state: dict[str, Any]) -> str:
    """Guess which registry model a state dict belongs to (for error messages)."""
    try:
        width = int(state["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        return "an unknown model"
    blocks = 1 + max((int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks.")), default=-1)
    is_21 = "no_obj_embed_spatial" in state
    for spec in MODELS.values():
        if spec.embed_dim == width and spec.blocks == blocks and (spec.version == "2.1") == is_21:
            return f"model {spec.name!r}"
    return f"an unknown model (Hiera width {width}, {blocks} blocks)"


def read_checkpoint(path: Path, *, mmap: bool = True) -> dict[str, Any]:
    """Read the ``model`` state dict from a SAM 2 checkpoint file, or raise CheckpointError.

    With ``mmap`` (the default) the tensors are memory-mapped from the file
    instead of read into fresh memory, so loading a model does not hold a second
    full copy of the weights (:func:`load_model` hands the mapped tensors to the
    model). Files in torch's legacy (non-zip) format cannot be mapped and are read
    as before.
    """
    import pickle

    import torch

    try:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({reason}); delete it and run greencam download"
        ) from None
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        return blob["model"]
    if isinstance(blob, dict) and blob and all(hasattr(v, "shape") for v in blob.values()):
        return blob  # a bare state dict is accepted too
    raise CheckpointError(f"checkpoint {path} holds no SAM 2 weights (expected a dict with a 'model' state dict)")


def load_model(
    spec: ModelSpec,
    checkpoint: Path,
    *,
    device: str = "cpu",
    resolution: int = 1024,
) -> Any:
    """Build ``spec`` at ``resolution``, load ``checkpoint`` strictly and move it to ``device``.

    Raises:
        CheckpointError: missing, unreadable or truncated file; missing or
            unexpected keys; or tensors whose shapes belong to another model size.
    """
    import torch

    state = read_checkpoint(checkpoint)
    model = build_model(spec, resolution)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = describe_state_dict(state)
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit model {spec.name!r}: {', '.join(detail)}; it looks like {what}"
        )
    for key, value in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit model {spec.name!r}: {key} has shape "
                f"{tuple(got.shape)}, the model expects {tuple(value.shape)}; it looks like {describe_state_dict(state)}"
            )
    with torch.no_grad():
        # assign: the model takes the (memory-mapped) checkpoint tensors themselves instead of
        # copying them into its randomly initialised ones, which are freed: one copy of the weights.
        for key, value in expected.items():
            if state[key].dtype != value.dtype:
                state[key] = state[key].to(value.dtype)
        model.load_state_dict(state, strict=True, assign=True)
    del state, expected
    _release_free_heap()
    return model.to(device)


def _release_free_heap() -> None:
    """Hand the heap freed while building (the random initial weights) back to the OS (glibc only)."""
    import contextlib
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        ctypes.CDLL(name).malloc_trim(0)


def save_random_checkpoint(spec: ModelSpec, path: Path, *, seed: int = 0) -> Path:
    """Write a checkpoint of ``spec``'s architecture with seeded random weights.

    Used by tests and by ``greencam bench --random-weights`` on machines that
    cannot download the real weights. The file has the official layout
    (``{"model": state_dict}``), so it goes through the real loader.
    """
    import torch

    torch.manual_seed(seed)
    model = build_model(spec, 1024)
    torch.save({"model": model.state_dict()}, path)
    return path


def autocast_dtype(device: str) -> torch.dtype | None:
    """bf16 autocast on CUDA, none (float32) elsewhere (bf16 on CPU is ~10x slower)."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") else None
