"""`python -m engine.bench gemm`: the prefill kernels (engine/cpu/gemm.c) over a full-size backbone.

One prompt block of `--rows` rows (64: the Generator's canonical block) goes through the 7 products
of each of the 16 backbone layers (q, k, v, o, gate, up, down) with random packed weights: bfloat16,
int8 or int4 (MLX affine, group 64), 16 distinct layers, so a block reads every backbone weight once,
as a real prefill does. Variants (and thread counts) take turns, `--rounds` times; the median is
reported as ms per block, GFLOP/s, weight GB/s and the rows/s it allows, with the process's CPU
time per block (on a shared machine, one thread's CPU time is the steadier measure of the work).

The rest of a layer (RMSNorm, RoPE into the cache, causal attention over it, SwiGLU, residuals) is
timed separately through the backend's own native pieces (engine/cpu/prefill.c) for the same block
at `--context` earlier positions, as the backend adds it around the products; `rows/s with the
rest` combines the two.
Needs ~2 GB for bfloat16 weights: run full-size measurements one at a time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..cpu import gemm as G
from ..csm import llama_1b

GROUP = 64


class Packed:
    """A packed weight with the fields gemm reads (engine/cpu/pack.py's PackedWeight has them too)."""

    def __init__(self, fmt, out, in_, data, scales=None, biases=None, group=0, bits=16):
        self.fmt, self.out, self.in_, self.data = fmt, out, in_, data
        self.scales, self.biases, self.group, self.bits = scales, biases, group, bits


def layer_shapes(args) -> list[tuple[str, int, int]]:
    """(name, out, in) of one backbone layer's products."""
    d, hd = args.dim, args.head_dim
    return [("q", args.n_heads * hd, d), ("k", args.n_kv_heads * hd, d), ("v", args.n_kv_heads * hd, d),
            ("o", d, args.n_heads * hd), ("gate", args.hidden_dim, d), ("up", args.hidden_dim, d),
            ("down", d, args.hidden_dim)]


def random_weight(rng, out: int, in_: int, bits: int) -> Packed:
    if bits == 16:  # bfloat16 bits of magnitudes ~2^-7..2^-5, both signs
        data = rng.integers(0x3C00, 0x3D80, (out, in_), dtype=np.uint16) | (rng.integers(0, 2, (out, 1), dtype=np.uint16) << 15)
        return Packed("bf16", out, in_, np.ascontiguousarray(data))
    codes = rng.integers(0, 256, (out, in_ * bits // 8), dtype=np.uint8)
    scales = (rng.standard_normal((out, in_ // GROUP)) * 1e-3).astype(np.float32)
    biases = (rng.standard_normal((out, in_ // GROUP)) * 1e-2).astype(np.float32)
    return Packed(f"q{bits}", out, in_, codes, scales, biases, GROUP, bits)


def time_block(layers, xs, variant: str, threads: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one block through `layers`."""
    start, cpu = time.perf_counter(), time.process_time()
    for layer in layers:
        for w in layer:
            G.gemm(xs[w.in_], w, variant, threads)
    return time.perf_counter() - start, time.process_time() - cpu


def rest_of_block(args, rows: int, context: int, rng, threads: int) -> float:
    """Seconds for the non-product work of one block through all layers, as engine/cpu/prefill.py
    runs it (engine/cpu/prefill.c on `threads` threads): two RMSNorms, RoPE on q and k with the keys
    and values stored into a cache, causal grouped-query attention over context + rows positions,
    SwiGLU, residuals."""
    from ..cpu.frame import _rope_tables, library
    from ..cpu.prefill import _ptr as p

    lib = library()
    d, hd, H, KV, F = args.dim, args.head_dim, args.n_heads, args.n_kv_heads, args.hidden_dim
    cap = context + rows
    x = rng.standard_normal((rows, d)).astype(np.float32)
    h, w = np.empty_like(x), np.ones(d, np.float32)
    q = rng.standard_normal((rows, H * hd)).astype(np.float32)
    k, v = (rng.standard_normal((rows, KV * hd)).astype(np.float32) for _ in range(2))
    kv = rng.standard_normal((2, KV, cap, hd)).astype(np.float32)
    out = np.empty_like(q)
    gate, up = (rng.standard_normal((rows, F)).astype(np.float32) for _ in range(2))
    cos, sin = _rope_tables(1.0 / 500000.0 ** (np.arange(0, hd, 2) / hd), cap)
    start = time.perf_counter()
    for _ in range(args.n_layers):
        lib.csm_prefill_norm(p(x), rows, d, p(w), 1e-5, p(h), threads)
        lib.csm_prefill_rope_store(p(q), p(k), p(v), rows, H, KV, hd, p(cos), p(sin), context, p(kv), cap, threads)
        lib.csm_prefill_attention(p(q), rows, H, KV, hd, p(kv), cap, context, hd ** -0.5, p(out), threads)
        x += h
        lib.csm_prefill_norm(p(x), rows, d, p(w), 1e-5, p(h), threads)
        lib.csm_prefill_swiglu(p(gate), p(up), gate.size, threads)
        x += h
    return time.perf_counter() - start


def run(ns) -> dict:
    args = llama_1b()
    if ns.layers:
        args.n_layers = ns.layers
    shapes = layer_shapes(args)
    fmt = "bf16" if ns.bits == 16 else f"q{ns.bits}"
    skip = ("portable", "avx512-vnni") if fmt == "bf16" else ("portable",)  # vnni runs bf16 as avx512-bf16
    variants = ([G.best_variant(fmt)] if ns.variants == "best" else ns.variants.split(",") if ns.variants
                else [v for v in G.VARIANTS[::-1] if G.supported(v) and v not in skip] or ["portable"])
    for v in variants:
        if not G.supported(v):
            raise SystemExit(f"variant {v} does not run on this CPU (supported: "
                             f"{', '.join(x for x in G.VARIANTS if G.supported(x))})")
    rng = np.random.default_rng(ns.seed)
    t0 = time.perf_counter()
    layers = [[random_weight(rng, o, i, ns.bits) for _, o, i in shapes] for _ in range(args.n_layers)]
    made = time.perf_counter() - t0
    xs = {i: rng.standard_normal((ns.rows, i)).astype(np.float32) for i in {i for _, _, i in shapes}}
    weight_bytes = sum(w.data.nbytes + (w.scales.nbytes * 2 if w.scales is not None else 0) for layer in layers for w in layer)
    flops = 2.0 * ns.rows * sum(o * i for _, o, i in shapes) * args.n_layers
    runs = [(v, t) for v in variants for t in ns.threads]
    for v, t in runs:  # warm up: builds, page faults, AMX state
        time_block(layers[:1], xs, v, t)
    times = {run: [] for run in runs}
    cpu_times = {run: [] for run in runs}
    for _ in range(ns.rounds):
        for run_ in runs:
            wall, cpu = time_block(layers, xs, *run_)
            times[run_].append(wall)
            cpu_times[run_].append(cpu)
    rest = float(np.median([rest_of_block(args, ns.rows, ns.context, rng, max(ns.threads)) for _ in range(3)]))
    rows = []
    for (v, t), ts in times.items():
        s = float(np.median(ts))
        rows.append({"variant": v, "threads": t, "ms_per_block": s * 1e3, "all_ms": [x * 1e3 for x in ts],
                     "cpu_ms_per_block": float(np.median(cpu_times[(v, t)])) * 1e3,
                     "gflops": flops / s / 1e9, "weight_gb_per_s": weight_bytes / s / 1e9,
                     "rows_per_second_products": ns.rows / s,
                     "rows_per_second_with_rest": ns.rows / (s + rest)})
    return {"bits": ns.bits, "rows": ns.rows, "layers": args.n_layers, "rounds": ns.rounds,
            "context": ns.context, "weight_gb": weight_bytes / 1e9, "gflop_per_block": flops / 1e9,
            "rest_ms_per_block": rest * 1e3, "weights_made_s": made, "results": rows}


def format_result(r: dict) -> str:
    kind = {16: "bfloat16", 8: "int8 (group 64)", 4: "int4 (group 64)"}[r["bits"]]
    lines = [f"prefill products, {kind} weights ({r['weight_gb']:.2f} GB), one {r['rows']}-row block through "
             f"{r['layers']} layers x 7 products ({r['gflop_per_block']:.0f} GFLOP), median of {r['rounds']} rounds "
             f"taking turns",
             f"{'variant':<14}{'threads':>8}{'ms/block':>10}{'GFLOP/s':>9}{'GB/s':>7}{'rows/s':>8}"
             f"{'with rest':>11}{'CPU ms':>9}"]
    for x in r["results"]:
        lines.append(f"{x['variant']:<14}{x['threads']:>8}{x['ms_per_block']:>10.1f}{x['gflops']:>9.0f}"
                     f"{x['weight_gb_per_s']:>7.1f}{x['rows_per_second_products']:>8.0f}"
                     f"{x['rows_per_second_with_rest']:>11.0f}{x['cpu_ms_per_block']:>9.0f}")
    lines.append("CPU ms: this process's CPU time per block (all threads; spinning threads count): on a busy "
                 "machine wall time rises while one thread's CPU time stays near the work itself")
    lines.append(f"rest of the layers (norms, RoPE, attention over {r['context']} earlier positions, SwiGLU), "
                 f"native: {r['rest_ms_per_block']:.1f} ms per block")
    return "\n".join(lines)


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.bench gemm", description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, choices=(16, 8, 4), default=16, help="16 = bfloat16 weights")
    p.add_argument("--rows", type=int, default=64, help="rows of the block (default 64)")
    p.add_argument("--layers", type=int, default=None, help="backbone layers (default: all 16)")
    p.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(G.VARIANTS)}, or 'best' "
                                                     "(default: the SIMD ones this CPU runs)")
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--context", type=int, default=64, help="earlier positions the block attends to")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv=None) -> int:
    ns = parse_args(argv)
    if not G.available():
        print(f"the prefill kernels are not available: {G.reason()}")
        return 2
    r = run(ns)
    print(json.dumps(r) if ns.json else format_result(r), flush=True)
    return 0
