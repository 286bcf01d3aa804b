"""engine.cpu.kernels and engine.cpu.depth: the bfloat16 CPU path of the frame loop.

The kernels need an x86-64 or ARM64 CPU and a C compiler; elsewhere these tests check that the
engine says why they are off and falls back (float32 on the CPU)."""

import mlx.core as mx
import numpy as np
import pytest

from engine.cpu import depth as cpu_depth
from engine.cpu import kernels as cpu_kernels
from engine.cpu.build import build_library
from engine.bench.generation import random_csm, random_prompt, tiny_config
from engine.device import default_dtype
from engine.sampling import make_sampler

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(), reason=f"no bf16 kernels: {cpu_kernels.reason()}")


def test_default_dtype_follows_the_kernels(monkeypatch):
    monkeypatch.delenv("CSM_DTYPE", raising=False)
    if mx.default_device() == mx.gpu:
        assert default_dtype() == mx.bfloat16
    else:
        assert default_dtype() == (mx.bfloat16 if cpu_kernels.available() else mx.float32)


def test_switched_off_says_so(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    assert not cpu_kernels.available()
    assert "CSM_CPU_KERNELS=0" in cpu_kernels.reason()


@needs_kernels
@pytest.mark.parametrize("rows, k", [(96, 64), (37, 70), (8, 1024), (2051, 33)])
def test_products_match_float32_of_the_same_bfloat16_values(rows, k):
    w = mx.random.normal((rows, k), key=mx.random.key(rows)).astype(mx.bfloat16)
    x = mx.random.normal((k,), key=mx.random.key(k))
    x16 = np.array(x.astype(mx.bfloat16).astype(mx.float32))  # the kernels round x as bfloat16 does
    w32 = np.array(w.astype(mx.float32))
    got = cpu_kernels.matvec(cpu_kernels.bf16_bits(w), np.array(x))
    assert np.allclose(got, w32 @ x16, rtol=1e-5, atol=1e-4)
    wt = mx.random.normal((k, rows), key=mx.random.key(7)).astype(mx.bfloat16)
    got_t = cpu_kernels.matvec_t(cpu_kernels.bf16_bits(wt), np.array(x))
    assert np.allclose(got_t, x16 @ np.array(wt.astype(mx.float32)), rtol=1e-5, atol=1e-4)


def _h_last(model, tokens, mask):
    h = model.backbone(model.embed_rows(tokens[None], mask[None]), model.new_backbone_cache(16))
    return h[:, -1, :]


@needs_kernels
def test_depth_decoder_logits_match_the_mlx_network():
    """Teacher-forced logits of the NumPy depth decoder (bfloat16) against MLX's float32 network on
    the same weights: as close as MLX's own bfloat16 network gets."""
    m32 = random_csm(tiny_config(), mx.float32, seed=3)
    m16 = random_csm(tiny_config(), mx.bfloat16, seed=3)
    tokens, mask = random_prompt(10, m32.config, 0)
    codes = mx.array(np.random.default_rng(0).integers(0, 2048, (1, 32)), dtype=mx.int32)
    want = np.array(m32.frame_logits(_h_last(m32, tokens, mask), codes)[0, 1:].astype(mx.float32))
    mlx16 = np.array(m16.frame_logits(_h_last(m16, tokens, mask), codes)[0, 1:].astype(mx.float32))
    depth = cpu_depth.CpuDepthDecoder(m16)
    ours = depth.frame_logits(np.array(_h_last(m16, tokens, mask)[0].astype(mx.float32)), np.array(codes[0]))
    scale = np.abs(want).max()
    assert np.abs(ours - want).max() / scale < max(0.03, 2 * np.abs(mlx16 - want).max() / scale)
    assert np.corrcoef(ours.ravel(), want.ravel())[0, 1] > 0.999


@needs_kernels
def test_bfloat16_frames_on_the_cpu_take_the_numpy_path_and_follow_the_seed(monkeypatch):
    model = random_csm(tiny_config(), mx.bfloat16, seed=4)
    tokens, mask = random_prompt(10, model.config, 1)
    h = _h_last(model, tokens, mask)
    calls = []
    real = cpu_depth.CpuDepthDecoder.frame
    monkeypatch.setattr(cpu_depth.CpuDepthDecoder, "frame", lambda self, *a: calls.append(1) or real(self, *a))
    sampler = make_sampler(0.9, 50)
    mx.random.seed(11)
    a = np.array(model.generate_frame(h, sampler))
    mx.random.seed(11)
    b = np.array(model.generate_frame(h, sampler))
    assert calls == [1, 1]
    assert a.shape == (1, 32) and (a >= 0).all() and (a < 2048).all()
    assert np.array_equal(a, b)
    # two sequences at once use MLX's graph (the NumPy decoder runs one)
    two = model.generate_frame(mx.concatenate([h, h]), sampler)
    assert two.shape == (2, 32) and calls == [1, 1]


def test_float32_models_never_use_it():
    model = random_csm(tiny_config(), mx.float32, seed=4)
    assert not cpu_depth.usable(model)


@needs_kernels
def test_portable_loop_computes_what_the_loaded_kernels_do():
    """The portable C variant (CPUs without AVX512-BF16, or CSM_CPU_KERNELS=portable) against the
    loaded one: the same bfloat16 products up to float summation order."""
    portable = cpu_kernels._open(build_library("kernels.c", ["-DCSM_PORTABLE"]))
    assert portable.csm_bf16_variant() == 0
    w = mx.random.normal((300, 200), key=mx.random.key(3)).astype(mx.bfloat16)
    x = np.array(mx.random.normal((200,), key=mx.random.key(4)))
    bits = cpu_kernels.bf16_bits(w)
    assert np.allclose(cpu_kernels.matvec(bits, x, lib=portable), cpu_kernels.matvec(bits, x), rtol=1e-5, atol=1e-5)
    wt = mx.random.normal((200, 300), key=mx.random.key(5)).astype(mx.bfloat16)
    bits_t = cpu_kernels.bf16_bits(wt)
    assert np.allclose(cpu_kernels.matvec_t(bits_t, x, lib=portable), cpu_kernels.matvec_t(bits_t, x), rtol=1e-5, atol=1e-5)
