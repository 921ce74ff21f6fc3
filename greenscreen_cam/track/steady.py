"""The steady-state SAM 2 step: one fixed shape per frame, no host synchronisation.

Once a stream's memory bank is full (the conditioning frame, ``num_maskmem - 1``
recent spatial memories and ``max_obj_ptrs_in_encoder - 1`` recent object
pointers: 1 + 6 + 15 for every SAM 2 / 2.1 model), every tensor of the per-frame
step has the same shape on every frame. :class:`SteadyBank` keeps that bank in
preallocated ring buffers, updated in place, with the ring positions computed
on the device from a device-side frame counter; :func:`steady_step` runs memory
attention, the mask decoder and the memory encoder over it. Nothing in the step
reads a tensor value on the host (the object score stays a tensor; sam2 already
masks by it with ``torch.where``), so the step can be captured as a CUDA graph
(:class:`CapturedStep`) and its one output, the low-resolution mask with the
object score packed behind it, is the frame's single device-to-host copy.

In float32 the step computes the same operations on the same numbers as
:meth:`greenscreen_cam.track.segmenter.StreamingTracker._memory_conditioned` and sam2's
decoder and memory encoder, so its logits are bit-identical to the eager
tracker's (``tests/test_steady.py``, 120 frames with an occlusion and a re-prompt).

Every buffer has a leading batch dimension ``B`` (1 today) so that the
batched serve step can stack several streams' banks, and the frame counter is
already per stream (``t`` is ``(B,)``). What still assumes ``B = 1``: the ring
read positions and the pointer positions are computed from ``t[0]``; stacked
streams that are not in lockstep need them per row (a ``gather`` with a
``(B, R)`` index, and ``obj_pos`` per stream, as issue 17 says).

Buffers (``R = num_maskmem - 1``, ``P = max_obj_ptrs_in_encoder - 1``,
``HW`` = top-level tokens, ``L`` memory-attention layers, ``h`` heads, ``D`` head dim):

- ``t``: ``(B,)`` int64, index of the last frame stored;
- ``mem``: ``(B, R, HW, mem_dim)`` spatial memories of frame ``f`` at slot ``f % R``;
- ``v``: ``(L, B, h, R, HW, D)`` their cross-attention values ``v_proj(mem)`` per layer;
- ``k_cond`` / ``v_cond``: ``(L, B, h, HW, D)`` the conditioning frame's rotated keys / values;
- ``ptr``: ``(B, P, C)`` object pointers of frame ``f`` at slot ``f % P``; ``ptr_cond``: ``(B, C)``;
- ``pos``: ``(1, R * HW, mem_dim)`` spatial positional + temporal encoding of the
  recent memories in reading order (the same for every frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from greenscreen_cam.track import sam2_private

__all__ = [
    "BankRead",
    "CapturedStep",
    "SteadyBank",
    "StepOutput",
    "attend_bank",
    "bank_full_at",
    "pack_output",
    "read_bank",
    "steady_step",
    "write_bank",
]

_MUTABLE = ("t", "mem", "v", "ptr")


def bank_full_at(model: Any) -> int:
    """The first frame index (counted from the conditioning frame, 0) whose step reads a full bank."""
    return max(int(model.num_maskmem) - 1, int(model.max_obj_ptrs_in_encoder) - 1) + 1


@dataclass
class StepOutput:
    """What one steady-state step leaves on the device.

    Attributes:
        packed: ``(B, S/4 * S/4 + 1)`` float32: each row the low-resolution mask logits, then the
            object score; the one tensor the host copies per frame.
        low_res: ``(B, 1, S/4, S/4)`` float32 view of the mask logits in ``packed``.
        score: ``(B, 1)`` float32 view of the object scores in ``packed``.
    """

    packed: torch.Tensor
    low_res: torch.Tensor
    score: torch.Tensor


class SteadyBank:
    """A full memory bank in preallocated, fixed-shape ring buffers (see the module docstring).

    Args:
        model: The sam2 ``SAM2Base`` whose memory it holds.
        batch: Streams stacked along the batch dimension (1 for one tracker).
    """

    def __init__(self, model: Any, batch: int = 1) -> None:
        self.model = model
        self.batch = batch
        self.slots = int(model.num_maskmem) - 1
        self.ptr_slots = int(model.max_obj_ptrs_in_encoder) - 1
        self.full_at = bank_full_at(model)
        self.buffers: dict[str, torch.Tensor] = {}
        self.mem_dtype: torch.dtype | None = None
        self.pos_dtype: torch.dtype | None = None
        self.active = False
        self._signature: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ filling
    def prime(self, memory: dict[str, dict[int, dict[str, Any]]], t: int) -> None:
        """Copy the eager memory bank read by frame ``t`` (one stream, ``B = 1``) into the buffers.

        Allocates the buffers on first use (and again only if shapes or dtypes change, which
        keeps the addresses a captured graph reads); computes each stored frame's values and the
        conditioning frame's rotated keys, as the eager cache does.

        Raises:
            ValueError: When ``memory`` is not a full bank for frame ``t`` (conditioning frame 0,
                spatial memories ``t - R .. t - 1``, pointers ``t - P .. t - 1``).
        """
        model = self.model
        cond = memory["cond_frame_outputs"]
        non_cond = memory["non_cond_frame_outputs"]
        recent = [t - self.slots + j for j in range(self.slots)]
        ptr_frames = [t - d for d in range(1, self.ptr_slots + 1)]
        if list(cond) != [0] or t < self.full_at:
            raise ValueError(f"frame {t}: the bank is not full (conditioning frames {list(cond)})")
        if any("maskmem_features" not in non_cond.get(f, {}) for f in recent) or any(
            f not in non_cond for f in ptr_frames
        ):
            raise ValueError(f"frame {t}: the bank is not full")
        cond_entry = cond[0]
        feats = cond_entry["maskmem_features"]
        pos_enc = cond_entry["maskmem_pos_enc"][-1]
        ptr_dtype = cond_entry["obj_ptr"].dtype
        # sam2 concatenates all memories first, which promotes dtypes: the same here.
        mem_dtype = torch.promote_types(feats.dtype, ptr_dtype)
        pos_dtype = torch.promote_types(torch.promote_types(pos_enc.dtype, model.maskmem_tpos_enc.dtype), ptr_dtype)
        device = feats.device
        attention = model.memory_attention
        attn0 = attention.layers[0].cross_attn_image
        heads = attn0.num_heads
        hw = feats.shape[-2] * feats.shape[-1]
        mem_dim = feats.shape[1]
        head_dim = attn0.internal_dim // heads
        n_layers = len(attention.layers)
        channels = cond_entry["obj_ptr"].shape[-1]
        b, r, p = self.batch, self.slots, self.ptr_slots
        signature = (device, mem_dtype, pos_dtype, hw, mem_dim, heads, head_dim, n_layers, channels, b)
        if signature != self._signature:
            self.buffers = {
                "t": torch.zeros(b, dtype=torch.int64, device=device),
                "mem": torch.zeros(b, r, hw, mem_dim, dtype=mem_dtype, device=device),
                "v": torch.zeros(n_layers, b, heads, r, hw, head_dim, dtype=mem_dtype, device=device),
                "k_cond": torch.zeros(n_layers, b, heads, hw, head_dim, dtype=mem_dtype, device=device),
                "v_cond": torch.zeros(n_layers, b, heads, hw, head_dim, dtype=mem_dtype, device=device),
                "ptr": torch.zeros(b, p, channels, dtype=ptr_dtype, device=device),
                "ptr_cond": torch.zeros(b, channels, dtype=ptr_dtype, device=device),
                "pos": torch.zeros(1, r * hw, mem_dim, dtype=pos_dtype, device=device),
                "pos_cond": torch.zeros(1, hw, mem_dim, dtype=pos_dtype, device=device),
            }
            self._signature = signature
        self.mem_dtype, self.pos_dtype = mem_dtype, pos_dtype
        buf = self.buffers
        num_maskmem = int(model.num_maskmem)

        def layout(entry: dict[str, Any]) -> torch.Tensor:  # (1, C, H, W) -> (1, HW, C), batch-first
            return entry["maskmem_features"].to(device).flatten(2).permute(2, 0, 1).to(mem_dtype).transpose(0, 1)

        def pos_for(t_pos: int) -> torch.Tensor:
            enc = pos_enc.to(device).flatten(2).permute(2, 0, 1)
            enc = enc + model.maskmem_tpos_enc[num_maskmem - t_pos - 1]
            return enc.to(pos_dtype).transpose(0, 1)

        cond_mem = layout(cond_entry)
        buf["pos_cond"].copy_(pos_for(0))
        for j in range(r):
            buf["pos"][:, j * hw : (j + 1) * hw].copy_(pos_for(j + 1))
        for li, layer in enumerate(attention.layers):
            attn = layer.cross_attn_image
            _ensure_freqs(attn, hw, device)
            buf["v_cond"][li].copy_(sam2_private.separate_heads(attn, attn.v_proj(cond_mem), heads))
            k = attn.k_proj(cond_mem + buf["pos_cond"] if layer.pos_enc_at_cross_attn_keys else cond_mem)
            buf["k_cond"][li].copy_(_rotate(sam2_private.separate_heads(attn, k, heads), attn.freqs_cis))
        for f in recent:
            self._store_spatial(layout(non_cond[f]), f % r)
        for f in ptr_frames:
            buf["ptr"][:, f % p].copy_(non_cond[f]["obj_ptr"])
        buf["ptr_cond"].copy_(cond_entry["obj_ptr"])
        buf["t"].fill_(t - 1)
        self.active = True

    def _store_spatial(self, mem: torch.Tensor, slot: int | torch.Tensor) -> None:
        """Write one frame's ``(B, HW, mem_dim)`` memory and its per-layer values into ring ``slot``."""
        buf = self.buffers
        index = slot if isinstance(slot, torch.Tensor) else torch.tensor([slot], device=mem.device)
        buf["mem"].index_copy_(1, index, mem.unsqueeze(1).to(buf["mem"].dtype))
        for li, layer in enumerate(self.model.memory_attention.layers):
            attn = layer.cross_attn_image
            v = sam2_private.separate_heads(attn, attn.v_proj(mem), attn.num_heads)  # bf16 under autocast
            buf["v"][li].index_copy_(2, index, v.unsqueeze(2).to(buf["v"].dtype))

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of the buffers a step changes (to undo warm-up runs before a capture)."""
        return {k: self.buffers[k].clone() for k in _MUTABLE}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for k, v in saved.items():
            self.buffers[k].copy_(v)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.buffers.values()) if self.active else 0


def pointer_tokens(
    model: Any,
    ptr_mem: torch.Tensor,
    ptr_pos: torch.Tensor,
    channels: int,
    mem_dtype: torch.dtype,
    pos_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Object pointers ``(tokens, B, C)`` and their positions as memory attention reads them.

    Pointers wider than the memory are split into ``C // mem_dim`` tokens each, as sam2 does;
    returned batch-first in the attention's dtypes: ``(B, tokens, mem_dim)`` twice.
    """
    batch = ptr_mem.shape[1]
    if model.mem_dim < channels:
        split = channels // model.mem_dim
        ptr_mem = ptr_mem.reshape(-1, batch, split, model.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        ptr_pos = ptr_pos.repeat_interleave(split, dim=0)
    return ptr_mem.to(mem_dtype).transpose(0, 1), ptr_pos.to(pos_dtype).transpose(0, 1)


def decode_masks(
    model: Any, pix_feat: torch.Tensor, feats: list[torch.Tensor], sizes: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sam2's mask decoder on memory-conditioned features: ``(low_res, high_res, obj_ptr, obj_score)``."""
    high_res_features = [
        x.permute(1, 2, 0).view(x.size(1), x.size(2), *s) for x, s in zip(feats[:-1], sizes[:-1], strict=True)
    ]
    heads = sam2_private.forward_sam_heads(
        model,
        backbone_features=pix_feat,
        point_inputs=None,
        mask_inputs=None,
        high_res_features=high_res_features,
        multimask_output=sam2_private.use_multimask(model, False, None),
    )
    return heads[3], heads[4], heads[5], heads[6]


def encode_memory(
    model: Any,
    feats: list[torch.Tensor],
    sizes: list[tuple[int, int]],
    high_res: torch.Tensor,
    obj_score: torch.Tensor,
    mem_dtype: torch.dtype,
) -> torch.Tensor:
    """sam2's memory encoder for this frame's mask, batch-first ``(B, HW, C)`` in the bank's dtype.

    Stored through bf16 like the official predictor, then read back in ``mem_dtype``.
    """
    maskmem, _ = sam2_private.encode_new_memory(
        model,
        current_vision_feats=feats,
        feat_sizes=sizes,
        pred_masks_high_res=high_res,
        object_score_logits=obj_score,
        is_mask_from_pts=False,
    )
    return maskmem.to(torch.bfloat16).flatten(2).permute(2, 0, 1).to(mem_dtype).transpose(0, 1)


def attend_memory(
    attention: Any,
    feat: torch.Tensor,
    feat_pos: torch.Tensor,
    mem: torch.Tensor,
    mem_pos: torch.Tensor,
    ptr_mem: torch.Tensor,
    ptr_pos: torch.Tensor,
    buf: dict[str, Any],
    recent_values: Callable[[int], torch.Tensor],
    mem_shape: tuple[int, int],
    out_shape: tuple[int, int, int, int],
    rotate: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """sam2's memory attention over a full bank, op for op (the one loop of the steady and stacked steps).

    Args:
        attention: The model's ``memory_attention``.
        feat, feat_pos: The current frame's features and positions, ``(HW, B, C)``.
        mem, mem_pos: The recent memories and their positions as read from the bank.
        ptr_mem, ptr_pos: Object-pointer tokens and positions, ``(B, tokens, mem_dim)``.
        buf: The bank's buffers (``k_cond`` and ``v_cond`` per layer: the conditioning frame's keys and values).
        recent_values: ``recent_values(layer)`` -> the recent memories' values for that layer, ``(B, h, R*HW, D)``.
        mem_shape: ``(R, HW)``: recent memories read and tokens per memory.
        out_shape: ``(B, C, H, W)`` of the conditioned features returned.
        rotate: ``rotate(x, attn)`` -> ``x`` (``(..., N, D)``) rotated by ``attn``'s rotary encoding, in
            place of sam2's complex-number form (the OpenVINO engine's real cos/sin form); None = sam2's.
    """
    from sam2.modeling.position_encoding import apply_rotary_enc

    r, hw = mem_shape
    batch, channels, height, width = out_shape
    device = feat.device
    output = feat
    if attention.pos_enc_at_input:
        output = output + 0.1 * feat_pos
    output = output.transpose(0, 1)
    query_pos = feat_pos.transpose(0, 1)
    for li, layer in enumerate(attention.layers):
        output = sam2_private.self_attention(layer, output, query_pos)
        tgt2 = layer.norm2(output)
        attn = layer.cross_attn_image
        q = attn.q_proj(tgt2 + query_pos if layer.pos_enc_at_cross_attn_queries else tgt2)
        q = sam2_private.separate_heads(attn, q, attn.num_heads)
        _ensure_freqs(attn, q.shape[-2], device)
        k_mem = attn.k_proj(mem + mem_pos if layer.pos_enc_at_cross_attn_keys else mem)
        k_mem = sam2_private.separate_heads(attn, k_mem, attn.num_heads)
        if rotate is None:
            k_mem = _rotate(k_mem.unflatten(-2, (r, hw)), attn.freqs_cis).flatten(-3, -2)
            q, _ = apply_rotary_enc(q, q[:, :, :0], freqs_cis=attn.freqs_cis)
        else:
            k_mem = rotate(k_mem.unflatten(-2, (r, hw)), attn).flatten(-3, -2)
            q = rotate(q, attn)
        v_mem = recent_values(li)
        k_ptr = attn.k_proj(ptr_mem + ptr_pos if layer.pos_enc_at_cross_attn_keys else ptr_mem)
        keys = torch.cat([buf["k_cond"][li], k_mem, sam2_private.separate_heads(attn, k_ptr, attn.num_heads)], dim=-2)
        values = torch.cat(
            [buf["v_cond"][li], v_mem, sam2_private.separate_heads(attn, attn.v_proj(ptr_mem), attn.num_heads)], dim=-2
        )
        attended = F.scaled_dot_product_attention(q, keys, values)
        output = output + layer.dropout2(attn.out_proj(sam2_private.recombine_heads(attn, attended)))
        tgt2 = layer.norm3(output)
        tgt2 = layer.linear2(layer.dropout(layer.activation(layer.linear1(tgt2))))
        output = output + layer.dropout3(tgt2)
    return attention.norm(output).transpose(0, 1).permute(1, 2, 0).view(batch, channels, height, width)


def _ensure_freqs(attn: Any, tokens: int, device: torch.device) -> None:
    """sam2's RoPEAttention keeps its rotation for the last token count it saw: make it fit ``tokens``."""
    attn.freqs_cis = attn.freqs_cis.to(device)
    if attn.freqs_cis.shape[0] != tokens:
        side = math.sqrt(tokens)
        attn.freqs_cis = attn.compute_cis(end_x=side, end_y=side).to(device)


def _rotate(k: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """sam2's rotary key encoding of ``(..., N, D)`` keys whose last ``N`` tokens match ``freqs_cis`` (N, D/2)."""
    xk = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    freqs = freqs_cis.view(*([1] * (xk.ndim - 2)), *freqs_cis.shape)
    return torch.view_as_real(xk * freqs).flatten(-2).type_as(k)


def steady_step(
    bank: SteadyBank,
    feats: list[torch.Tensor],
    pos: list[torch.Tensor],
    sizes: list[tuple[int, int]],
    stage: Callable[[str], AbstractContextManager[None]] | None = None,
) -> StepOutput:
    """Track one frame from a full bank and store it: the fixed-shape, sync-free step.

    Args:
        bank: A primed :class:`SteadyBank`; its counter and rings advance by one frame.
        feats: The frame's image features per level, ``(H*W, B, C)`` (as :class:`Encoded`).
        pos: Their positional encodings.
        sizes: Per level ``(H, W)``.
        stage: Optional per-stage timer (``StreamingTracker.stage``); None inside a capture.

    Returns:
        The frame's outputs, still on the device.
    """
    timed = stage or (lambda _name: nullcontext())
    model = bank.model
    with timed("memory_attention"):
        read = read_bank(bank, feats[-1].size(1))
        pix_feat = attend_bank(model, bank, read, feats, pos, sizes)
    with timed("mask_decoder"):
        low_res, high_res, obj_ptr, obj_score = decode_masks(model, pix_feat, feats, sizes)
    with timed("memory_encoder"):
        assert bank.mem_dtype is not None
        new_mem = encode_memory(model, feats, sizes, high_res, obj_score, bank.mem_dtype)
        write_bank(bank, read.t, new_mem, obj_ptr)
    return pack_output(low_res, obj_score)


@dataclass
class BankRead:
    """What one steady step reads from the bank (:func:`read_bank`), in memory attention's layout.

    Attributes:
        t: ``(B,)`` the frame being tracked (the bank's counter, already advanced).
        read_mem: ``(R,)`` ring slots of frames ``t-R .. t-1``.
        mem: ``(B, R*HW, mem_dim)`` recent spatial memories; ``mem_pos`` their positions.
        ptr_mem, ptr_pos: ``(B, tokens, mem_dim)`` object-pointer tokens and positions.
        values: ``(L, B, h, R*HW, D)`` the recent memories' cross-attention values per layer.
    """

    t: torch.Tensor
    read_mem: torch.Tensor
    mem: torch.Tensor
    mem_pos: torch.Tensor
    ptr_mem: torch.Tensor
    ptr_pos: torch.Tensor
    values: torch.Tensor


def read_bank(bank: SteadyBank, batch: int) -> BankRead:
    """Advance the bank's counter and gather what the frame reads (device-side, no host sync)."""
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    model = bank.model
    buf = bank.buffers
    channels = model.hidden_dim
    r, p = bank.slots, bank.ptr_slots
    mem_dtype, pos_dtype = bank.mem_dtype, bank.pos_dtype
    assert mem_dtype is not None and pos_dtype is not None
    device = buf["t"].device
    t = buf["t"].add_(1)  # (B,) the frame being tracked
    steps = torch.arange(r + p + 1, device=device)
    read_mem = torch.remainder(t[:, None] + steps[None, :r], r)[0]  # slots of t-R .. t-1
    read_ptr = torch.remainder(t[:, None] - steps[None, 1 : p + 1], p)[0]  # slots of t-1 .. t-P
    mem = buf["mem"].index_select(1, read_mem).flatten(1, 2)  # (B, R*HW, mem_dim)
    mem_pos = buf["pos"].expand(batch, -1, -1)

    # Object pointers [conditioning frame, t-1, ..., t-P], as sam2 builds them.
    ptrs = torch.cat([buf["ptr_cond"][:, None], buf["ptr"].index_select(1, read_ptr)], dim=1)
    ptr_mem = ptrs.transpose(0, 1)  # (1 + P, B, C)
    n_ptr = p + 1
    if model.add_tpos_enc_to_obj_ptrs:
        tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
        # the conditioning frame's pointer is t frames away (the conditioning frame is frame 0)
        pos_ints = torch.cat([t[:1], steps[1 : p + 1]])
        obj_pos = get_1d_sine_pe(pos_ints / p, dim=tpos_dim)
        ptr_pos = model.obj_ptr_tpos_proj(obj_pos).unsqueeze(1).expand(-1, batch, model.mem_dim)
    else:
        ptr_pos = ptr_mem.new_zeros(n_ptr, batch, model.mem_dim)
    ptr_mem_bf, ptr_pos_bf = pointer_tokens(model, ptr_mem, ptr_pos, channels, mem_dtype, pos_dtype)
    values = buf["v"].index_select(3, read_mem).flatten(3, 4)
    return BankRead(t, read_mem, mem, mem_pos, ptr_mem_bf, ptr_pos_bf, values)


def attend_bank(
    model: Any,
    bank: SteadyBank,
    read: BankRead,
    feats: list[torch.Tensor],
    pos: list[torch.Tensor],
    sizes: list[tuple[int, int]],
    rotate: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Memory attention of the frame over what :func:`read_bank` read: ``(B, C, H, W)``."""
    feat = feats[-1]
    height, width = sizes[-1]
    return attend_memory(
        model.memory_attention,
        feat,
        pos[-1],
        read.mem,
        read.mem_pos,
        read.ptr_mem,
        read.ptr_pos,
        bank.buffers,
        lambda li: read.values[li],
        (bank.slots, height * width),
        (feat.size(1), model.hidden_dim, height, width),
        rotate,
    )


def write_bank(bank: SteadyBank, t: torch.Tensor, new_mem: torch.Tensor, obj_ptr: torch.Tensor) -> None:
    """Store frame ``t``'s memory ``(B, HW, mem_dim)`` and object pointer ``(B, C)`` in their ring slots."""
    buf = bank.buffers
    bank._store_spatial(new_mem, torch.remainder(t, bank.slots)[:1])
    buf["ptr"].index_copy_(1, torch.remainder(t, bank.ptr_slots)[:1], obj_ptr.to(buf["ptr"].dtype).unsqueeze(1))


def pack_output(low_res: torch.Tensor, obj_score: torch.Tensor) -> StepOutput:
    """The step's one output: ``low_res`` ``(B, 1, s, s)`` logits with the object score behind them."""
    batch = low_res.shape[0]
    packed = torch.cat([low_res.float().flatten(1), obj_score.float().reshape(batch, -1)[:, :1]], dim=1)
    side = low_res.shape[-1]
    return StepOutput(packed, packed[:, :-1].view(batch, 1, side, side), packed[:, -1:])


class CapturedStep:
    """:func:`steady_step` recorded once as a CUDA graph and replayed for every steady frame.

    The graph reads the frame's features from static input buffers (each call copies them in)
    and the bank's buffers at their fixed addresses, and writes a static output. Capture runs
    two warm-up steps on a side stream first (CUDA graphs need the allocator and lazy state
    warm); the bank is restored afterwards, so capturing changes no number in the stream.

    Args:
        bank: A primed bank (its buffers must stay allocated while the graph lives).
        feats, pos, sizes: A frame of the stream's shape (its values are only used to capture).
        autocast: The autocast dtype the step runs under, or None.
    """

    def __init__(
        self,
        bank: SteadyBank,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        autocast: torch.dtype | None,
    ) -> None:
        if feats[0].device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.bank = bank
        self.sizes = list(sizes)
        self.autocast = autocast
        self.feats = [f.clone() for f in feats]
        self.pos = [x.clone() for x in pos]
        saved = bank.snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                with self._amp():
                    steady_step(bank, self.feats, self.pos, self.sizes)
        torch.cuda.current_stream().wait_stream(side)
        bank.restore(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), self._amp():
            self.output = steady_step(bank, self.feats, self.pos, self.sizes)
        bank.restore(saved)

    def _amp(self) -> AbstractContextManager[Any]:
        if self.autocast is None:
            return nullcontext()
        # autocast's weight cache would hold tensors made outside the graph's memory pool
        return torch.autocast("cuda", dtype=self.autocast, cache_enabled=False)

    def __call__(self, feats: list[torch.Tensor], pos: list[torch.Tensor]) -> StepOutput:
        for dst, src in zip(self.feats, feats, strict=True):
            dst.copy_(src)
        for dst, src in zip(self.pos, pos, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return self.output


def resolve_compile(setting: str, device: str) -> bool:
    """Whether ``--compile`` (``auto``/``on``/``off``) captures the steady-state step on ``device``.

    ``auto`` is off everywhere until the captured path has been verified on a GPU (no GPU figures
    are recorded yet, see docs/benchmarks.md); ``on`` asks for it and needs CUDA.

    Raises:
        ConfigError: ``on`` with a device that is not CUDA (one line, no fallback: a user who asks
            for CUDA graphs on a CPU has a wrong setting, not a slow run).
    """
    from greenscreen_cam.errors import ConfigError

    if setting not in ("auto", "on", "off"):
        raise ConfigError(f"--compile {setting!r} is not one of auto, on, off")
    if setting != "on":
        return False
    if not device.startswith("cuda"):
        raise ConfigError(f"--compile on needs a CUDA device (this run uses {device}); use --compile auto or off")
    return True
