"""The native CPU backend at full size (random CSM-1B weights): teacher-forced logits against the MLX
float32 network, bfloat16 and MLX-quantized 8-/4-bit. Minutes and ~9 GB: skipped unless
CSM_SLOW_TESTS=1 (on a shared machine run it under a lock, one full-size process at a time)."""

from __future__ import annotations

import os

import mlx.core as mx
import numpy as np
import pytest

from engine.backends import native_unavailable_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # minutes at full size, above the suite's per-test limit
    pytest.mark.skipif(os.environ.get("CSM_SLOW_TESTS") != "1", reason="full size: set CSM_SLOW_TESTS=1"),
    pytest.mark.skipif(native_unavailable_reason() is not None, reason=f"{native_unavailable_reason()}"),
]


def distance(ref, other) -> float:
    return float(np.sqrt(np.mean((ref - other) ** 2)) / np.sqrt(np.mean(ref ** 2)))


def test_full_size_logits_against_the_float32_network():
    from engine.checkpoints.tiny import random_csm, random_prompt
    from engine.cpu.backend import CpuBackend
    from engine.csm import csm_1b_config
    from engine.quantize import quantize_csm

    config = csm_1b_config()
    tokens, mask = random_prompt(24, config, 0)
    codes = np.random.default_rng(0).integers(0, 2048, (1, 32)).astype(np.int32)
    found = {}
    for bits in (None, 8, 4):
        model = random_csm(config, mx.float32, seed=0)
        h = model.backbone(model.embed_rows(mx.array(tokens)[None], mx.array(mask)[None]))[:, -1, :]
        ref = np.array(model.frame_logits(h, mx.array(codes)))
        h = np.array(h)
        if bits:
            quantize_csm(model, bits)
            own = distance(ref, np.array(model.frame_logits(mx.array(h), mx.array(codes))))
        native = distance(ref, CpuBackend(model).frame_logits(h, codes))
        found[bits] = (native, own if bits else None)
        print(f"bits {bits}: native {native:.4f}" + (f", MLX's own {own:.4f}" if bits else ""))
        if bits:
            assert native <= 2 * own
        else:
            assert native < 0.03
        del model
