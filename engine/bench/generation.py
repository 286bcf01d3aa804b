"""The generation benchmark: how fast CSM makes audio on this machine.

`python -m engine.bench` builds CSM-1B at full size with random weights (nothing is downloaded) or
loads `--model M`, then measures, each in its own timed phase:
  load        building (random normal weights, small std) or loading, casting and quantizing
  prefill     the backbone over `--prompt-tokens` prompt rows (text and audio rows mixed)
  frames      `--frames` frames (backbone step + depth decoder's 31 steps), driven like the
              generator does (the next frame launched with mx.async_eval before the current one is
              read); the count is fixed: the end-of-speech rule never stops the benchmark
  mimi        a full-size Mimi (random weights, engine.mimi defaults) decoding those frames, whole
              and as one streamed chunk (for the time to first audio)
and prints a table, or with --json one JSON object. Real-time factor = compute seconds per second
of audio (below 1 is faster than real time); one frame is 80 ms of audio.

Options: --dtype float32|bfloat16|float16 (default: engine.device.default_dtype()), --quantize 8|4,
--prompt-tokens N, --frames N, --size full|tiny (tiny is for tests), --no-openblas (runs itself
again in a fresh process with CSM_OPENBLAS=0, since the BLAS is chosen before MLX is imported),
--no-mimi, --compile / --no-compile (the engine's compiled frame step), --generator (the same work
again through engine.generator: streaming, Mimi decode overlapped, as CSMModel.generate runs it),
--compare compile|threads|prefill (variants measured side by side, taking turns in one process;
prefill times the prompt prefill of a quantized (default 8-bit) or --dtype bfloat16/float16 model, in
the generator's 64-row blocks, with MLX's own kernels and with products widened to float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from engine.cpu.blas import ENV_SWITCH, blas_info
from engine.csm import CSM, CSMConfig, csm_1b_config
from engine.device import DTYPES, default_dtype
from engine.llama import LlamaArgs

FRAME_SECONDS = 0.08  # one Mimi frame
RESULT_KEYS = (
    "frames_per_second", "real_time_factor", "time_to_first_audio", "prefill_rows_per_second",
    "mimi_decode_realtime_multiple", "peak_memory_gb", "load_seconds", "device", "mlx_version", "blas",
)


def tiny_config() -> CSMConfig:
    """A small CSM with the real vocabulary and codebook count (so sampling costs the same shape)."""
    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    backbone = LlamaArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=256,
                         rope_scaling=scaling, max_seq_len=512)
    decoder = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
                        rope_scaling=scaling, max_seq_len=512)
    return CSMConfig(backbone=backbone, decoder=decoder, text_vocab_size=512, max_seq_len=512)


def random_csm(config: CSMConfig, dtype=mx.float32, seed: int = 0, std: float = 0.02) -> CSM:
    """A CSM with random normal weights (norms at 1), made directly in `dtype` on the device.

    Drawing 1.5 B normal numbers costs minutes on a small CPU, so every tensor is cut from one pool
    of (up to) 2^24 + 43 draws at a random offset; the pool length divides no row length, so no two rows are
    equal. For timing (and for quantization error on random weights) that is as good as fresh draws.
    """
    model = CSM(config)
    params = tree_flatten(model.parameters())
    pool_size = min(1 << 24, max(p.size for _, p in params) // 4) + 43
    pool = mx.random.normal((pool_size,), dtype=dtype, scale=std, key=mx.random.key(seed))
    mx.eval(pool)
    rng = np.random.default_rng(seed)
    new = []
    for name, p in params:
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            value = mx.ones(p.shape, dtype=dtype)
        else:
            value = _cut(pool, int(rng.integers(0, pool_size)), p.size).reshape(p.shape)
        mx.eval(value)  # one tensor at a time: the peak stays near the model's size
        new.append((name, value))
    model.update(tree_unflatten(new))
    return model


def _cut(pool: mx.array, start: int, size: int) -> mx.array:
    """`size` values of `pool` read cyclically from `start`, in a buffer of their own (a slice of a
    tiled pool would keep the whole tiled buffer alive)."""
    n = pool.shape[0]
    parts, left = [], size
    while left > 0:
        take = min(left, n - start)
        parts.append(pool[start : start + take])
        left -= take
        start = 0
    return parts[0] + 0 if len(parts) == 1 else mx.concatenate(parts)


def random_prompt(rows: int, config: CSMConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`rows` prompt rows like a voice prompt: a text segment (1 in 4 rows) then audio rows."""
    rng = np.random.default_rng(seed)
    K = config.audio_num_codebooks
    tokens = np.zeros((rows, K + 1), np.int32)
    mask = np.zeros((rows, K + 1), np.bool_)
    n_text = max(1, rows // 4)
    tokens[:n_text, K] = rng.integers(0, config.text_vocab_size, n_text)
    mask[:n_text, K] = True
    tokens[n_text:, :K] = rng.integers(0, 2048, (rows - n_text, K))
    mask[n_text:, :K] = True
    return tokens, mask


def build_model(args) -> tuple[CSM, float, dict | None]:
    """The model, the seconds it took, and (with --quantize) how far quantizing moved the logits."""
    start = time.perf_counter()
    dtype = DTYPES[args.dtype]
    if args.model:
        from engine.checkpoints import load_csm, resolve_model

        model = load_csm(resolve_model(args.model))
        if not _is_quantized(model):
            model.set_dtype(dtype)
    else:
        config = csm_1b_config() if args.size == "full" else tiny_config()
        model = random_csm(config, dtype, seed=args.seed)
    error = None
    if args.quantize and not _is_quantized(model):
        from engine.bench.accuracy import frame_logits_probe, logit_error
        from engine.quantize import quantize_csm

        probe = random_prompt(16, model.config, args.seed + 1)
        codes = np.random.default_rng(args.seed).integers(0, 2048, model.config.audio_num_codebooks)
        reference = frame_logits_probe(model, *probe, codes)
        mx.eval(reference)
        quantize_csm(model, args.quantize)
        error = logit_error(reference, frame_logits_probe(model, *probe, codes))
    mx.eval(model.parameters())
    return model, time.perf_counter() - start, error


def _is_quantized(model: nn.Module) -> bool:
    return any(k.endswith(".scales") for k, _ in tree_flatten(model.parameters()))


def _sampler():
    from engine.sampling import make_sampler

    return make_sampler(temperature=0.9, top_k=50)


def set_compiled(model: CSM, on: bool) -> bool:
    """Switch the engine's compiled frame step (engine.csm.COMPILE_FRAMES) on or off; True if it has one."""
    import engine.csm as csm_module

    if not hasattr(csm_module, "COMPILE_FRAMES"):
        return False
    csm_module.COMPILE_FRAMES = bool(on)
    getattr(model, "_compiled_frames", {}).clear()
    return True


def _frame_step(model: CSM, sampler):
    """One frame fed back as a row, then the next frame sampled: codes (1, K) -> next codes (1, K)."""

    def step(codes: mx.array, cache) -> mx.array:
        h = model.backbone(model.frame_embedding(codes), cache)  # (1, 1, Db)
        return model.generate_frame(h[:, -1, :], sampler)

    return step


def run_frames(model: CSM, step, codes: mx.array, cache, frames: int) -> tuple[np.ndarray, float]:
    """`frames` frames after `codes`, driven as the generator does (the next frame is launched with
    mx.async_eval before the current one is read). -> (codes (frames, K), seconds)."""
    out = []
    start = time.perf_counter()
    for _ in range(frames):
        nxt = step(codes, cache)  # built while the previous frame may still be computing
        mx.async_eval(nxt)
        out.append(np.array(codes)[0])
        codes = nxt
    out.append(np.array(codes)[0])
    return np.stack(out[1:]).astype(np.int32), time.perf_counter() - start


def measure(model: CSM, prompt_rows: int, frames: int, *, seed: int = 0, mimi=None, chunk_frames: int = 6) -> dict:
    """Time prefill, the frame loop and (with `mimi`) decoding. Returns the figures as a dict."""
    config = model.config
    tokens, mask = random_prompt(prompt_rows, config, seed)
    sampler = _sampler()
    step = _frame_step(model, sampler)
    mx.random.seed(seed)

    # Warm-up on a scratch cache: first calls pay for allocations and (compiled) tracing.
    scratch = model.new_backbone_cache(prompt_rows + 8)
    h = model.backbone(model.embed_rows(tokens[None, :4], mask[None, :4]), scratch)
    run_frames(model, step, model.generate_frame(h[:, -1, :], sampler), scratch, 2)
    del scratch
    mx.reset_peak_memory()

    cache = model.new_backbone_cache(prompt_rows + frames + 1)
    start = time.perf_counter()
    h = model.backbone(model.embed_rows(tokens[None], mask[None]), cache)  # (1, T, Db)
    mx.eval(h)
    prefill_s = time.perf_counter() - start

    codes = model.generate_frame(h[:, -1, :], sampler)
    mx.eval(codes)
    first_frame_s = time.perf_counter() - start - prefill_s
    rest, loop_s = run_frames(model, step, codes, cache, frames - 1)
    codes_np = np.concatenate([np.array(codes), rest]) if frames > 1 else np.array(codes)  # (frames, K)
    steady_fps = (frames - 1) / loop_s if frames > 1 else 1.0 / first_frame_s

    result = {
        "frames": frames,
        "prompt_tokens": prompt_rows,
        "prefill_seconds": prefill_s,
        "prefill_rows_per_second": prompt_rows / prefill_s,
        "first_frame_seconds": first_frame_s,
        "frames_per_second": steady_fps,
        "ms_per_frame": 1000.0 / steady_fps,
        "real_time_factor": (1.0 / steady_fps) / FRAME_SECONDS,
        "generation_seconds": first_frame_s + loop_s,
        "frames_all_decodable": bool((codes_np < 2048).all()),
        "mimi_decode_realtime_multiple": None,
        "mimi_decode_seconds": None,
        "codes": codes_np.astype(np.int32),
    }
    first_chunk = min(chunk_frames, frames)
    # Frames of the first streamed chunk are ready at: prefill + first frame + (chunk-1) steady frames.
    first_chunk_ready = prefill_s + first_frame_s + (first_chunk - 1) / steady_fps
    result["time_to_first_audio"] = first_chunk_ready
    if mimi is not None:
        result.update(measure_mimi(mimi, result["codes"], first_chunk))
        result["time_to_first_audio"] = first_chunk_ready + result["mimi_first_chunk_seconds"]
    result["peak_memory_gb"] = mx.get_peak_memory() / 1e9
    return result


def measure_generator(model: CSM, prompt_rows: int, frames: int, *, seed: int = 0, mimi=None,
                      chunk_frames: int = 6) -> dict | None:
    """The same work through engine.generator.Generator (streaming, Mimi decoding overlapped with the
    frame loop): what a user of CSMModel.generate sees. None when the generator is not available."""
    try:
        from engine.backends import Draw, choose_backend
        from engine.generator import Generator
    except ImportError:
        return None
    tokens, mask = random_prompt(prompt_rows, model.config, seed)
    gen = Generator(choose_backend(model), codec=mimi)
    draw = Draw(temperature=0.9, top_k=50, seed=seed)
    # Warm-up, as measure() has one: a short run of the same shapes (the prompt's 64-row blocks,
    # one-row steps, a streamed chunk), so first-use work (kernel compilation: on CUDA MLX compiles
    # kernels at first use, seconds each on a fresh machine) is not timed as generation.
    warm = min(frames, chunk_frames + 2)
    for _ in gen.generate(tokens, mask, max_frames=warm, draw=draw, stream=mimi is not None,
                          chunk_frames=chunk_frames, reuse_cache=False, decode=mimi is not None):
        pass
    start = time.perf_counter()
    chunks = list(gen.generate(tokens, mask, max_frames=frames, draw=draw, stream=mimi is not None,
                               chunk_frames=chunk_frames, reuse_cache=False, decode=mimi is not None))
    seconds = time.perf_counter() - start
    produced = len(chunks[-1].frames)
    return {
        "frames": produced,
        "stop_reason": chunks[-1].stop_reason,
        "seconds": seconds,
        "real_time_factor": seconds / (produced * FRAME_SECONDS) if produced else None,
        "time_to_first_audio": chunks[0].first_audio_time - start if mimi is not None else None,
        "chunks": len(chunks),
    }


def compare(model: CSM, variants: dict, frames: int, rounds: int = 3, seed: int = 0) -> dict:
    """Frames/s of each variant, measured side by side: the variants take turns, `rounds` times, on
    the same model in one process (so a busy machine slows them alike). `variants` maps a name to a
    function that switches the engine into that variant. -> {name: {"fps": [...], "codes": ...}}"""
    sampler = _sampler()
    step = _frame_step(model, sampler)
    tokens, mask = random_prompt(8, model.config, seed)
    results = {name: {"fps": []} for name in variants}
    for r in range(rounds + 1):  # round 0 warms each variant up (compiles, allocates)
        for name, switch in variants.items():
            switch()
            mx.random.seed(seed)
            cache = model.new_backbone_cache(8 + frames + 2)
            h = model.backbone(model.embed_rows(tokens[None], mask[None]), cache)
            first = model.generate_frame(h[:, -1, :], sampler)
            mx.eval(first)
            codes, seconds = run_frames(model, step, first, cache, frames if r else 2)
            if r:
                results[name]["fps"].append(frames / seconds)
                results[name]["codes"] = codes
    return results


def measure_mimi(mimi, codes: np.ndarray, first_chunk: int) -> dict:
    """Decode the generated frames with Mimi: whole, and the first chunk through the streaming decoder."""
    kf = np.ascontiguousarray(np.clip(codes, 0, 2047).T)  # (K, frames)
    mx.eval(mimi.decode(kf[:, :2]))  # warm-up
    start = time.perf_counter()
    audio = mimi.decode(kf)
    mx.eval(audio)
    whole_s = time.perf_counter() - start
    decoder = mimi.streaming_decoder()
    start = time.perf_counter()
    mx.eval(decoder.decode(kf[:, :first_chunk]))
    chunk_s = time.perf_counter() - start
    seconds = codes.shape[0] * FRAME_SECONDS
    return {"mimi_decode_seconds": whole_s, "mimi_decode_realtime_multiple": seconds / whole_s,
            "mimi_first_chunk_seconds": chunk_s}


def build_mimi(size: str):
    """A random full-size (or tiny) Mimi from engine.mimi, or None when the codec is not available."""
    try:
        from engine.mimi import Mimi, mimi_from_weights, MimiConfig
        from engine.mimi.testing import tiny_mimi_config, tiny_mimi_weights
    except ImportError:
        return None
    config = MimiConfig().to_dict() if size == "full" else tiny_mimi_config()
    return mimi_from_weights(tiny_mimi_weights(config, seed=0), config)


def cpu_kernels_line() -> str:
    """engine.cpu.kernels as the benchmark reports it: the variant in use, or why none."""
    from engine.cpu import kernels as cpu_kernels

    if mx.default_device() != mx.cpu:
        return "not used (GPU)"
    return f"bfloat16, {cpu_kernels.variant()}" if cpu_kernels.available() else f"off: {cpu_kernels.reason()}"


def device_name() -> str:
    device = mx.default_device()
    try:
        info = mx.device_info()
        name = info.get("device_name") or info.get("architecture") or ""
    except Exception:  # older MLX, or no device info
        name = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    where = f"{platform.system()} {platform.machine()}"
    if device.type == mx.DeviceType.cpu:
        return f"cpu: {name or platform.processor()} ({cores} cores, {where})".strip()
    return f"gpu: {name} ({where})"


def default_dtype_name() -> str:
    """The name (a DTYPES key) of engine.device's per-device default dtype."""
    return next(k for k, v in DTYPES.items() if v == default_dtype())


def run(args) -> dict:
    if args.dtype is None:
        args.dtype = default_dtype_name()
    model, load_s, quant_error = build_model(args)
    if not args.quantize:  # a quantized folder given with --model
        args.quantize = next((m.bits for _, m in model.named_modules() if hasattr(m, "bits")), None)
    mimi = None if args.no_mimi else build_mimi(args.size)
    compiled = set_compiled(model, args.compile) and args.compile
    r = measure(model, args.prompt_tokens, args.frames, seed=args.seed, mimi=mimi, chunk_frames=args.chunk_frames)
    r.pop("codes")
    if args.generator:
        r["generator"] = measure_generator(model, args.prompt_tokens, args.frames, seed=args.seed, mimi=mimi,
                                           chunk_frames=args.chunk_frames)
    info = blas_info()
    r.update({
        "load_seconds": load_s,
        "quantization_logit_error": quant_error,
        "model": args.model or f"random CSM-1B ({args.size})",
        "dtype": args.dtype,
        "quantize": args.quantize,
        "compiled": compiled,
        "device": device_name(),
        "mlx_version": mx.__version__,
        "blas": info.describe(),
        "blas_loaded": info.loaded,
        "cpu_kernels": cpu_kernels_line(),
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "command": "python -m engine.bench " + " ".join(args.argv),
    })
    return r


def compare_prefill(model: CSM, variants: dict, rows: int, rounds: int = 3, seed: int = 0) -> dict:
    """Prompt prefill rows/s of each variant, side by side like compare(): `rows` prompt rows run
    through the backbone in the generator's aligned blocks (engine.generator.PREFILL_BLOCK rows).
    -> {name: {"rps": [...], "hidden": last hidden state (NumPy)}}"""
    from engine.generator import PREFILL_BLOCK

    tokens, mask = random_prompt(rows, model.config, seed)
    results = {name: {"rps": []} for name in variants}
    for r in range(rounds + 1):  # round 0 warms each variant up
        for name, switch in variants.items():
            switch()
            cache = model.new_backbone_cache(rows + 1)
            n = rows if r else min(rows, PREFILL_BLOCK)
            start = time.perf_counter()
            for a in range(0, n, PREFILL_BLOCK):
                b = min(a + PREFILL_BLOCK, n)
                h = model.backbone(model.embed_rows(tokens[None, a:b], mask[None, a:b]), cache)
                mx.eval(h)
            seconds = time.perf_counter() - start
            if r:
                results[name]["rps"].append(n / seconds)
                results[name]["hidden"] = np.array(h[0, -1].astype(mx.float32))
    return results


def comparison_variants(which: str) -> dict:
    """Named switches for --compare: 'compile' (eager / compiled frame step, each with and without
    the weight-left matmuls), 'threads' (1 and 2 OpenBLAS threads) or 'prefill' (a quantized or
    half-precision model's multi-row products in MLX's own kernels, or widened to float32 on the CPU)."""
    import engine.llama as llama
    from engine.cpu.blas import default_threads, set_threads

    if which == "prefill":
        def rows_from(n: int):
            def switch():
                llama.FLOAT32_PRODUCT_MIN_ROWS = n
            return switch
        return {"MLX's own kernels (before)": rows_from(1 << 30),
                f"widened to float32 (default, >= {llama.FLOAT32_PRODUCT_MIN_ROWS} rows)": rows_from(llama.FLOAT32_PRODUCT_MIN_ROWS)}

    def setup(compiled: bool, weight_left: bool, threads: int | None = None):
        def switch():
            if hasattr(llama, "MATMUL_WEIGHT_LEFT"):
                llama.MATMUL_WEIGHT_LEFT = weight_left
            set_compiled(_current_model, compiled)
            if threads is not None:
                set_threads(threads)
        return switch

    if which == "threads":
        return {"1 BLAS thread": setup(True, True, 1), "2 BLAS threads": setup(True, True, 2)}
    threads = default_threads()
    return {
        "eager, x @ W.T (before)": setup(False, False, threads),
        "eager, W @ x.T": setup(False, True, threads),
        "compiled, x @ W.T": setup(True, False, threads),
        "compiled, W @ x.T (default)": setup(True, True, threads),
    }


_current_model = None


def run_compare(args) -> dict:
    global _current_model
    model, load_s, _ = build_model(args)
    _current_model = model
    variants = comparison_variants(args.compare)
    common = {"compare": args.compare, "frames": args.frames, "rounds": args.rounds, "dtype": args.dtype,
              "quantize": args.quantize, "model": args.model or f"random CSM-1B ({args.size})",
              "device": device_name(), "mlx_version": mx.__version__, "blas": blas_info().describe(),
              "load_seconds": load_s, "command": "python -m engine.bench " + " ".join(args.argv)}
    if args.compare == "prefill":
        results = compare_prefill(model, variants, args.prompt_tokens, rounds=args.rounds, seed=args.seed)
        first = next(iter(results))
        base = float(np.median(results[first]["rps"]))
        scale = float(np.abs(results[first]["hidden"]).max()) or 1.0
        rows = [{"variant": name, "prefill_rows_per_second": float(np.median(r["rps"])), "all_rps": r["rps"],
                 "speedup": float(np.median(r["rps"])) / base,
                 "hidden_max_rel_diff": float(np.abs(r["hidden"] - results[first]["hidden"]).max()) / scale}
                for name, r in results.items()]
        return {**common, "prompt_tokens": args.prompt_tokens, "rows": rows}
    results = compare(model, variants, args.frames, rounds=args.rounds, seed=args.seed)
    first = next(iter(results))
    rows = []
    for name, r in results.items():
        fps = float(np.median(r["fps"]))
        rows.append({"variant": name, "frames_per_second": fps, "real_time_factor": 1 / fps / FRAME_SECONDS,
                     "all_fps": r["fps"], "speedup": fps / float(np.median(results[first]["fps"])),
                     "same_codes_as_first": bool(np.array_equal(r["codes"], results[first]["codes"]))})
    return {**common, "rows": rows}


def format_compare(r: dict) -> str:
    if r["compare"] == "prefill":
        what = (f"prefill of {r['prompt_tokens']} prompt rows in 64-row blocks x {r['rounds']} rounds, "
                "variants taking turns; median rows/s")
        header = f"{'variant':<44} {'rows/s':>9} {'speedup':>8}  last hidden state, max rel. diff"
        def line(row):
            return (f"{row['variant']:<44} {row['prefill_rows_per_second']:>9.2f} {row['speedup']:>7.2f}x  "
                    f"{row['hidden_max_rel_diff']:.1e}")
    else:
        what = f"{r['frames']} frames x {r['rounds']} rounds, variants taking turns; median frames/s"
        header = f"{'variant':<32} {'frames/s':>9} {'RTF':>8} {'speedup':>8}  same codes"
        def line(row):
            return (f"{row['variant']:<32} {row['frames_per_second']:>9.3f} {row['real_time_factor']:>8.2f} "
                    f"{row['speedup']:>7.2f}x  {row['same_codes_as_first']}")
    model = f"{r['model']}, {r['dtype']}{', %d-bit' % r['quantize'] if r['quantize'] else ''}"
    return "\n".join([f"{model}; {r['device']}; MLX {r['mlx_version']}; {r['blas']}", what, header,
                      *map(line, r["rows"]), f"command: {r['command']}"])


def format_table(r: dict) -> str:
    def fmt(v, unit=""):
        if v is None:
            return "n/a"
        return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"

    rows = [
        ("model", r["model"]), ("dtype", r["dtype"] + (f", {r['quantize']}-bit" if r["quantize"] else "")),
        ("device", r["device"]), ("mlx", r["mlx_version"]), ("blas", r["blas"]),
        ("cpu kernels", r.get("cpu_kernels") or "n/a"),
        ("load", fmt(r["load_seconds"], " s")),
        ("prefill", f"{r['prompt_tokens']} rows in {fmt(r['prefill_seconds'], ' s')} "
                    f"({r['prefill_rows_per_second']:.1f} rows/s)"),
        ("frames", f"{r['frames']} ({fmt(r['ms_per_frame'], ' ms')} per frame)"),
        ("frames/s", fmt(r["frames_per_second"])),
        ("real-time factor", fmt(r["real_time_factor"]) + "  (s of compute per s of audio)"),
        ("time to first audio", fmt(r["time_to_first_audio"], " s")),
        ("mimi decode", fmt(r["mimi_decode_realtime_multiple"], "x real time")),
        ("peak memory", fmt(r["peak_memory_gb"], " GB")),
        *([("generator (streaming)", _generator_line(r["generator"]))] if r.get("generator") else []),
        *([("logits vs float", _error_line(r["quantization_logit_error"]))] if r["quantization_logit_error"] else []),
        ("command", r["command"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _generator_line(g: dict) -> str:
    ttfa = f", first audio {g['time_to_first_audio']:.3f} s" if g["time_to_first_audio"] is not None else ""
    return f"{g['frames']} frames in {g['seconds']:.3f} s (RTF {g['real_time_factor']:.3f}{ttfa}, {g['stop_reason']})"


def _error_line(e: dict) -> str:
    c0, a = e["codebook0"], e["all"]
    return (f"codebook 0: max abs {c0['max_abs']:.3g} (rel {c0['rel']:.3g}), argmax kept {c0['argmax_agree']:.0%}; "
            f"all codebooks: max abs {a['max_abs']:.3g} (rel {a['rel']:.3g}), argmax kept {a['argmax_agree']:.0%}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model name or folder (default: random weights)")
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="random model size")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: engine.device.default_dtype()")
    p.add_argument("--quantize", type=int, choices=(8, 6, 5, 4, 3, 2), default=None, help="bits")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt rows to prefill")
    p.add_argument("--frames", type=int, default=30, help="frames to generate (80 ms each)")
    p.add_argument("--chunk-frames", type=int, default=6, help="frames in the first streamed chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-openblas", action="store_true", help="MLX's own reference BLAS (Linux CPU)")
    p.add_argument("--no-mimi", action="store_true", help="skip the codec decode")
    p.add_argument("--compile", dest="compile", action="store_true", default=True)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--generator", action="store_true",
                   help="also run the same work through engine.generator (streaming, decode overlapped)")
    p.add_argument("--compare", choices=("compile", "threads", "prefill"), default=None,
                   help="measure variants side by side, taking turns, instead of the usual run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.frames < 1 or args.prompt_tokens < 1:
        p.error("--frames and --prompt-tokens must be at least 1")
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.no_openblas and blas_info().loaded:
        # The BLAS was bound when MLX was imported: only a fresh process can run without it.
        env = {**os.environ, ENV_SWITCH: "0"}
        return subprocess.call([sys.executable, "-m", "engine.bench", "generation", *argv], env=env)
    if args.compare:
        if args.dtype is None:
            args.dtype = default_dtype_name()
        if args.compare == "prefill" and args.quantize is None and args.dtype == "float32":
            args.quantize = 8  # nothing to compare in a float32 model
        result = run_compare(args)
        print(json.dumps(result) if args.json else format_compare(result), flush=True)
        return 0
    from engine.errors import CSMError

    try:
        result = run(args)
    except CSMError as error:  # a bad --model and the like: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
