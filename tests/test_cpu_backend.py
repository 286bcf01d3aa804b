"""The native CPU frame backend (engine/cpu/backend.py) on tiny-random: logits against the MLX float32
network on the same weights, batches equal streams alone, seeded draws, the choice of backend and
its fallback."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import platform
import warnings

import mlx.core as mx
import numpy as np
import pytest

from engine.backends import Draw, choose_backend, native_unavailable_reason
from engine.options import EngineOptions
from engine.quantize import quantize_csm

NATIVE = native_unavailable_reason()
needs_native = pytest.mark.skipif(NATIVE is not None, reason=f"native CPU backend unavailable: {NATIVE}")


def load(path, bits: int | None = None, group: int = 32):
    from engine.checkpoints import load_csm

    csm = load_csm(path, dtype=mx.float32)
    if bits:
        quantize_csm(csm, bits, group)
    return csm


def cpu(csm, **kw):
    from engine.cpu.backend import CpuBackend

    return CpuBackend(csm, threads=kw.pop("threads", 2), **kw)


def distance(ref: np.ndarray, other: np.ndarray) -> float:
    """RMS of the difference relative to the RMS of the reference."""
    return float(np.sqrt(np.mean((ref - other) ** 2)) / np.sqrt(np.mean(ref ** 2)))


def probe(seed: int = 0, B: int = 3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, 64)).astype(np.float32), rng.integers(0, 2048, (B, 32)).astype(np.int32)


def prompt(seed: int, rows: int):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((rows, 33), np.int32)
    mask = np.zeros((rows, 33), bool)
    tokens[:, 32] = rng.integers(1, 500, rows)
    mask[: rows // 2, 32] = True
    tokens[rows // 2:, :32] = rng.integers(0, 2048, (rows - rows // 2, 32))
    mask[rows // 2:, :32] = True
    return tokens, mask


@pytest.fixture(scope="module")
def f32(tiny_model_path):
    return load(tiny_model_path)


@pytest.fixture(scope="module")
def backend(f32):
    return cpu(f32)


# ---- logits against the MLX float32 network -----------------------------------------------------


@needs_native
def test_bf16_logits_within_bf16_rounding_of_float32(f32, backend):
    h, codes = probe()
    ref = np.array(f32.frame_logits(mx.array(h), mx.array(codes)))
    native = backend.frame_logits(h, codes)
    assert native.shape == ref.shape == (3, 32, 2051)
    # bfloat16 keeps 8 bits: one rounding is <= 2^-9 relative; weights and activations are rounded
    # through 2 + 2 layers and 32 decoder positions (measured 1.2% here)
    assert distance(ref, native) < 0.03
    assert np.mean(np.argmax(ref, -1) == np.argmax(native, -1)) > 0.9


@pytest.mark.parametrize("bits,group", [(8, 32), (8, 64), (4, 32), (4, 64)])
@needs_native
def test_quantized_logits_no_further_than_twice_mlx_s_own(tiny_model_path, f32, bits, group):
    """Measured on tiny-random (group 32): 8-bit MLX 2.5%, native 3.3%; 4-bit MLX 43%, native 43%."""
    h, codes = probe(1)
    ref = np.array(f32.frame_logits(mx.array(h), mx.array(codes)))
    q = load(tiny_model_path, bits, group)
    mlx_q = np.array(q.frame_logits(mx.array(h), mx.array(codes)))
    native = cpu(q).frame_logits(h, codes)
    assert distance(ref, native) <= 2 * distance(ref, mlx_q)


@pytest.mark.parametrize("bits,group", [(8, 32), (4, 32), (4, 64)])
@needs_native
def test_quantized_kernels_give_the_same_bits_in_every_variant(tiny_model_path, bits, group):
    """Integer dot products are exact and every variant keeps the same float lanes, so the
    portable C loops, the SIMD kernels of this CPU and (on x86-64) an AVX2-only build agree."""
    q = load(tiny_model_path, bits, group)
    h, codes = probe(2)
    best = cpu(q).frame_logits(h, codes)
    assert np.array_equal(best, cpu(q, portable=True).frame_logits(h, codes))
    if platform.machine() in ("x86_64", "AMD64"):
        from engine.cpu.frame import NativeModel, library

        avx2 = NativeModel(cpu(q).packed, 2, lib=library(("-march=x86-64-v3",)))
        _, logits = avx2.depth(h, forced=codes, logits=True)
        assert np.array_equal(best, logits)


@pytest.mark.parametrize("bits", [None, 8, 4])
@needs_native
def test_frame_products_give_each_row_the_same_bits_in_any_batch(f32, bits):
    """Products over more rows than one job (whole jobs read as strided passes, plus a partial
    one) give every output the bits of the one-stream product, in every batch size; quantized
    rows also equal the portable C loops."""
    import mlx.nn as nn

    from engine.cpu.pack import pack_linear

    def one_stream_bits(w, x):  # the one-stream products, after checking every batch size gives them
        one = np.concatenate([native.product(x[b:b + 1], w) for b in range(len(x))])
        for B in range(2, len(x) + 1):
            assert np.array_equal(native.product(x[:B], w), one[:B]), B
        return one

    mx.random.seed(3)
    layer = nn.Linear(256, 300, bias=False)
    layer.set_dtype(mx.bfloat16)
    if bits:
        layer = nn.QuantizedLinear.from_linear(layer, group_size=64, bits=bits)
    w = pack_linear(layer)
    native, portable = cpu(f32).native, cpu(f32, portable=True).native
    x = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    one = one_stream_bits(w, x)
    if bits:
        assert np.array_equal(one, portable.product(x, w))
    else:  # bf16 rows whose length is not a multiple of 32 (a scalar tail after the batched sums)
        odd = nn.Linear(272, 40, bias=False)
        odd.set_dtype(mx.bfloat16)
        one_stream_bits(pack_linear(odd), np.random.default_rng(1).standard_normal((6, 272)).astype(np.float32))


@needs_native
def test_prefill_and_step_match_the_float32_backbone(f32, backend):
    tokens, mask = prompt(0, 20)
    cache = f32.new_backbone_cache(64)
    ref = np.array(f32.backbone(f32.embed_rows(mx.array(tokens)[None], mx.array(mask)[None]), cache)[0, -1])
    c = backend.new_cache(64)
    backend.prefill(c, tokens[:12], mask[:12])
    hidden = backend.prefill(c, tokens[12:], mask[12:])
    assert c.offset == 20
    assert distance(ref, hidden) < 0.02
    codes = np.random.default_rng(3).integers(0, 2048, (1, 32)).astype(np.int32)
    ref_step = np.array(f32.backbone(f32.frame_embedding(mx.array(codes)), cache)[0, -1])
    assert distance(ref_step, backend.step_hidden([c], codes)[0]) < 0.02
    assert c.offset == 21


@pytest.mark.parametrize("bits,group", [(8, 32), (8, 64), (4, 32), (4, 64)])
@needs_native
def test_quantized_prefill_no_further_than_twice_mlx_s_own(tiny_model_path, f32, bits, group):
    """Prefill of an int8/int4 model (its products quantize x to int8 where the CPU has VNNI) against
    the float32 backbone: within twice the distance of MLX's own quantized network."""
    tokens, mask = prompt(4, 40)

    def mlx_hidden(model):
        cache = model.new_backbone_cache(64)
        return np.array(model.backbone(model.embed_rows(mx.array(tokens)[None], mx.array(mask)[None]), cache)[0, -1])

    q = load(tiny_model_path, bits, group)
    be = cpu(q)
    native = be.prefill_blocks(be.new_cache(64), tokens, mask, 64)
    ref = mlx_hidden(f32)
    assert distance(ref, native) <= 2 * distance(ref, mlx_hidden(q))


@pytest.mark.parametrize("bits", [None, 8])
@pytest.mark.parametrize("start,rows,pass_rows", [(0, 150, 256), (10, 140, 256), (64, 200, 128), (0, 300, 64)])
@needs_native
def test_prefill_blocks_equals_a_prefill_per_aligned_chunk(tiny_model_path, monkeypatch, bits, start, rows,
                                                          pass_rows):
    """Several 64-row chunks in one pass (and a pass split at PASS_ROWS) give every row the bits of
    one prefill() per chunk: the hidden state and the whole KV cache."""
    import engine.cpu.backend as B

    monkeypatch.setattr(B, "PASS_ROWS", pass_rows)
    be = cpu(load(tiny_model_path, bits))
    tokens, mask = prompt(5, start + rows)
    chunked, passed = be.new_cache(512), be.new_cache(512)
    for c in (chunked, passed):
        if start:
            be.prefill(c, tokens[:start], mask[:start])
    cuts = [p for p in range(start + 1, start + rows) if p % 64 == 0]
    for a, b in zip([start] + cuts, cuts + [start + rows]):
        alone = be.prefill(chunked, tokens[a:b], mask[a:b])
    together = be.prefill_blocks(passed, tokens[start:], mask[start:], 64)
    assert passed.offset == chunked.offset == start + rows
    assert np.array_equal(alone, together)
    assert np.array_equal(chunked.kv[:, :, :, :start + rows], passed.kv[:, :, :, :start + rows])
    with pytest.raises(Exception, match="prefill takes"):
        be.prefill_blocks(passed, tokens[:0], mask[:0], 64)


# ---- streams are independent -------------------------------------------------------------------

DRAWS = [Draw(0.9, 50, True, 11, 3), Draw(0.0, 50, True, 12, 0), Draw(1.3, 0, False, 13, 7)]


@pytest.mark.parametrize("max_batch", [1, 4])
@pytest.mark.parametrize("bits", [None, 8, 4])
@needs_native
def test_a_batch_gives_each_stream_its_codes_alone(tiny_model_path, bits, max_batch):
    """With the one-stream kernels and with the batch kernels (AMX where the CPU has it)."""
    be = cpu(load(tiny_model_path, bits))
    be.batch_kernels(max_batch)
    lengths = [5, 12, 9]

    def primed():
        out = []
        for i, n in enumerate(lengths):
            c = be.new_cache(64)
            out.append((c, be.prefill(c, *prompt(i, n))))
        return out

    batch, alone = primed(), primed()
    codes = be.frames_from_hidden([h for _, h in batch], DRAWS)
    solo = np.stack([be.frames_from_hidden([h], [d])[0] for (_, h), d in zip(alone, DRAWS)])
    assert np.array_equal(codes, solo)
    for frame in range(1, 5):
        draws = [d.at(d.frame + frame) for d in DRAWS]
        batched = be.step([c for c, _ in batch], codes, draws)
        solo = np.stack([be.step([c], codes[b:b + 1], [draws[b]])[0] for b, (c, _) in enumerate(alone)])
        assert np.array_equal(batched, solo), frame
        codes = batched
    for (a, _), (b, _), n in zip(batch, alone, lengths):
        assert a.offset == b.offset == n + 4
        assert np.array_equal(a.kv[..., :a.offset, :], b.kv[..., :b.offset, :])


@needs_native
def test_batch_kernels_stay_within_bf16_rounding_and_are_chosen_once(f32):
    from engine.cpu.frame import VARIANT_AMX, VARIANT_BEST, best_variant

    h, codes = probe()
    ref = np.array(f32.frame_logits(mx.array(h), mx.array(codes)))
    be = cpu(f32)
    one = be.frame_logits(h, codes)
    assert be.native.variant == VARIANT_BEST and be.batch_kernels(1) is False
    changed = be.batch_kernels(4)
    assert changed == (best_variant() == VARIANT_AMX)
    assert ("amx-bf16" in be.detail) == changed
    batched = be.frame_logits(h, codes)
    assert distance(ref, batched) < 0.03
    assert distance(one, batched) < 1e-4  # float32 summation order only
    assert be.batch_kernels(4) is False and be.batch_kernels(1) == changed
    assert np.array_equal(be.frame_logits(h, codes), one)


@needs_native
def test_portable_kernels_never_switch(f32):
    be = cpu(f32, portable=True)
    assert be.batch_kernels(8) is False and "portable C" in be.detail


@needs_native
def test_thread_count_changes_no_bits(f32):
    h, codes = probe(4)
    one, three = cpu(f32, threads=1), cpu(f32, threads=3)
    assert np.array_equal(one.frame_logits(h, codes), three.frame_logits(h, codes))
    assert np.array_equal(one.frames_from_hidden(list(h), DRAWS), three.frames_from_hidden(list(h), DRAWS))


# ---- draws -------------------------------------------------------------------------------------


@needs_native
def test_draws_follow_seed_and_frame(backend):
    h, _ = probe(5, 1)

    def frame(seed, index):
        return backend.frames_from_hidden([h[0]], [Draw(0.9, 50, True, seed, index)])[0]

    assert np.array_equal(frame(1, 0), frame(1, 0))
    assert not np.array_equal(frame(1, 0), frame(2, 0))
    assert not np.array_equal(frame(1, 0), frame(1, 1))
    assert (frame(1, 0) < 2048).all()


@needs_native
def test_greedy_frames_are_the_argmax_of_their_teacher_forced_logits(backend):
    h, _ = probe(6)
    greedy = [Draw(0.0, 50, True, s, 0) for s in range(3)]
    codes = backend.frames_from_hidden(list(h), greedy)
    logits = backend.frame_logits(h, codes)
    assert np.array_equal(codes, np.argmax(logits[..., :2048], axis=-1))


def _draw(logits, temperature=1.0, top_k=0, suppress=True, seed=0, frame=0, codebook=0) -> int:
    from engine.cpu.frame import draw_structs, library

    logits = np.ascontiguousarray(logits, dtype=np.float32)
    d = draw_structs([Draw(temperature, top_k, suppress, seed, frame)], 1)
    return library().csm_draw(logits.ctypes.data, len(logits), ctypes.byref(d[0]), codebook)


@needs_native
def test_draw_rules():
    logits = np.full(2051, -5.0, np.float32)
    logits[[3, 7, 9]] = [2.0, 2.0, 1.0]
    logits[2049] = 50.0  # undecodable
    assert _draw(logits, temperature=0.0) == 3  # argmax, the first index wins the tie
    assert _draw(logits, temperature=0.0, suppress=False) == 2049
    picks = {_draw(logits, top_k=2, seed=s) for s in range(200)}
    assert picks == {3, 7}  # the 2 largest (a tie at the threshold would be kept too)
    logits[9] = 2.0
    assert {_draw(logits, top_k=2, seed=s) for s in range(300)} == {3, 7, 9}  # ties at the k-th value kept
    # temperature sharpens: with a gap of 1, T=0.05 practically always takes the larger one
    two = np.full(2051, -30.0, np.float32)
    two[[10, 11]] = [1.0, 0.0]
    assert {_draw(two, temperature=0.05, seed=s) for s in range(100)} == {10}
    share = np.mean([_draw(two, temperature=1.0, seed=s) == 10 for s in range(2000)])
    assert abs(share - 1 / (1 + np.exp(-1.0))) < 0.04  # e / (1 + e) = 0.73


# ---- choice of backend and memory --------------------------------------------------------------


def test_switched_off_falls_back_to_mlx_with_a_warning(f32):
    with pytest.warns(RuntimeWarning, match="switched off"):
        backend = choose_backend(f32, EngineOptions(cpu_kernels="off"))
    assert backend.name == "mlx" and "switched off" in backend.detail
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = choose_backend(f32, EngineOptions(backend="mlx"))
    assert chosen.name == "mlx" and "backend setting" in chosen.detail


@needs_native
def test_auto_picks_the_native_backend_for_bfloat16_and_quantized_models(tiny_model_path):
    if mx.default_device().type == mx.DeviceType.gpu:
        pytest.skip("MLX is the choice on a GPU")
    bf = load(tiny_model_path)
    bf.set_dtype(mx.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = choose_backend(bf, EngineOptions())
        assert backend.name == "cpu" and backend.detail.startswith("cpu: bf16 weights")
        quantized = choose_backend(load(tiny_model_path, 8), EngineOptions())  # float32 norms and heads
        assert quantized.name == "cpu" and "q8" in quantized.detail


@needs_native
def test_float32_models_stay_float32_unless_cpu_is_asked_for(f32):
    """load_model(dtype="float32") is an explicit ask for float32: "auto" keeps it on MLX; the native
    backend (bfloat16 arithmetic) only when asked for, converting with a warning."""
    if mx.default_device().type == mx.DeviceType.gpu:
        pytest.skip("MLX is the choice on a GPU")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = choose_backend(f32, EngineOptions())
    assert backend.name == "mlx" and "float32 weights: the native CPU backend computes in bfloat16" in backend.detail
    with pytest.warns(RuntimeWarning, match="converts this model's float32 weights"):
        forced = choose_backend(f32, EngineOptions(backend="cpu"))
    assert forced.name == "cpu"


@needs_native
def test_weights_without_native_kernels_fall_back(tiny_model_path):
    q = load(tiny_model_path, 3)
    with pytest.warns(RuntimeWarning, match="3-bit"):
        backend = choose_backend(q, EngineOptions())
    assert backend.name == "mlx"


@needs_native
def test_packing_shares_the_weights_buffers(tiny_model_path):
    from engine.cpu.pack import pack_csm, pack_linear

    q = load(tiny_model_path, 8)
    layer = q["backbone"].layers[0].mlp.down_proj
    packed = pack_linear(layer)
    assert packed.fmt == "q8" and packed.data.ctypes.data == np.asarray(layer.weight).ctypes.data
    bf = load(tiny_model_path)
    bf.set_dtype(mx.bfloat16)
    mx.eval(bf.parameters())
    before = mx.get_active_memory()
    p = pack_csm(bf)
    assert mx.get_active_memory() - before < 0.05 * sum(w.nbytes for w in p.weights())


@needs_native
def test_cache_reuse_gives_the_same_codes_through_the_generator(f32):
    """A second turn after a first one: with the first turn's rows reused from the native cache,
    and recomputed from nothing, the codes are the same bit for bit (canonical 64-row blocks)."""
    from engine.generator import Generator, frame_row

    def turn(gen, tokens, mask, seed, reuse):
        chunks = list(gen.generate(tokens, mask, max_frames=12, draw=Draw(0.9, 50, True, seed, 0),
                                   reuse_cache=reuse, decode=False))
        return chunks[-1]

    first_rows = prompt(0, 70)
    gen = Generator(cpu(f32))
    first = turn(gen, *first_rows, seed=1, reuse=True).frames
    rows = [frame_row(f) for f in first]
    tokens = np.concatenate([first_rows[0], np.stack([r[0] for r in rows]), prompt(1, 9)[0]])
    mask = np.concatenate([first_rows[1], np.stack([r[1] for r in rows]), prompt(1, 9)[1]])
    reused = turn(gen, tokens, mask, seed=2, reuse=True)
    fresh = turn(Generator(cpu(f32)), tokens, mask, seed=2, reuse=False)
    assert reused.cached_tokens >= 64 and fresh.cached_tokens == 0
    assert len(reused.frames) == len(fresh.frames) > 0 and np.array_equal(reused.frames, fresh.frames)


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="needs an ARM64 cross compiler (gcc-aarch64-linux-gnu) and qemu-user")
def test_neon_kernels_give_the_portable_bits_on_arm64(tmp_path):
    """frame.c's NEON dot-product kernels (built for ARM64, run under qemu) against its plain C loops."""
    from pathlib import Path

    import engine.cpu

    here = Path(__file__).parent / "native" / "variants_check.c"
    exe = tmp_path / "check"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-march=armv8.2-a+dotprod", "-static",
                    f"-I{Path(engine.cpu.__file__).parent}", str(here), "-o", str(exe), "-lm"], check=True)
    done = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "features 8" in done.stdout  # the NEON dot-product path was built
    # prefill.c, compiled into the same library, builds for ARM64 too (its vector types become NEON)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O3", "-march=armv8.2-a+dotprod", "-fopenmp", "-c",
                    f"-I{Path(engine.cpu.__file__).parent}", str(Path(engine.cpu.__file__).parent / "prefill.c"),
                    "-o", str(tmp_path / "prefill.o")], check=True)


@needs_native
def test_the_native_backend_gives_mlx_s_blas_one_thread(f32, monkeypatch):
    """Only the codec runs on MLX then; OpenBLAS's spinning idle workers would take a core from the
    frame step. CSM_OPENBLAS_THREADS, when set, is left as it is."""
    from engine.cpu.blas import ENV_THREADS, blas_info, configured_threads, set_threads

    if not blas_info().loaded:
        pytest.skip("no OpenBLAS loaded here")
    try:
        monkeypatch.delenv(ENV_THREADS, raising=False)
        set_threads(2)
        cpu(f32)
        assert blas_info().threads == 1
        monkeypatch.setenv(ENV_THREADS, "2")
        set_threads(2)
        cpu(f32)
        assert blas_info().threads == 2
    finally:
        monkeypatch.delenv(ENV_THREADS, raising=False)
        set_threads(configured_threads())
