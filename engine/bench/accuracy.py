"""Accuracy probes for comparing a network with a changed copy of itself (quantized, another
backend): teacher-forced logits of one frame, and how far two sets of logits are apart."""

from __future__ import annotations

import mlx.core as mx


def frame_logits_probe(model, tokens, mask, codes) -> mx.array:
    """Teacher-forced logits of one frame after a prompt: (1, K, V) float32. For comparing a model with
    its quantized self: rows (T, K+1) and mask, then the frame's codes (K,)."""
    h = model.backbone(model.embed_rows(mx.array(tokens)[None], mx.array(mask)[None]))  # (1, T, Db)
    return model.frame_logits(h[:, -1, :], mx.array(codes)[None]).astype(mx.float32)


def logit_error(reference: mx.array, other: mx.array) -> dict:
    """How far `other` logits (B, K, V) moved from `reference`: codebook 0 and all codebooks."""

    def stats(ref, oth):
        diff = mx.abs(ref - oth)
        max_abs = diff.max().item()
        return {
            "max_abs": max_abs,
            "rel": max_abs / max(mx.abs(ref).max().item(), 1e-12),
            "rms_rel": (mx.sqrt((diff * diff).mean()) / mx.sqrt((ref * ref).mean())).item(),
            "argmax_agree": (mx.argmax(ref, -1) == mx.argmax(oth, -1)).astype(mx.float32).mean().item(),
        }

    return {"codebook0": stats(reference[:, 0], other[:, 0]), "all": stats(reference, other)}
