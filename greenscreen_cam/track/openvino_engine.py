"""The OpenVINO engine: SAM 2's image encoder and steady-state step, converted once and compiled for the CPU.

PyTorch eager is what limits SAM 2 on a laptop CPU; OpenVINO runs the same graphs in well under
half the time (docs/benchmarks.md). Two graphs are converted with ``openvino.convert_model`` (under
``torch.no_grad()``: tensors made under ``inference_mode`` cannot be traced):

- ``encoder``: ``forward_image`` + ``_prepare_backbone_features``, ``(1, 3, S, S)`` -> the three
  feature levels ``(H*W, 1, C)``. Their positional encodings do not depend on the image: computed
  once in torch.
- ``step``: the fixed-shape steady step of :mod:`greenscreen_cam.track.steady` once the memory bank
  is full: memory attention, mask decoder, memory encoder. The bank stays in torch (its ring
  buffers, the read positions and the object-pointer encoding are a few small device-side ops,
  :func:`~greenscreen_cam.track.steady.read_bank`); the graph takes what the frame reads and gives
  the frame's logits, object score, new memory and object pointer. sam2 rotates its keys with
  complex numbers (``torch.view_as_complex``), which OpenVINO cannot convert: inside this graph
  only, the same rotation is written with real cos/sin (:func:`rotate_real`).

Frames before the bank is full (the prompt frame and the next 15) run torch's step on the
OpenVINO encoder's features. Only batch 1 is converted: serve's stacked sessions stay on torch.

Converted graphs are cached under the user cache folder (``~/.cache/greencam/openvino``) keyed by
the checkpoint's SHA-256, the model, the resolution, :data:`ENGINE_VERSION` and the OpenVINO
version; an entry is written to a temporary folder and renamed into place, and one that cannot be
read is rebuilt after one line saying so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from greenscreen_cam.track import sam2_private
from greenscreen_cam.track.steady import (
    SteadyBank,
    StepOutput,
    attend_memory,
    bank_full_at,
    decode_masks,
    encode_memory,
    pack_output,
    read_bank,
    write_bank,
)

__all__ = ["ENGINE_VERSION", "OpenVINOEngine", "cache_key", "checkpoint_sha256", "rotate_real"]

ENGINE_VERSION = 2  # 2: static input shapes
"""Bump when the converted graphs change: older cache entries are then stale and rebuilt."""

_PARTS = ("encoder", "step")
DEFAULT_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO's CPU plugin runs bf16 by default on CPUs that have it: greencam asks for float32 (exactness)."""
Notify = Callable[[str], None]


def rotate_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """sam2's rotary encoding of ``(..., N, D)`` in real arithmetic: pairs ``(a, b)`` -> ``(a c - b s, a s + b c)``.

    ``cos`` and ``sin`` are ``(N, D/2)``: the real and imaginary parts of sam2's ``freqs_cis``. Equal to
    sam2's complex product up to float rounding (a few 1e-7).
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).type_as(x)


class _Encoder(torch.nn.Module):
    """``(1, 3, S, S)`` -> the image encoder's three feature levels, as ``_prepare_backbone_features`` lays them out."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        backbone = self.net.forward_image(image)
        _, feats, _, _ = sam2_private.prepare_backbone_features(self.net, backbone)
        return tuple(feats)


class _Step(torch.nn.Module):
    """Memory attention, mask decoder and memory encoder over what one steady frame reads (see the module docstring)."""

    def __init__(self, net: Any, slots: int, hw: int, mem_dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.slots, self.hw, self.mem_dtype = slots, hw, mem_dtype
        side = math.isqrt(hw)
        self.rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in net.memory_attention.layers:
            attn = layer.cross_attn_image
            freqs = attn.compute_cis(end_x=side, end_y=side).to(torch.device("cpu"))
            self.rope[id(attn)] = (freqs.real.contiguous(), freqs.imag.contiguous())

    def _rotate(self, x: torch.Tensor, attn: Any) -> torch.Tensor:
        cos, sin = self.rope[id(attn)]
        return rotate_real(x, cos, sin)

    def forward(
        self,
        f0: torch.Tensor,
        f1: torch.Tensor,
        f2: torch.Tensor,
        pos2: torch.Tensor,
        mem: torch.Tensor,
        mem_pos: torch.Tensor,
        ptr_mem: torch.Tensor,
        ptr_pos: torch.Tensor,
        k_cond: torch.Tensor,
        v_cond: torch.Tensor,
        values: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        net = self.net
        side = math.isqrt(self.hw)
        feats = [f0, f1, f2]
        sizes = [(side * 4, side * 4), (side * 2, side * 2), (side, side)]
        batch = f2.size(1)
        pix_feat = attend_memory(
            net.memory_attention,
            f2,
            pos2,
            mem,
            mem_pos,
            ptr_mem,
            ptr_pos,
            {"k_cond": k_cond, "v_cond": v_cond},
            lambda li: values[li],
            (self.slots, self.hw),
            (batch, net.hidden_dim, side, side),
            self._rotate,
        )
        low_res, high_res, obj_ptr, obj_score = decode_masks(net, pix_feat, feats, sizes)
        new_mem = encode_memory(net, feats, sizes, high_res, obj_score, self.mem_dtype)
        return low_res, obj_score, new_mem, obj_ptr


def checkpoint_sha256(path: Path) -> str:
    """The SHA-256 of a checkpoint file, remembered beside the cache by (path, size, mtime)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(sha256: str, model: str, resolution: int, openvino_version: str) -> dict[str, Any]:
    """What a cache entry is valid for (its folder name is a hash of this)."""
    return {
        "checkpoint_sha256": sha256,
        "model": model,
        "resolution": int(resolution),
        "engine_version": ENGINE_VERSION,
        "openvino": openvino_version,
    }


def _entry_name(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key['model']}-{key['resolution']}-v{key['engine_version']}-{digest}"


class OpenVINOEngine:
    """The two compiled graphs for one loaded sam2 model, shared by every tracker over that model.

    Args:
        net: The loaded sam2 ``SAM2Base`` (float32, on the CPU).
        name: The model's name (``tiny``...), for the cache key and messages.
        checkpoint: The checkpoint file it was loaded from (hashed for the cache key).
        device: OpenVINO's device: ``CPU``, ``GPU``, ``NPU`` or ``AUTO``.
        cache_dir: Where converted graphs are kept (default: ``user_cache_dir() / "openvino"``).
        notify: Receives the progress lines (converting, compiling, a rebuilt cache entry).
        config: OpenVINO compile properties (default: :data:`DEFAULT_CONFIG`).
    """

    def __init__(
        self,
        net: Any,
        *,
        name: str,
        checkpoint: Path,
        device: str = "CPU",
        cache_dir: Path | None = None,
        notify: Notify | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        import openvino as ov

        from greenscreen_cam.paths import user_cache_dir

        self.net = net
        self.device = device.upper()
        self.say = notify or (lambda _m: None)
        self.resolution = int(net.image_size)
        self.config = dict(config) if config is not None else dict(DEFAULT_CONFIG)
        root = cache_dir or user_cache_dir() / "openvino"
        key = cache_key(checkpoint_sha256(checkpoint), name, self.resolution, ov.__version__)
        self.cache_path = root / _entry_name(key)
        self.rebuilt = False
        self.probe = self._positions()
        models = self._cached(key)
        if models is None:
            models = self._convert(root, key)
        core = ov.Core()
        start = time.perf_counter()
        self.compiled = {part: core.compile_model(models[part], self.device, self.config) for part in _PARTS}
        self.requests = {part: self.compiled[part].create_infer_request() for part in _PARTS}
        self.say(f"openvino: compiled for {self.device} in {time.perf_counter() - start:.1f} s")

    # ------------------------------------------------------------------ building
    @torch.no_grad()
    def _positions(self) -> dict[str, Any]:
        """One torch run of the encoder on a blank frame: its positional encodings and sizes (image independent)."""
        s = self.resolution
        image = torch.zeros(1, 3, s, s)
        backbone = self.net.forward_image(image)
        _, feats, pos, sizes = sam2_private.prepare_backbone_features(self.net, backbone)
        return {
            "image": image,
            "feats": [f.clone() for f in feats],
            "pos": [p.clone() for p in pos],
            "sizes": [tuple(x) for x in sizes],
        }

    @torch.no_grad()
    def _step_example(self) -> dict[str, Any]:
        """A primed steady bank from a few blank frames: example inputs of the step graph (conversion only)."""
        from greenscreen_cam.track.segmenter import Prompt, StreamingTracker

        s = self.resolution
        image = self.probe["image"]
        feats, pos = self.probe["feats"], self.probe["pos"]
        tracker = StreamingTracker(self.net)
        tracker.step(image, (s, s), Prompt(box=(s / 4, s / 4, s / 2, s / 2)))
        for _ in range(bank_full_at(self.net) + 1):
            tracker.step(image, (s, s), None)
        bank = tracker.steady_bank()
        if bank is None:
            raise RuntimeError("this sam2 model has no fixed-shape steady step to convert")
        with torch.inference_mode():  # the probe tracker's bank: advanced once, then dropped
            read = read_bank(bank, 1)
        buf = bank.buffers
        step_inputs = _step_inputs([f.clone() for f in feats], pos[-1].clone(), read, buf)
        return {
            "step_inputs": tuple(x.detach().clone() for x in step_inputs),
            "slots": bank.slots,
            "mem_dtype": bank.mem_dtype,
        }

    def _cached(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The cached graphs for ``key``, or None (absent, or unreadable: then removed, with one line)."""
        import openvino as ov

        path = self.cache_path
        if not path.exists():
            return None
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            if manifest != key:
                raise ValueError("it was made for another checkpoint or engine version")
            core = ov.Core()
            return {part: core.read_model(path / f"{part}.xml") for part in _PARTS}
        except Exception as e:  # noqa: BLE001 - any unreadable entry is rebuilt, never a traceback
            reason = " ".join(str(e).split())[:160] or type(e).__name__
            self.say(f"openvino: the cached model in {path} is unreadable ({reason}); rebuilding it")
            shutil.rmtree(path, ignore_errors=True)
            self.rebuilt = True
            return None

    @torch.no_grad()
    def _convert(self, root: Path, key: dict[str, Any]) -> dict[str, Any]:
        """Convert both graphs, write them to the cache atomically and return them."""
        import openvino as ov

        probe = self.probe
        example = self._step_example()
        hw = probe["sizes"][-1][0] * probe["sizes"][-1][1]
        self.say(f"openvino: converting SAM 2 {key['model']} at {self.resolution} px (once; cached in {root}) ...")
        start = time.perf_counter()
        step_inputs = example["step_inputs"]
        models = {  # static shapes (one frame, one bank size): OpenVINO plans a static graph faster
            "encoder": ov.convert_model(
                _Encoder(self.net), example_input=(probe["image"],), input=[list(probe["image"].shape)]
            ),
            "step": ov.convert_model(
                _Step(self.net, example["slots"], hw, example["mem_dtype"]),
                example_input=step_inputs,
                input=[list(x.shape) for x in step_inputs],
            ),
        }
        self.say(f"openvino: converted the image encoder and the tracker step in {time.perf_counter() - start:.1f} s")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            for part, model in models.items():
                ov.save_model(model, tmp / f"{part}.xml", compress_to_fp16=False)
            (tmp / "manifest.json").write_text(json.dumps(key, sort_keys=True))
            shutil.rmtree(self.cache_path, ignore_errors=True)
            os.replace(tmp, self.cache_path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            self.say(f"openvino: could not cache the converted model in {root} ({e}); it is converted again next time")
        return models

    # ------------------------------------------------------------------ running
    def _run(self, part: str, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        request = self.requests[part]
        arrays = [np.ascontiguousarray(x.detach().numpy()) for x in inputs]
        request.infer(arrays, share_inputs=True)
        return [
            torch.from_numpy(np.array(request.get_output_tensor(i).data))
            for i in range(len(self.compiled[part].outputs))
        ]

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """The image encoder on a ``(1, 3, S, S)`` frame: ``(feats, pos, sizes)`` as ``_prepare_backbone_features``."""
        feats = self._run("encoder", (images.float(),))
        return feats, list(self.probe["pos"]), list(self.probe["sizes"])

    def steady(
        self,
        bank: SteadyBank,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        stage: Callable[[str], Any],
    ) -> StepOutput:
        """One steady-state frame: the bank is read and written in torch, the rest runs in OpenVINO."""
        buf = bank.buffers
        with stage("memory_attention"):
            read = read_bank(bank, 1)
        with stage("steady_step"):
            low_res, obj_score, new_mem, obj_ptr = self._run("step", _step_inputs(feats, pos[-1], read, buf))
        with stage("memory_encoder"):
            write_bank(bank, read.t, new_mem, obj_ptr)
        return pack_output(low_res, obj_score)


def _step_inputs(feats: Any, pos: torch.Tensor, read: Any, buf: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The step graph's inputs in its signature's order: the same tuple converts it and runs it."""
    return (
        *feats,
        pos,
        read.mem,
        read.mem_pos,
        read.ptr_mem,
        read.ptr_pos,
        buf["k_cond"],
        buf["v_cond"],
        read.values,
    )
