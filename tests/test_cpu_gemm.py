"""engine/cpu/gemm: every kernel variant this CPU runs against NumPy float32 products of the same
(dequantized) weights, at tiny and odd shapes.

Bounds, from the arithmetic the kernels do: x and each weight are rounded to bfloat16 (relative error
at most 2^-9 each), products summed in float32. Against the product of the rounded operands the only
difference is float32 summation order: |error| <= 2 * K * 2^-24 * sum|x_k w_k| (ours and NumPy's).
Against the unrounded float32 product, each term may move by |x_k w_k| * (2 * 2^-9 + 2^-18).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from engine.cpu import gemm as G

if not G.available():
    pytest.skip(f"the prefill kernels cannot be built here: {G.reason()}", allow_module_level=True)

VARIANTS = [v for v in G.VARIANTS if G.supported(v)]
MISSING = [v for v in G.VARIANTS if not G.supported(v)]
SHAPES = [(1, 32, 16), (3, 64, 33), (17, 96, 45), (16, 128, 64), (33, 100, 70), (64, 256, 96), (5, 31, 7)]


@dataclass
class Packed:  # the fields of engine/cpu/pack.py's PackedWeight that gemm reads
    fmt: str
    out: int
    in_: int
    data: np.ndarray
    scales: np.ndarray | None = None
    biases: np.ndarray | None = None
    group: int = 0
    bits: int = 16


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), as uint16 bits."""
    b = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def rounded(a: np.ndarray) -> np.ndarray:
    return from_bits(bf16_bits(a))


def check(y: np.ndarray, x: np.ndarray, w_float: np.ndarray) -> None:
    """y against the float32 product of bfloat16-rounded x and w (the kernels' arithmetic)."""
    xr, wr = rounded(x), rounded(w_float)
    ref = xr.astype(np.float64) @ wr.T.astype(np.float64)
    size = np.abs(xr) @ np.abs(wr).T
    k = x.shape[1]
    assert np.all(np.abs(y - ref) <= 2 * k * 2.0**-24 * size + 1e-30), np.abs(y - ref).max()
    exact = x.astype(np.float64) @ w_float.T.astype(np.float64)
    loose = (np.abs(x) @ np.abs(w_float).T) * (2 * 2.0**-9 + 2.0**-18) * 1.001 + 2 * k * 2.0**-24 * size
    assert np.all(np.abs(y - exact) <= loose)


def check_int8(y: np.ndarray, x: np.ndarray, w_float: np.ndarray, group: int) -> None:
    """y against the exact product for the avx512-vnni variant: x quantized per row and group of
    `group` inputs to steps dx = max |x| / 127 (each input off by dx / 2 at most), weights exact,
    integer sums exact, float32 for the per-group terms."""
    T, k = x.shape
    step = np.abs(x).reshape(T, k // group, group).max(axis=-1) / 127  # (T, groups)
    half = np.repeat(step / 2, group, axis=1)  # (T, k): each input's largest error
    exact = x.astype(np.float64) @ w_float.T.astype(np.float64)
    size = np.abs(x) @ np.abs(w_float).T
    bound = half @ np.abs(w_float).T * 1.0001 + 4 * (k // group + 2) * 2.0**-24 * (size + np.abs(exact)) + 1e-30
    assert np.all(np.abs(y - exact) <= bound), np.max(np.abs(y - exact) / bound)


def check_variant(variant: str, y, x, w_float, group=None) -> None:
    if variant == "avx512-vnni" and group:
        check_int8(y, x, w_float, group)
    else:
        check(y, x, w_float)


def random_bf16(rng, out, in_):
    bits = bf16_bits(rng.standard_normal((out, in_)).astype(np.float32))
    return Packed("bf16", out, in_, bits), from_bits(bits)


def random_q(rng, out, in_, bits, group):
    codes = rng.integers(0, 2**bits, (out, in_), dtype=np.uint8)
    scales = (rng.standard_normal((out, in_ // group)) * 0.1).astype(np.float32)  # signs of both kinds
    biases = (rng.standard_normal((out, in_ // group)) * 0.1).astype(np.float32)
    w = (np.repeat(scales, group, axis=1) * codes.astype(np.float32) + np.repeat(biases, group, axis=1))
    data = codes if bits == 8 else (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # LSB first
    return Packed(f"q{bits}", out, in_, np.ascontiguousarray(data), scales, biases, group, bits), w.astype(np.float32)


def test_best_variant_is_supported():
    assert G.best_variant() in VARIANTS
    assert "portable" in VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16(variant, shape):
    T, in_, out = shape
    rng = np.random.default_rng(T * 1000 + in_)
    w, wf = random_bf16(rng, out, in_)
    x = rng.standard_normal((T, in_)).astype(np.float32)
    check(G.gemm(x, w, variant, threads=2), x, wf)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bits,group", [(8, 32), (8, 64), (4, 64), (4, 32), (4, 128), (8, 128)])
@pytest.mark.parametrize("shape", [(1, 128, 16), (7, 256, 45), (33, 384, 70), (64, 128, 33)])
def test_quantized(variant, bits, group, shape):
    T, in_, out = shape
    rng = np.random.default_rng(bits * 7 + group + T)
    w, wf = random_q(rng, out, in_, bits, group)
    x = rng.standard_normal((T, in_)).astype(np.float32)
    check_variant(variant, G.gemm(x, w, variant, threads=2), x, wf, group)


@pytest.mark.parametrize("variant", VARIANTS)
def test_swapped_nibbles_are_caught(variant):
    """The int4 check above is sensitive to nibble order: the kernel's result must be far from the
    product with the two nibbles of every byte exchanged (what a wrong unpacking would give)."""
    rng = np.random.default_rng(4)
    w, wf = random_q(rng, 40, 128, 4, 64)
    x = rng.standard_normal((9, 128)).astype(np.float32)
    y = G.gemm(x, w, variant)
    check_variant(variant, y, x, wf, 64)
    swapped = Packed(**{**w.__dict__, "data": ((w.data >> 4) | (w.data << 4)).astype(np.uint8)})
    with pytest.raises(AssertionError):
        check_variant(variant, G.gemm(x, swapped, variant), x, wf, 64)
    with pytest.raises(AssertionError):
        check_variant(variant, y, x, wf[:, ::-1].copy(), 64)  # and a reversed weight row is not mistaken for it


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", ["bf16", "q8", "q4"])
def test_rows_do_not_depend_on_the_block(variant, fmt):
    """A row's result is bit for bit the same alone, in any block size, and with any thread count."""
    rng = np.random.default_rng(11)
    w = random_bf16(rng, 70, 192)[0] if fmt == "bf16" else random_q(rng, 70, 192, int(fmt[1]), 64)[0]
    x = rng.standard_normal((40, 192)).astype(np.float32)
    whole = G.gemm(x, w, variant, threads=2)
    assert np.array_equal(whole, G.gemm(x, w, variant, threads=1))
    for start, stop in [(0, 1), (5, 6), (0, 16), (3, 20), (17, 40), (39, 40)]:
        assert np.array_equal(whole[start:stop], G.gemm(x[start:stop], w, variant, threads=2))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", ["bf16", "q8", "q4"])
def test_a_callers_scratch_and_out_change_no_bit(variant, fmt):
    """Products into a caller's `out`, with its scratch reused (stale from a bigger call), equal the
    products that allocate their own; a scratch too small or misaligned is ignored, not overrun."""
    rng = np.random.default_rng(12)
    w = random_bf16(rng, 70, 256)[0] if fmt == "bf16" else random_q(rng, 70, 256, int(fmt[1]), 64)[0]
    x = rng.standard_normal((40, 256)).astype(np.float32)
    need = G.scratch_bytes(40, w, variant, threads=2)
    assert need > 0 and G.scratch_bytes(8, w, variant, threads=2) <= need
    block = np.full(need + 128, 0xAB, np.uint8)
    start = -block.ctypes.data % 64
    scratch = block[start:start + need]
    for T in (40, 7, 16, 40):
        alone = G.gemm(x[:T], w, variant, threads=2)
        out = np.full((T, 70), np.nan, np.float32)
        assert G.gemm(x[:T], w, variant, threads=2, out=out, scratch=scratch) is out
        assert np.array_equal(out, alone)
        assert (scratch != 0xAB).any()  # it was used
    guard = block[start + need:start + need + 64].copy()
    small = block[start:start + need // 2]
    assert np.array_equal(G.gemm(x, w, variant, threads=2, scratch=small), G.gemm(x, w, variant, threads=2))
    misaligned = block[start + 1:start + 1 + need]
    assert np.array_equal(G.gemm(x, w, variant, threads=2, scratch=misaligned), G.gemm(x, w, variant, threads=2))
    assert np.array_equal(block[start + need:start + need + 64], guard)  # nothing past the given bytes
    with pytest.raises(ValueError, match="expected a contiguous float32"):
        G.gemm(x, w, variant, out=np.empty((40, 71), np.float32))


def test_variants_agree():
    """Every bfloat16 variant computes the same rounded products; only the float32 summation order
    differs (avx512-vnni quantizes x instead: test_quantized holds it to its own bound)."""
    rng = np.random.default_rng(5)
    w, wf = random_q(rng, 64, 512, 4, 64)
    x = rng.standard_normal((20, 512)).astype(np.float32)
    ys = [G.gemm(x, w, v) for v in VARIANTS if v != "avx512-vnni"]
    size = np.abs(rounded(x)) @ np.abs(rounded(wf)).T
    for y in ys[1:]:
        assert np.all(np.abs(y - ys[0]) <= 2 * 512 * 2.0**-24 * size)


def test_mlx_quantized_layout():
    """The packed int8/int4 formats are MLX's own: mx.quantize's words viewed as bytes, its scales and
    biases; our product matches x @ mx.dequantize(...)^T within the bfloat16 bound."""
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(6)
    wf = rng.standard_normal((48, 256)).astype(np.float32)
    x = rng.standard_normal((10, 256)).astype(np.float32)
    for bits, group in [(4, 64), (8, 64), (4, 32)]:
        q, s, b = mx.quantize(mx.array(wf), group_size=group, bits=bits)
        deq = np.array(mx.dequantize(q, s, b, group_size=group, bits=bits))
        data = np.array(q).view(np.uint8).reshape(48, 256 * bits // 8)
        w = Packed(f"q{bits}", 48, 256, data, np.array(s, np.float32), np.array(b, np.float32), group, bits)
        check_variant(G.best_variant(w.fmt), G.gemm(x, w), x, deq, group)
        for variant in VARIANTS:
            check_variant(variant, G.gemm(x, w, variant), x, deq, group)


def test_bad_input_is_refused():
    rng = np.random.default_rng(7)
    w, _ = random_bf16(rng, 8, 64)
    with pytest.raises(ValueError, match=r"\(T, 64\)"):
        G.gemm(np.zeros((2, 32), np.float32), w)
    with pytest.raises(ValueError, match="unknown gemm variant"):
        G.gemm(np.zeros((2, 64), np.float32), w, "sse2")
    with pytest.raises(ValueError, match="unknown weight format"):
        G.gemm(np.zeros((2, 64), np.float32), Packed("q3", 8, 64, w.data))
    q, _ = random_q(rng, 8, 64, 4, 32)
    with pytest.raises(ValueError, match="group 48"):
        G.gemm(np.zeros((2, 64), np.float32), Packed(**{**q.__dict__, "group": 48,
                                                        "scales": np.zeros((8, 1), np.float32),
                                                        "biases": np.zeros((8, 1), np.float32)}))
    with pytest.raises(ValueError, match="contiguous uint8"):
        G.gemm(np.zeros((2, 64), np.float32), Packed(**{**q.__dict__, "data": q.data[:, :16].copy()}))


def test_empty_block():
    w, _ = random_bf16(np.random.default_rng(8), 8, 64)
    assert G.gemm(np.zeros((0, 64), np.float32), w).shape == (0, 8)


@pytest.mark.skipif(not MISSING, reason="every variant runs on this CPU")
def test_unsupported_variant_says_so():
    w, _ = random_bf16(np.random.default_rng(9), 8, 64)
    with pytest.raises(G.GemmUnavailable, match="does not run on this CPU"):
        G.gemm(np.zeros((2, 64), np.float32), w, MISSING[0])


def test_kernel_benchmark_runs():
    """`python -m engine.bench gemm` at its smallest: one full-size layer, a 4-row block, one round."""
    from engine.bench import gemm as bench

    r = bench.run(bench.parse_args(["--layers", "1", "--rows", "4", "--rounds", "1", "--threads", "1",
                                    "--bits", "4", "--variants", VARIANTS[-1]]))
    (row,) = r["results"]
    assert row["variant"] == VARIANTS[-1] and row["ms_per_block"] > 0 and r["layers"] == 1
    assert "rows/s" in bench.format_result(r)
