"""One batched SAM 2 step for every steady-state session of ``greencam serve``.

The fixed-shape step of :mod:`greenscreen_cam.track.steady` tracks one stream from a full memory
bank. :class:`SessionBatch` stacks the full banks of several streams that share one model
along the batch dimension, so that memory attention, the mask decoder and the memory encoder
run once per worker step for all of them (the image encoder is already batched, see
:func:`greenscreen_cam.link.worker.track_batch`).

- **Buckets.** The stacked banks live in one preallocated set of tensors per batch-size bucket
  (:data:`BUCKETS`: 1, 2, 4, 8, 16 rows, allocated the first time a bucket is needed and kept).
  A step always runs the whole bucket: rows without a frame this step (free slots, or sessions
  whose camera sent nothing new) compute but write nothing (``live`` mask, ``torch.where``), so
  joining or leaving costs a copy of one bank, never a reallocation, and every shape stays fixed.
- **Per-session positions.** Each row has its own frame counter ``t``: its ring slots and its
  object-pointer positions (``frame_idx - cond_idx``, the conditioning frame being frame 0) are
  computed per row on the device, not one position tensor expanded over the batch.
- **Sessions outside the batch.** A session that is being prompted, re-selected or is still
  filling its bank runs its own eager step beside the batch in the same call
  (:meth:`SessionBatch.track`) and joins the batch on its first frame with a full bank (its
  eager memory is copied into a free row through :class:`~greenscreen_cam.track.steady.SteadyBank`).
- **Capture.** On CUDA, with ``captured=True``, each bucket's step is recorded once as a CUDA
  graph (:class:`_BucketGraph`) and replayed; the CPU runs the same step eagerly.

In float32 each row computes the operations of :func:`greenscreen_cam.track.steady.steady_step` on
its own numbers; batched matrix products may round differently from one-row products, so the
masks agree with one-by-one tracking to float rounding (``tests/test_batched.py`` checks IoU and
reports the largest logit difference), not bit for bit.

Buffers of a bucket with ``B`` rows (``R``, ``P``, ``HW``, ``L``, ``h``, ``D`` as in
:mod:`greenscreen_cam.track.steady`): ``t`` ``(B,)`` int64; ``mem`` ``(B, R, HW, mem_dim)``; ``v``
``(L, B, R, h, HW, D)``; ``k_cond`` / ``v_cond`` ``(L, B, h, HW, D)``; ``ptr`` ``(B, P, C)``;
``ptr_cond`` ``(B, C)``; ``pos`` ``(1, R * HW, mem_dim)`` (the same for every row).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from greenscreen_cam.errors import PromptError
from greenscreen_cam.track import sam2_private
from greenscreen_cam.track.steady import (
    SteadyBank,
    attend_memory,
    bank_full_at,
    decode_masks,
    encode_memory,
    pointer_tokens,
)

if TYPE_CHECKING:
    from greenscreen_cam.track.prompt import Prompt
    from greenscreen_cam.track.segmenter import Encoded, StreamingTracker, TrackResult

__all__ = ["BUCKETS", "SessionBatch", "batched_step", "bucket_for", "supports_batching"]

BUCKETS = (1, 2, 4, 8, 16)
"""Batch sizes a batched step runs at; a step pads to the next one."""

_ROW_KEYS = ("t", "mem", "ptr", "ptr_cond")  # row = dim 0
_LAYER_KEYS = ("v", "k_cond", "v_cond")  # row = dim 1
_MUTABLE = ("t", "mem", "v", "ptr")


def bucket_for(n: int) -> int:
    """The smallest bucket with room for ``n`` rows.

    Raises:
        ValueError: ``n`` is more than the largest bucket.
    """
    for b in BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"{n} sessions is more than the largest batch bucket ({BUCKETS[-1]})")


def supports_batching(model: Any) -> bool:
    """True when ``model`` has the layout the stacked step reproduces (the steady step's, and no cross-row mask constraint)."""
    from greenscreen_cam.track.segmenter import supports_cached_memory_attention

    return supports_cached_memory_attention(model) and not getattr(model, "non_overlap_masks_for_mem_enc", False)


class _Bucket:
    """The stacked banks of one bucket: ``size`` rows, allocated once, plus static step inputs."""

    def __init__(self, size: int, like: SteadyBank) -> None:
        self.size = size
        self.mem_dtype = like.mem_dtype
        self.pos_dtype = like.pos_dtype
        self.slots, self.ptr_slots = like.slots, like.ptr_slots
        src = like.buffers
        self.buffers: dict[str, torch.Tensor] = {}
        for k in _ROW_KEYS:
            self.buffers[k] = torch.zeros((size, *src[k].shape[1:]), dtype=src[k].dtype, device=src[k].device)
        n_layers, _, heads, r, hw, head_dim = src["v"].shape
        self.buffers["v"] = torch.zeros(
            n_layers, size, r, heads, hw, head_dim, dtype=src["v"].dtype, device=src["v"].device
        )
        for k in ("k_cond", "v_cond"):
            self.buffers[k] = torch.zeros((n_layers, size, *src[k].shape[2:]), dtype=src[k].dtype, device=src[k].device)
        self.buffers["pos"] = src["pos"].clone()
        self.live = torch.zeros(size, dtype=torch.bool, device=src["t"].device)
        self.graph: _BucketGraph | None = None

    def load(self, row: int, bank: SteadyBank) -> None:
        """Copy a primed one-stream bank into ``row``."""
        src, dst = bank.buffers, self.buffers
        for k in _ROW_KEYS:
            dst[k][row].copy_(src[k][0])
        dst["v"][:, row].copy_(src["v"][:, 0].transpose(1, 2))  # (L, h, R, HW, D) -> (L, R, h, HW, D)
        for k in ("k_cond", "v_cond"):
            dst[k][:, row].copy_(src[k][:, 0])

    def copy_row(self, other: _Bucket, src_row: int, dst_row: int) -> None:
        """Copy ``other``'s row ``src_row`` into this bucket's ``dst_row`` (bucket changes)."""
        for k in _ROW_KEYS:
            self.buffers[k][dst_row].copy_(other.buffers[k][src_row])
        for k in _LAYER_KEYS:
            self.buffers[k][:, dst_row].copy_(other.buffers[k][:, src_row])

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: self.buffers[k].clone() for k in _MUTABLE}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for k, v in saved.items():
            self.buffers[k].copy_(v)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.buffers.values())


def batched_step(
    model: Any,
    bucket: _Bucket,
    live: torch.Tensor,
    feats: list[torch.Tensor],
    pos: list[torch.Tensor],
    sizes: list[tuple[int, int]],
) -> torch.Tensor:
    """One frame for every row of ``bucket``: the stacked, fixed-shape, sync-free step.

    Args:
        model: The shared sam2 ``SAM2Base``.
        bucket: The stacked banks; rows with ``live`` advance by one frame, the others are untouched.
        live: ``(B,)`` bool, the rows that have a frame in this step.
        feats: Image features per level, ``(H*W, B, C)`` (rows without a frame: any values).
        pos: Their positional encodings.
        sizes: Per level ``(H, W)``.

    Returns:
        ``(B, S/4 * S/4 + 1)`` float32: per row the low-resolution mask logits, then the object score.
    """
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    buf = bucket.buffers
    feat, feat_pos = feats[-1], pos[-1]
    batch, channels = feat.size(1), model.hidden_dim
    height, width = sizes[-1]
    hw = height * width
    r, p = bucket.slots, bucket.ptr_slots
    mem_dtype, pos_dtype = bucket.mem_dtype, bucket.pos_dtype
    assert mem_dtype is not None and pos_dtype is not None
    device = feat.device
    attention = model.memory_attention
    rows = torch.arange(batch, device=device)

    t = buf["t"] + live.to(torch.int64)  # (B,) each row's frame (rows without a frame: unchanged)
    buf["t"].copy_(t)
    steps = torch.arange(r + p + 1, device=device)
    read_mem = torch.remainder(t[:, None] + steps[None, :r], r)  # (B, R) slots of t-R .. t-1
    read_ptr = torch.remainder(t[:, None] - steps[None, 1 : p + 1], p)  # (B, P) slots of t-1 .. t-P
    mem = buf["mem"][rows[:, None], read_mem].flatten(1, 2)  # (B, R*HW, mem_dim)
    mem_pos = buf["pos"].expand(batch, -1, -1)

    ptrs = torch.cat([buf["ptr_cond"][:, None], buf["ptr"][rows[:, None], read_ptr]], dim=1)  # (B, 1+P, C)
    ptr_mem = ptrs.transpose(0, 1)  # (1 + P, B, C)
    n_ptr = p + 1
    if model.add_tpos_enc_to_obj_ptrs:
        tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
        # per row: the conditioning frame is t frames away, then 1 .. P
        pos_ints = torch.cat([t[:, None], steps[None, 1 : p + 1].expand(batch, -1)], dim=1)  # (B, 1+P)
        obj_pos = get_1d_sine_pe(pos_ints / p, dim=tpos_dim)
        ptr_pos = model.obj_ptr_tpos_proj(obj_pos).transpose(0, 1)  # (1+P, B, mem_dim)
    else:
        ptr_pos = ptr_mem.new_zeros(n_ptr, batch, model.mem_dim)
    ptr_mem_bf, ptr_pos_bf = pointer_tokens(model, ptr_mem, ptr_pos, channels, mem_dtype, pos_dtype)

    pix_feat = attend_memory(
        attention,
        feat,
        feat_pos,
        mem,
        mem_pos,
        ptr_mem_bf,
        ptr_pos_bf,
        buf,
        lambda li: buf["v"][li][rows[:, None], read_mem].transpose(1, 2).flatten(2, 3),  # (B, h, R*HW, D)
        (r, hw),
        (batch, channels, height, width),
    )

    low_res, high_res, obj_ptr, obj_score = decode_masks(model, pix_feat, feats, sizes)

    new_mem = encode_memory(model, feats, sizes, high_res, obj_score, mem_dtype)  # (B, HW, C)
    write = torch.remainder(t, r)
    keep3 = live[:, None, None]
    buf["mem"][rows, write] = torch.where(keep3, new_mem.to(buf["mem"].dtype), buf["mem"][rows, write])
    for li, layer in enumerate(attention.layers):
        attn = layer.cross_attn_image
        v = sam2_private.separate_heads(attn, attn.v_proj(new_mem), attn.num_heads).to(buf["v"].dtype)  # (B, h, HW, D)
        ring = buf["v"][li]
        ring[rows, write] = torch.where(live[:, None, None, None], v, ring[rows, write])
    write_ptr = torch.remainder(t, p)
    buf["ptr"][rows, write_ptr] = torch.where(live[:, None], obj_ptr.to(buf["ptr"].dtype), buf["ptr"][rows, write_ptr])
    return torch.cat([low_res.float().flatten(1), obj_score.float().reshape(batch, -1)[:, :1]], dim=1)


class _BucketGraph:
    """:func:`batched_step` over one bucket recorded once as a CUDA graph (static inputs, static output).

    As :class:`greenscreen_cam.track.steady.CapturedStep`: two warm-up steps on a side stream, the
    bank restored afterwards, so capturing changes no number in any stream.
    """

    def __init__(
        self,
        model: Any,
        bucket: _Bucket,
        feats: list[torch.Tensor],
        pos: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        autocast: torch.dtype | None,
    ) -> None:
        if feats[0].device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.autocast = autocast
        self.feats = [f.clone() for f in feats]
        self.pos = [x.clone() for x in pos]
        self.live = bucket.live
        saved = bucket.snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                with self._amp():
                    batched_step(model, bucket, self.live, self.feats, self.pos, sizes)
        torch.cuda.current_stream().wait_stream(side)
        bucket.restore(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), self._amp():
            self.output = batched_step(model, bucket, self.live, self.feats, self.pos, sizes)
        bucket.restore(saved)

    def _amp(self) -> AbstractContextManager[Any]:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.autocast, cache_enabled=False)

    def __call__(self, feats: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        for dst, src in zip(self.feats, feats, strict=True):
            dst.copy_(src)
        for dst, src in zip(self.pos, pos, strict=True):
            dst.copy_(src)
        self.graph.replay()
        return self.output


@dataclass
class _Member:
    tracker: StreamingTracker
    row: int
    frame_index: int
    """The tracker's frame index after its last batched frame (a mismatch means it was reset)."""


class SessionBatch:
    """The stacked banks of every steady-state session over one shared model, and their one step.

    Args:
        model: The shared sam2 ``SAM2Base``.
        autocast: dtype for ``torch.autocast`` (bf16 on CUDA) or None for float32.
        captured: Replay each bucket's step as a CUDA graph (CUDA only).

    Attributes:
        step_times: Per bucket, an EWMA of the measured wall time of :meth:`track` calls whose
            every session ran in the batch (seconds); what admission reads.
    """

    def __init__(self, model: Any, *, autocast: torch.dtype | None = None, captured: bool = False) -> None:
        if captured and model.device.type != "cuda":
            raise ValueError("a captured batched step needs a CUDA device")
        self.model = model
        self.autocast = autocast
        self.captured = captured
        self.full_at = bank_full_at(model)
        self.enabled = supports_batching(model)
        self._members: dict[Any, _Member] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._current: _Bucket | None = None
        self._staging = SteadyBank(model)
        self._template: SteadyBank | None = None
        self.step_times: dict[int, float] = {}

    # ------------------------------------------------------------------ membership
    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: Any) -> bool:
        return key in self._members

    @property
    def bucket(self) -> int:
        """Rows of the bucket the next step runs (0 with no member)."""
        return self._current.size if self._current is not None and self._members else 0

    def leave(self, key: Any) -> None:
        """Drop ``key``'s row (a re-prompt, a reset, a session that ended); shrink the bucket if it fits a smaller one."""
        if self._members.pop(key, None) is None:
            return
        if self._members and bucket_for(len(self._members)) < self.bucket:
            self._move_to(bucket_for(len(self._members)))

    def _ready(self, tracker: StreamingTracker, prompt: Prompt | None) -> bool:
        """True when ``tracker``'s next frame would read a full bank (it may join)."""
        return (
            self.enabled
            and prompt is None
            and tracker.is_prompted
            and tracker.frame_index + 1 >= self.full_at
            and len(self._members) < BUCKETS[-1]
        )

    def _join(self, key: Any, tracker: StreamingTracker) -> None:
        t = tracker.frame_index + 1
        amp = self._amp()
        with torch.inference_mode(), amp:
            own = tracker.steady_bank()  # its own steady bank holds the memory
            if own is not None:
                bank = own
            else:
                bank = self._staging
                tracker.prime_bank(bank, t)
        used = {m.row for m in self._members.values()}
        need = bucket_for(len(self._members) + 1)
        if self._current is None or need > self._current.size or self._current.mem_dtype != bank.mem_dtype:
            self._move_to(need, like=bank)
            used = {m.row for m in self._members.values()}
        current = self._current
        assert current is not None
        row = min(set(range(current.size)) - used)
        with torch.inference_mode():
            current.load(row, bank)
        bank.active = False  # the tracker's own bank, if it was one, is no longer read
        self._template = bank
        # the batch now holds the memory: the tracker keeps only its conditioning entry (is_prompted)
        tracker.release_memory()
        self._members[key] = _Member(tracker, row, tracker.frame_index)

    def _move_to(self, size: int, like: SteadyBank | None = None) -> None:
        """Make the ``size`` bucket current, copying every member's row into it (compacted)."""
        old = self._current
        new = self._buckets.get(size)
        if new is None or (like is not None and new.mem_dtype != like.mem_dtype):
            template = like if like is not None else self._template
            assert template is not None
            with torch.inference_mode():
                new = _Bucket(size, template)
            self._buckets[size] = new
        if old is not None and old is not new:
            with torch.inference_mode():
                for i, m in enumerate(sorted(self._members.values(), key=lambda m: m.row)):
                    new.copy_row(old, m.row, i)
                    m.row = i
        self._current = new

    def nbytes(self) -> int:
        """Bytes held by the buckets' buffers."""
        return sum(b.nbytes() for b in self._buckets.values())

    def _amp(self) -> AbstractContextManager[Any]:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast, cache_enabled=False)

    # ------------------------------------------------------------------ the step
    @torch.inference_mode()
    def track(
        self,
        items: list[tuple[Any, StreamingTracker, Encoded, tuple[int, int], Prompt | None]],
    ) -> list[TrackResult | PromptError]:
        """One frame for each item ``(key, tracker, encoded frame, frame (H, W), prompt or None)``.

        Prompted, re-selected and still-filling sessions run their own eager step; every other
        session (joining now if its bank is full) runs in the one batched step.

        Returns:
            Per item its :class:`TrackResult`, or the PromptError its step raised.
        """

        start = time.perf_counter()
        out: list[TrackResult | PromptError | None] = [None] * len(items)
        batched: list[tuple[int, _Member, Encoded, tuple[int, int]]] = []
        for i, (key, tracker, enc, hw, prompt) in enumerate(items):
            member = self._members.get(key)
            if member is not None and (
                prompt is not None or member.tracker is not tracker or tracker.frame_index != member.frame_index
            ):
                self.leave(key)  # re-selected, or reset behind our back
                member = None
            if member is None and self._ready(tracker, prompt):
                self._join(key, tracker)
                member = self._members[key]
            if member is None:
                try:
                    out[i] = tracker.step_encoded(enc, hw, prompt)
                except PromptError as e:
                    out[i] = e
                continue
            batched.append((i, member, enc, hw))
        if batched:
            self._run(batched, out)
            if len(batched) == len(items):
                n = self.bucket
                elapsed = time.perf_counter() - start
                old = self.step_times.get(n)
                self.step_times[n] = elapsed if old is None else 0.8 * old + 0.2 * elapsed
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def _run(
        self,
        batched: list[tuple[int, _Member, Encoded, tuple[int, int]]],
        out: list[TrackResult | PromptError | None],
    ) -> None:
        from greenscreen_cam.track.segmenter import TrackResult

        bucket = self._current
        assert bucket is not None
        size = bucket.size
        first = batched[0][2]
        sizes = list(first.sizes)
        feats = [f.new_zeros(f.shape[0], size, f.shape[2]) for f in first.feats]
        pos = [x.new_zeros(x.shape[0], size, x.shape[2]) for x in first.pos]
        for _, m, enc, _ in batched:
            for dst, src in zip(feats, enc.feats, strict=True):
                dst[:, m.row].copy_(src[:, 0])
            for dst, src in zip(pos, enc.pos, strict=True):
                dst[:, m.row].copy_(src[:, 0])
        live = torch.zeros(size, dtype=torch.bool)
        live[[m.row for _, m, _, _ in batched]] = True
        bucket.live.copy_(live)
        with self._amp():
            if self.captured:
                if bucket.graph is None:
                    bucket.graph = _BucketGraph(self.model, bucket, feats, pos, sizes, self.autocast)
                packed = bucket.graph(feats, pos)
            else:
                packed = batched_step(self.model, bucket, bucket.live, feats, pos, sizes)
        host = packed if packed.device.type == "cpu" else packed.to("cpu")  # the step's one copy to the host
        rows = host.numpy()
        side = int(round((packed.shape[1] - 1) ** 0.5))
        for i, m, _, hw in batched:
            m.frame_index = m.tracker.advance_frame()
            row = rows[m.row]
            low_host = row[:-1].reshape(side, side)
            if packed.device.type == "cpu":
                low = torch.from_numpy(low_host).view(1, 1, side, side)
            else:
                low = packed[m.row : m.row + 1, :-1].reshape(1, 1, side, side).clone()
            out[i] = TrackResult(m.frame_index, low, hw, float(row[-1]), False, _low_host=low_host)
