"""sam2's private methods that greencam's own step calls, each in this one module.

sam2 has no public API for one tracked frame at a time: the video predictor runs whole inference
states. greencam's streaming, steady and batched steps call the pieces of
``SAM2Base.track_step`` directly, through these thin wrappers, so that a sam2 release that renames
one breaks exactly one place (and ``tests/test_structure.py`` keeps it so). Every wrapper passes its
arguments through unchanged: the steps stay bit-exact with the official predictor.

The private names used: ``SAM2Base._prepare_backbone_features``,
``SAM2Base._prepare_memory_conditioned_features``, ``SAM2Base._forward_sam_heads``,
``SAM2Base._use_multimask``, ``SAM2Base._encode_new_memory``,
``MemoryAttentionLayer._forward_sa``, ``Attention._separate_heads`` and ``Attention._recombine_heads``.
"""

from __future__ import annotations

from typing import Any


def prepare_backbone_features(model: Any, backbone: dict[str, Any]) -> Any:
    """``(backbone_out, vision_feats, vision_pos_embeds, feat_sizes)`` of one image encoding."""
    return model._prepare_backbone_features(backbone)


def prepare_memory_conditioned_features(model: Any, *args: Any, **kwargs: Any) -> Any:
    """sam2's own memory attention over its output dict (the eager reference path)."""
    return model._prepare_memory_conditioned_features(*args, **kwargs)


def forward_sam_heads(model: Any, *args: Any, **kwargs: Any) -> Any:
    """The prompt encoder and mask decoder on memory-conditioned features."""
    return model._forward_sam_heads(*args, **kwargs)


def use_multimask(model: Any, is_init_cond_frame: bool, point_inputs: Any) -> bool:
    """Whether sam2 asks the decoder for several candidate masks on this frame."""
    return bool(model._use_multimask(is_init_cond_frame, point_inputs))


def encode_new_memory(model: Any, *args: Any, **kwargs: Any) -> Any:
    """The memory encoder: ``(maskmem_features, maskmem_pos_enc)`` of one frame's prediction."""
    return model._encode_new_memory(*args, **kwargs)


def self_attention(layer: Any, tgt: Any, query_pos: Any) -> Any:
    """One memory-attention layer's self-attention block (with its residual)."""
    return layer._forward_sa(tgt, query_pos)


def separate_heads(attn: Any, x: Any, num_heads: int) -> Any:
    """``(B, N, C)`` -> ``(B, heads, N, C / heads)``, as sam2's attention does it."""
    return attn._separate_heads(x, num_heads)


def recombine_heads(attn: Any, x: Any) -> Any:
    """``(B, heads, N, D)`` -> ``(B, N, heads * D)``, as sam2's attention does it."""
    return attn._recombine_heads(x)
