"""Streaming SAM 2: prompt once, then track one frame at a time with bounded memory.

sam2 ships no streaming API (``SAM2VideoPredictor.init_state`` loads a whole
video), so :class:`StreamingTracker` drives ``SAM2Base``'s own building blocks
per frame, in the order the official predictor runs them:

1. preprocess: resize to ``image_size`` and normalise (as sam2's frame loader);
2. image encoder: ``forward_image`` + ``_prepare_backbone_features``;
3. memory attention: ``_prepare_memory_conditioned_features`` over the stored memory
   (re-implemented in :meth:`StreamingTracker._memory_conditioned` with a per-entry
   cache of what does not change between frames, see there);
4. mask decoder: ``_forward_sam_heads`` with the prompt on conditioning frames;
5. memory encoder: ``_encode_new_memory`` on the predicted mask;
6. postprocess: float32 logits and the visibility score, ready on the host side
   (upsampling to the frame happens on demand, see :attr:`TrackResult.logits`).

Memory is bounded: SAM 2's memory attention only reads the conditioning
frame(s), the last ``num_maskmem - 1`` frames' spatial memories and the last
``max_obj_ptrs_in_encoder - 1`` frames' object pointers, so anything older is
dropped after every frame. With the same weights and the same preprocessed
frames the tracker reproduces the official predictor's mask logits (see
``tests/test_reference.py``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from greenscreen_cam.errors import PromptError
from greenscreen_cam.track import sam2_private

if TYPE_CHECKING:
    from greenscreen_cam.track.steady import SteadyBank
from greenscreen_cam.track.prompt import Prompt, fmt_box

__all__ = ["STAGES", "Encoded", "Prompt", "StreamingTracker", "TrackResult", "fmt_box"]

STAGES = (
    "preprocess",
    "image_encoder",
    "memory_attention",
    "mask_decoder",
    "memory_encoder",
    "postprocess",
)

_IMG_MEAN = (0.485, 0.456, 0.406)
_IMG_STD = (0.229, 0.224, 0.225)
_STREAM_LENGTH = 2**31 - 1
"""``num_frames`` given to SAM 2: a live stream has no end, so no pointer window is cut short.

sam2 scales the object pointers' temporal encoding by ``min(num_frames, max_obj_ptrs_in_encoder) - 1``:
on a video shorter than 16 frames the official predictor's scale is shorter than a stream's, and its
masks drift from greencam's from frame 1 (by about 1e-5 in the logits). From 16 frames on, the two
are the same bit for bit; the official comparisons in the tests use clips of at least 16 frames."""


@dataclass
class TrackResult:
    """The tracker's output for one frame.

    Attributes:
        frame_index: Index of the frame in the tracker's stream (0 = first frame seen).
        low_res_logits: SAM 2's ``(1, 1, S/4, S/4)`` float32 mask logits on the tracker's device.
        frame_hw: ``(H, W)`` of the frame they belong to.
        object_score: SAM 2's object-visibility logit; ``> 0`` means the subject is visible.
        is_prompt_frame: True on a frame that received a prompt.
        parts: For the union of several subjects (:func:`greenscreen_cam.track.multi.union_result`),
            each subject's own result; ``low_res_logits`` is then only their low-resolution maximum,
            and the key is taken from the parts, each upsampled first (the official order).
    """

    frame_index: int
    low_res_logits: torch.Tensor
    frame_hw: tuple[int, int]
    object_score: float
    is_prompt_frame: bool = False
    _logits: torch.Tensor | None = None
    _low_host: np.ndarray | None = None
    """The low-resolution logits already copied to the host (the steady-state step copies them once)."""
    parts: tuple[TrackResult, ...] = ()

    @property
    def visible(self) -> bool:
        return self.object_score > 0

    @property
    def logits(self) -> torch.Tensor:
        """Mask logits at the frame's resolution, ``(H, W)`` float32 (bilinear, as sam2 upsamples).

        For a union, the per-pixel maximum of every subject's own upsampled logits: exactly the
        official predictor's ``(video_res_masks > 0).any(0)`` where it is ``> 0``.
        """
        if self._logits is None and self.parts:
            self._logits = torch.stack([p.logits for p in self.parts]).amax(dim=0)
        if self._logits is None:
            self._logits = F.interpolate(self.low_res_logits, size=self.frame_hw, mode="bilinear", align_corners=False)[
                0, 0
            ]
        return self._logits

    def low_res_numpy(self) -> np.ndarray:
        """The low-resolution logits as a ``(S/4, S/4)`` float32 numpy array (for the compositor).

        A union of ``n`` subjects gives ``(n, S/4, S/4)``, one plane per subject: the compositor
        upsamples each before they meet (:func:`greenscreen_cam.key.compositor.upsample_union`).
        """
        if self.parts:
            return np.stack([p.low_res_numpy() for p in self.parts])
        if self._low_host is not None:
            return self._low_host
        return self.low_res_logits[0, 0].float().cpu().numpy()

    def probabilities(self) -> np.ndarray:
        """Subject probability per pixel: ``(H, W)`` float32 numpy array in ``[0, 1]``."""
        return torch.sigmoid(self.logits).float().cpu().numpy()


@dataclass
class Encoded:
    """One frame's image-encoder output, as SAM 2's ``_prepare_backbone_features`` gives it.

    Attributes:
        feats: Per level ``(H*W, 1, C)`` features, highest resolution first.
        pos: Matching positional encodings.
        sizes: Per level ``(H, W)``.
    """

    feats: list[torch.Tensor]
    pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]


class StreamingTracker:
    """Track one subject through a stream of frames with a SAM 2 model.

    Args:
        model: A sam2 ``SAM2Base`` (as built by :func:`greenscreen_cam.track.models.load_model`).
        autocast: dtype for ``torch.autocast`` (bf16 on CUDA) or None for float32.
        profile: Record per-stage wall times (synchronising CUDA after each stage).
        steady: Track frames whose memory bank is full with the fixed-shape, sync-free step of
            :mod:`greenscreen_cam.track.steady` (bit-exact with the eager step in float32; used in
            float32, or under autocast when ``captured``). False = always the eager step.
        captured: Replay that step as a CUDA graph (``--compile on``; CUDA only, see
            :func:`greenscreen_cam.track.steady.resolve_compile`). Call :meth:`prepare` before the camera
            opens so that the capture does not delay a live frame.
        engine: An :class:`~greenscreen_cam.track.openvino_engine.OpenVINOEngine` over ``model``
            (``--engine openvino``): it runs the image encoder of single frames and the steady step.

    Frames are ``(H, W, 3)`` uint8 **RGB** numpy arrays. Use :meth:`prompt` on the
    frame where the subject is selected, then :meth:`track` on every following
    frame. :meth:`prompt` can be called again at any time (re-selection).
    """

    def __init__(
        self,
        model: Any,
        *,
        autocast: torch.dtype | None = None,
        profile: bool = False,
        steady: bool = True,
        captured: bool = False,
        engine: Any = None,
    ) -> None:
        if getattr(model, "memory_temporal_stride_for_eval", 1) != 1:
            raise ValueError("only memory_temporal_stride_for_eval == 1 is supported")
        self.model = model
        self.device = model.device
        self.image_size: int = int(model.image_size)
        self.autocast = autocast
        self.profile = profile
        self.engine = engine
        self.timings: dict[str, list[float]] = defaultdict(list)
        self._mean = torch.tensor(_IMG_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMG_STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._keep_mem = int(model.num_maskmem) - 1
        self._keep_ptr = max(self._keep_mem, int(model.max_obj_ptrs_in_encoder) - 1)
        self._pos_enc: list[torch.Tensor] | None = None
        self._to_unit = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
        """uint8 -> [0, 1] float32 lookup, equal to sam2's ``x.astype(float64) / 255`` then ``.float()``."""
        # Verified bit-exact in float32 (tests/test_segmenter_cache.py); under autocast sam2's own code runs.
        self._fast_memory = autocast is None and supports_cached_memory_attention(model)
        _install_cached_pos_embed(model)
        from greenscreen_cam.track.steady import SteadyBank

        if captured and self.device.type != "cuda":
            raise ValueError("a captured step needs a CUDA device")
        supported = supports_cached_memory_attention(model)
        self._captured_mode = captured and supported
        self._bank = SteadyBank(model) if steady and supported and (autocast is None or captured) else None
        self._graph: Any = None
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the prompt and all memory; the next frame must be a :meth:`prompt`."""
        self._memory: dict[str, dict[int, dict[str, Any]]] = {
            "cond_frame_outputs": {},
            "non_cond_frame_outputs": {},
        }
        # Per stored frame: what memory attention computes from that frame alone and that
        # stays the same while the frame is held (see _memory_conditioned).
        self._kv_cache: dict[int, dict[str, list[torch.Tensor]]] = {}
        self._frame_index = -1
        bank = getattr(self, "_bank", None)
        if bank is not None:
            bank.active = False  # its buffers (and a captured graph reading them) stay allocated

    @property
    def is_prompted(self) -> bool:
        return bool(self._memory["cond_frame_outputs"])

    @property
    def frame_index(self) -> int:
        """Index of the last frame processed (-1 before the first)."""
        return self._frame_index

    def stored_entries(self) -> tuple[int, int]:
        """``(conditioning entries, non-conditioning entries)`` currently held in memory."""
        if self.steady_active:
            return len(self._memory["cond_frame_outputs"]), self._bank.ptr_slots  # type: ignore[union-attr]
        return len(self._memory["cond_frame_outputs"]), len(self._memory["non_cond_frame_outputs"])

    def stored_bytes(self) -> int:
        """Bytes held by stored memory tensors."""
        total = 0
        for frames in self._memory.values():
            for entry in frames.values():
                for value in entry.values():
                    if isinstance(value, torch.Tensor):
                        total += value.numel() * value.element_size()
        for cached in self._kv_cache.values():
            for tensors in cached.values():
                total += sum(x.numel() * x.element_size() for x in tensors)
        if self._bank is not None:
            total += self._bank.nbytes()
        return total

    @property
    def steady_active(self) -> bool:
        """True while frames run the fixed-shape steady-state step (the bank is full)."""
        return self._bank is not None and self._bank.active

    # ------------------------------------------------------------------ handing the memory to a batch
    # What greencam serve's stacked step (batched.py) needs from a tracker whose memory it takes over.
    def steady_bank(self) -> SteadyBank | None:
        """The tracker's own full steady bank while :attr:`steady_active`, else None."""
        return self._bank if self.steady_active else None

    def prime_bank(self, bank: SteadyBank, t: int) -> None:
        """Fill ``bank`` from this tracker's stored memory, as of frame ``t``."""
        bank.prime(self._memory, t)

    def release_memory(self) -> None:
        """Drop every non-conditioning memory (a batch now holds it); the prompt stays (:attr:`is_prompted`)."""
        self._memory["non_cond_frame_outputs"] = {}
        self._kv_cache = {}

    def advance_frame(self) -> int:
        """Count one frame tracked outside this tracker (by a batch); returns the new :attr:`frame_index`."""
        self._frame_index += 1
        return self._frame_index

    @property
    def captured(self) -> bool:
        """True once the steady-state step has been captured as a CUDA graph."""
        return self._graph is not None

    # ------------------------------------------------------------------ public API
    def preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` frame -> normalised ``(1, 3, S, S)`` float32 on the device.

        On the CPU (and MPS) this is exactly sam2's frame loader (PIL bicubic
        resize of the uint8 image, then /255 and mean/std); on CUDA the resize runs
        on the GPU (bicubic with antialiasing, rounded to uint8 levels), so only the
        raw frame is copied over.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        img = self._resize_on_device(frame) if self.device.type == "cuda" else self._resize_like_sam2(frame)
        return (img - self._mean) / self._std

    def _resize_like_sam2(self, frame: np.ndarray) -> torch.Tensor:
        """sam2's own frame loading: PIL bicubic on uint8, then /255 in float64 -> ``(1, 3, S, S)`` in [0, 1]."""
        from PIL import Image

        s = self.image_size
        resized = np.asarray(Image.fromarray(frame).resize((s, s), Image.Resampling.BICUBIC))
        img = torch.from_numpy(self._to_unit[resized]).permute(2, 0, 1)[None]
        return img.to(self.device)

    def _resize_on_device(self, frame: np.ndarray) -> torch.Tensor:
        """The same resize on the tracker's device (antialiased bicubic, rounded to uint8 levels)."""
        s = self.image_size
        raw = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, non_blocking=True)
        raw = raw.permute(2, 0, 1)[None].float()
        img = F.interpolate(raw, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
        return img.round_().clamp_(0, 255).div_(255.0)

    def prompt(self, frame: np.ndarray, prompt: Prompt) -> TrackResult:
        """Select the subject on ``frame``; it becomes the conditioning frame.

        Any earlier prompt and memory is dropped, so a re-selection starts clean.
        """
        h, w = frame.shape[:2]
        prompt.validate(w, h)
        with self.stage("preprocess"):
            image = self.preprocess(frame)
        return self.step(image, (h, w), prompt)

    def track(self, frame: np.ndarray) -> TrackResult:
        """Track the subject into the next frame of the stream."""
        if not self.is_prompted:
            raise PromptError("the tracker has no prompt yet; select a subject first")
        with self.stage("preprocess"):
            image = self.preprocess(frame)
        return self.step(image, frame.shape[:2], None)

    # ------------------------------------------------------------------ core
    def _point_inputs(self, prompt: Prompt, height: int, width: int) -> dict[str, torch.Tensor]:
        coords: list[tuple[float, float]] = []
        labels: list[int] = []
        if prompt.box is not None:
            x, y, bw, bh = prompt.box
            coords += [(x, y), (x + bw, y + bh)]
            labels += [2, 3]
        coords += list(prompt.points)
        labels += list(prompt.labels)
        pts = torch.tensor(coords, dtype=torch.float32)[None]
        pts = pts / torch.tensor([width, height], dtype=torch.float32) * self.image_size
        return {
            "point_coords": pts.to(self.device),
            "point_labels": torch.tensor(labels, dtype=torch.int32)[None].to(self.device),
        }

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> list[Encoded]:
        """Run the image encoder on a ``(B, 3, S, S)`` batch of preprocessed frames.

        Only the shared model is used, so one call can serve the frames of several
        trackers that share a model (``greencam serve`` batches its sessions this
        way); each returned :class:`Encoded` then goes to its own tracker's
        :meth:`step_encoded`.
        """
        amp = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else nullcontext()
        with amp, self.stage("image_encoder"):
            if self.engine is not None and images.shape[0] == 1:  # the converted encoder takes one frame
                feats, pos, sizes = self.engine.encode(images)
            else:
                backbone = self.model.forward_image(images)
                _, feats, pos, sizes = sam2_private.prepare_backbone_features(self.model, backbone)
        batch = int(images.shape[0])
        if batch == 1:
            return [Encoded(list(feats), list(pos), list(sizes))]
        return [
            Encoded(
                [f[:, i : i + 1].contiguous() for f in feats],
                [p[:, i : i + 1].contiguous() for p in pos],
                list(sizes),
            )
            for i in range(batch)
        ]

    def step(self, image: torch.Tensor, frame_hw: tuple[int, int], prompt: Prompt | None) -> TrackResult:
        """Run one frame given its preprocessed ``(1, 3, S, S)`` tensor.

        ``prompt`` (in frame pixels of size ``frame_hw``) makes it a conditioning
        frame; otherwise the frame is tracked from memory.
        """
        if prompt is None and not self.is_prompted:
            raise PromptError("the tracker has no prompt yet; select a subject first")
        return self.step_encoded(self.encode(image)[0], frame_hw, prompt)

    @torch.inference_mode()
    def step_encoded(self, encoded: Encoded, frame_hw: tuple[int, int], prompt: Prompt | None) -> TrackResult:
        """Memory attention, mask decoder and memory encoder for one frame already through :meth:`encode`."""
        model = self.model
        height, width = int(frame_hw[0]), int(frame_hw[1])
        is_cond = prompt is not None
        if is_cond:
            self.reset()
        elif not self.is_prompted:
            raise PromptError("the tracker has no prompt yet; select a subject first")
        self._frame_index += 1
        t = self._frame_index
        if not is_cond and self._bank is not None and (self._bank.active or t >= self._bank.full_at):
            return self._steady_step(encoded, t, (height, width))
        point_inputs = self._point_inputs(prompt, height, width) if prompt is not None else None
        feats, pos, sizes = encoded.feats, encoded.pos, encoded.sizes
        amp = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else nullcontext()
        with amp:
            with self.stage("memory_attention"):
                if self._fast_memory and not is_cond:
                    pix_feat = self._memory_conditioned(t, feats[-1], pos[-1], sizes[-1])
                else:
                    pix_feat = sam2_private.prepare_memory_conditioned_features(
                        model,
                        frame_idx=t,
                        is_init_cond_frame=is_cond,
                        current_vision_feats=feats[-1:],
                        current_vision_pos_embeds=pos[-1:],
                        feat_sizes=sizes[-1:],
                        output_dict=self._memory,
                        num_frames=_STREAM_LENGTH,
                    )
            with self.stage("mask_decoder"):
                high_res_features = [
                    x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
                    for x, s in zip(feats[:-1], sizes[:-1], strict=True)
                ]
                heads = sam2_private.forward_sam_heads(
                    model,
                    backbone_features=pix_feat,
                    point_inputs=point_inputs,
                    mask_inputs=None,
                    high_res_features=high_res_features,
                    multimask_output=sam2_private.use_multimask(model, is_cond, point_inputs),
                )
                low_res, high_res, obj_ptr, obj_score = heads[3], heads[4], heads[5], heads[6]
            with self.stage("memory_encoder"):
                maskmem, maskmem_pos = sam2_private.encode_new_memory(
                    model,
                    current_vision_feats=feats,
                    feat_sizes=sizes,
                    pred_masks_high_res=high_res,
                    object_score_logits=obj_score,
                    is_mask_from_pts=is_cond,
                )
        entry = {
            # Stored in bf16 like the official predictor: half the memory, same results.
            "maskmem_features": maskmem.to(torch.bfloat16),
            "maskmem_pos_enc": self._shared_pos_enc(maskmem_pos),
            "obj_ptr": obj_ptr,
            "object_score_logits": obj_score,
        }
        self._memory["cond_frame_outputs" if is_cond else "non_cond_frame_outputs"][t] = entry
        self._prune(t)
        with self.stage("postprocess"):
            low = low_res.float()
            score = float(obj_score.float().reshape(-1)[0])  # also waits for the device
        return TrackResult(t, low, (height, width), score, is_cond)

    def _steady_step(self, encoded: Encoded, t: int, frame_hw: tuple[int, int]) -> TrackResult:
        """Frame ``t`` through the fixed-shape step of :mod:`greenscreen_cam.track.steady` (the bank is full)."""
        from greenscreen_cam.track.steady import CapturedStep, steady_step

        bank = self._bank
        assert bank is not None
        amp = (
            torch.autocast(self.device.type, dtype=self.autocast, cache_enabled=False)
            if self.autocast is not None
            else nullcontext()
        )
        with amp:
            if not bank.active:
                before = dict(bank.buffers)
                bank.prime(self._memory, t)
                if any(before.get(k) is not v for k, v in bank.buffers.items()):
                    self._graph = None  # new buffers: a graph over the old ones is stale
                # the bank now holds the memory: keep only the conditioning entry (is_prompted)
                self._memory["non_cond_frame_outputs"] = {}
                self._kv_cache = {}
            if self._captured_mode and self._graph is None:
                with self.stage("capture"):
                    self._graph = CapturedStep(bank, encoded.feats, encoded.pos, encoded.sizes, self.autocast)
            if self._graph is not None:
                with self.stage("steady_step"):
                    out = self._graph(encoded.feats, encoded.pos)
            elif self.engine is not None:
                out = self.engine.steady(bank, encoded.feats, encoded.pos, self.stage)
            else:
                out = steady_step(bank, encoded.feats, encoded.pos, encoded.sizes, self.stage)
        with self.stage("postprocess"):
            # the frame's one device-to-host copy: mask logits with the object score behind them
            host = out.packed if out.packed.device.type == "cpu" else out.packed.to("cpu")
            row = host.numpy()[0]
            score = float(row[-1])
            side = out.low_res.shape[-1]
            low = out.low_res.clone() if self._graph is not None else out.low_res
        return TrackResult(t, low, frame_hw, score, False, _low_host=row[:-1].reshape(side, side))

    @torch.inference_mode()
    def prepare(self, frame_hw: tuple[int, int] = (480, 640)) -> None:
        """Build what the steady-state step needs (buffers, a CUDA graph) on blank frames, then reset.

        Call before the camera opens: the first live frames then never wait for a capture.
        Does nothing without a steady-state step.
        """
        if self._bank is None:
            return
        h, w = frame_hw
        blank = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
        box = Prompt(box=(w / 4, h / 4, w / 2, h / 2))
        self.step(blank, (h, w), box)
        for _ in range(self._bank.full_at + 2):
            self.step(blank, (h, w), None)
        self.reset()
        self.timings.clear()

    def _memory_conditioned(
        self, t: int, feat: torch.Tensor, feat_pos: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """sam2's ``_prepare_memory_conditioned_features`` + ``memory_attention`` for tracked frame ``t``.

        The same operations on the same tensors in the same order as sam2 (so the
        same numbers), except that what depends on one stored frame alone is
        computed once per frame instead of on every frame that reads it: per layer,
        the cross-attention values ``v_proj(memory)`` of every stored frame, and the
        rotated keys of the conditioning frame (whose temporal position never
        changes). Keys of the other frames depend on their temporal position, which
        moves by one every frame, and the object pointers are a few tokens: both are
        computed as sam2 does.

        Args:
            t: Index of the frame being tracked.
            feat: Its top-level image features, ``(H*W, B, C)``.
            feat_pos: Their positional encoding, same shape.
            size: ``(H, W)`` of the top level.

        Returns:
            The memory-conditioned features, ``(B, C, H, W)``.
        """
        from sam2.modeling.position_encoding import apply_rotary_enc
        from sam2.modeling.sam2_utils import get_1d_sine_pe

        model = self.model
        batch, channels = feat.size(1), model.hidden_dim
        height, width = size
        device = feat.device
        num_maskmem = int(model.num_maskmem)
        cond = self._memory["cond_frame_outputs"]
        non_cond = self._memory["non_cond_frame_outputs"]

        # Stored frames read, in sam2's order: conditioning frames (t_pos 0), then t-6 .. t-1.
        spatial: list[tuple[int, int, dict[str, Any]]] = [(0, idx, entry) for idx, entry in cond.items()]
        for t_pos in range(1, num_maskmem):
            entry = non_cond.get(t - (num_maskmem - t_pos))
            if entry is not None:
                spatial.append((t_pos, t - (num_maskmem - t_pos), entry))

        # Object pointers, exactly as sam2 builds them (a few tokens: not cached).
        max_ptrs = min(_STREAM_LENGTH, int(model.max_obj_ptrs_in_encoder))
        signed = model.use_signed_tpos_enc_to_obj_ptrs
        pos_and_ptrs = [((t - c) if signed else abs(t - c), out["obj_ptr"]) for c, out in cond.items() if c <= t]
        for t_diff in range(1, max_ptrs):
            if t - t_diff < 0:
                break
            out = non_cond.get(t - t_diff)
            if out is not None:
                pos_and_ptrs.append((t_diff, out["obj_ptr"]))
        ptr_mem: torch.Tensor | None = None
        ptr_pos: torch.Tensor | None = None
        if pos_and_ptrs:
            pos_list, ptrs_list = zip(*pos_and_ptrs, strict=True)
            ptr_mem = torch.stack(ptrs_list, dim=0)
            if model.add_tpos_enc_to_obj_ptrs:
                tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
                obj_pos = torch.tensor(pos_list).to(device=device, non_blocking=True)
                obj_pos = get_1d_sine_pe(obj_pos / (max_ptrs - 1), dim=tpos_dim)
                ptr_pos = model.obj_ptr_tpos_proj(obj_pos).unsqueeze(1).expand(-1, batch, model.mem_dim)
            else:
                ptr_pos = ptr_mem.new_zeros(len(pos_list), batch, model.mem_dim)
            if model.mem_dim < channels:
                split = channels // model.mem_dim
                ptr_mem = ptr_mem.reshape(-1, batch, split, model.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                ptr_pos = ptr_pos.repeat_interleave(split, dim=0)

        # sam2 concatenates everything first, which promotes dtypes: do the same per part.
        mem_parts = [entry["maskmem_features"].dtype for _, _, entry in spatial]
        pos_parts = [
            torch.promote_types(entry["maskmem_pos_enc"][-1].dtype, model.maskmem_tpos_enc.dtype)
            for _, _, entry in spatial
        ]
        if ptr_mem is not None and ptr_pos is not None:
            mem_parts.append(ptr_mem.dtype)
            pos_parts.append(ptr_pos.dtype)
        mem_dtype, pos_dtype = mem_parts[0], pos_parts[0]
        for dt in mem_parts[1:]:
            mem_dtype = torch.promote_types(mem_dtype, dt)
        for dt in pos_parts[1:]:
            pos_dtype = torch.promote_types(pos_dtype, dt)

        # Batch-first, as sam2's MemoryAttention runs its layers.
        attention = model.memory_attention
        output = feat
        if attention.pos_enc_at_input:
            output = output + 0.1 * feat_pos
        output = output.transpose(0, 1)
        query_pos = feat_pos.transpose(0, 1)
        mem_bf: list[torch.Tensor] = []  # per stored frame, (B, HW, mem_dim), sam2's memory dtype
        pos_bf: list[torch.Tensor] = []
        for t_pos, _, entry in spatial:
            mem_bf.append(
                entry["maskmem_features"].to(device).flatten(2).permute(2, 0, 1).to(mem_dtype).transpose(0, 1)
            )
            enc = entry["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            enc = enc + model.maskmem_tpos_enc[num_maskmem - t_pos - 1]
            pos_bf.append(enc.to(pos_dtype).transpose(0, 1))
        if ptr_mem is not None and ptr_pos is not None:
            ptr_mem_bf = ptr_mem.to(mem_dtype).transpose(0, 1)
            ptr_pos_bf = ptr_pos.to(pos_dtype).transpose(0, 1)

        for li, layer in enumerate(attention.layers):
            output = sam2_private.self_attention(layer, output, query_pos)
            # Cross-attention (sam2's MemoryAttentionLayer._forward_ca + RoPEAttention.forward).
            tgt2 = layer.norm2(output)
            attn = layer.cross_attn_image
            q = attn.q_proj(tgt2 + query_pos if layer.pos_enc_at_cross_attn_queries else tgt2)
            q = sam2_private.separate_heads(attn, q, attn.num_heads)
            side = math.sqrt(q.shape[-2])
            attn.freqs_cis = attn.freqs_cis.to(q.device)
            if attn.freqs_cis.shape[0] != q.shape[-2]:
                attn.freqs_cis = attn.compute_cis(end_x=side, end_y=side).to(q.device)
            keys: list[torch.Tensor] = []
            values: list[torch.Tensor] = []
            for (t_pos, idx, _), mem, pos in zip(spatial, mem_bf, pos_bf, strict=True):
                cached = self._kv_cache.setdefault(idx, {"v": [], "k": []})
                if len(cached["v"]) <= li:
                    cached["v"].append(sam2_private.separate_heads(attn, attn.v_proj(mem), attn.num_heads))
                values.append(cached["v"][li])
                if t_pos == 0 and len(cached["k"]) > li:
                    keys.append(cached["k"][li])
                    continue
                k = attn.k_proj(mem + pos if layer.pos_enc_at_cross_attn_keys else mem)
                k = sam2_private.separate_heads(attn, k, attn.num_heads)
                k = _rotate_keys(k, attn.freqs_cis)
                if t_pos == 0:
                    cached["k"].append(k)
                keys.append(k)
            q, _ = apply_rotary_enc(q, q[:, :, :0], freqs_cis=attn.freqs_cis)
            if ptr_mem is not None:
                k_ptr = attn.k_proj(ptr_mem_bf + ptr_pos_bf if layer.pos_enc_at_cross_attn_keys else ptr_mem_bf)
                keys.append(sam2_private.separate_heads(attn, k_ptr, attn.num_heads))
                values.append(sam2_private.separate_heads(attn, attn.v_proj(ptr_mem_bf), attn.num_heads))
            attended = F.scaled_dot_product_attention(q, torch.cat(keys, dim=-2), torch.cat(values, dim=-2))
            output = output + layer.dropout2(attn.out_proj(sam2_private.recombine_heads(attn, attended)))
            # MLP
            tgt2 = layer.norm3(output)
            tgt2 = layer.linear2(layer.dropout(layer.activation(layer.linear1(tgt2))))
            output = output + layer.dropout3(tgt2)
        normed = attention.norm(output).transpose(0, 1)
        return normed.permute(1, 2, 0).view(batch, channels, height, width)

    def _shared_pos_enc(self, pos: list[torch.Tensor]) -> list[torch.Tensor]:
        """The memory positional encoding is the same on every frame: keep one copy."""
        if self._pos_enc is None:
            self._pos_enc = [p[0:1].clone() for p in pos]
        return self._pos_enc

    def _prune(self, t: int) -> None:
        """Drop memory the next frame (t + 1) cannot read; keep pointers longer than spatial memory."""
        non_cond = self._memory["non_cond_frame_outputs"]
        for idx in [i for i in non_cond if i <= t - self._keep_ptr]:
            del non_cond[idx]
        for idx, entry in non_cond.items():
            if idx <= t - self._keep_mem and "maskmem_features" in entry:
                non_cond[idx] = {"obj_ptr": entry["obj_ptr"]}
        for idx in [i for i in self._kv_cache if "maskmem_features" not in non_cond.get(i, {})]:
            if idx not in self._memory["cond_frame_outputs"]:
                del self._kv_cache[idx]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        sync = self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(self.device)
        self.timings[name].append((time.perf_counter() - start) * 1000.0)


def supports_cached_memory_attention(model: Any) -> bool:
    """True when ``model``'s memory attention has the layout :meth:`StreamingTracker._memory_conditioned` reproduces.

    That is sam2's ``MemoryAttention`` (batch-first) of ``MemoryAttentionLayer`` s
    whose cross-attention is a ``RoPEAttention`` repeating its rotation over the
    memory frames, with object pointers in the encoder and at most one
    conditioning frame read per step. Anything else runs sam2's own function.
    """
    try:
        from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
        from sam2.modeling.sam.transformer import RoPEAttention
    except ImportError:
        return False
    attention: Any = getattr(model, "memory_attention", None)
    if type(attention) is not MemoryAttention or not attention.batch_first:
        return False
    for layer in attention.layers:
        if type(layer) is not MemoryAttentionLayer or type(layer.cross_attn_image) is not RoPEAttention:
            return False
        if not layer.cross_attn_image.rope_k_repeat or layer.training:
            return False
    return (
        bool(model.use_obj_ptrs_in_encoder)
        and int(model.num_maskmem) > 0
        and not model.training
        and getattr(model, "memory_temporal_stride_for_eval", 1) == 1
    )


def _install_cached_pos_embed(model: Any) -> None:
    """Cache the Hiera trunk's positional embedding per feature size (sam2 resizes it bicubically every call).

    The embedding depends only on the trunk's weights and the feature size, so
    the cached tensor is the one sam2 would compute; a change of the weights
    (their version counter) or of the autocast state computes it afresh.
    """
    trunk = getattr(getattr(model, "image_encoder", None), "trunk", None)
    # sam2's Hiera._get_pos_embed is wrapped in place; _greencam_pos_cache marks a trunk already wrapped
    compute = getattr(trunk, "_get_pos_embed", None)
    if trunk is None or compute is None or getattr(trunk, "_greencam_pos_cache", None) is not None:
        return
    cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def cached(hw: tuple[int, int]) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inside torch.compile: let it trace (and fold) sam2's own code
            return compute(hw)
        params = (trunk.pos_embed, trunk.pos_embed_window)
        device = params[0].device.type
        # torch's Tensor._version: the in-place write counter (a reloaded weight must miss the cache)
        key = (
            tuple(hw),
            *((p.data_ptr(), p._version) for p in params),
            torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None,
        )
        if key not in cache:
            cache.clear()
            with torch.inference_mode(False), torch.no_grad():
                cache[key] = compute(hw)
        return cache[key]

    trunk._greencam_pos_cache = cache
    trunk._get_pos_embed = cached


def _rotate_keys(k: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """sam2's ``apply_rotary_enc`` key path for the keys of one memory frame (as many tokens as the query).

    Args:
        k: ``(B, heads, N, D)`` keys.
        freqs_cis: ``(N, D/2)`` complex rotation.

    Returns:
        The rotated keys, same shape and dtype.
    """
    xk = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    if tuple(freqs_cis.shape) != tuple(xk.shape[-2:]):
        raise ValueError(f"rotation {tuple(freqs_cis.shape)} does not fit keys {tuple(xk.shape)}")
    freqs = freqs_cis.view(*([1] * (xk.ndim - 2)), *freqs_cis.shape)
    return torch.view_as_real(xk * freqs).flatten(3).type_as(k).to(k.device)
