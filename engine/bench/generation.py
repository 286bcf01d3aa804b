"""The generation benchmark: how fast CSM makes audio on this machine.

`python -m engine.bench` builds CSM-1B at full size with random weights (nothing is downloaded) or
loads `--model M`, then measures, each in its own timed phase:
  load        building (random normal weights, small std) or loading, casting and quantizing
  prefill     the backbone over `--prompt-tokens` prompt rows (text and audio rows mixed)
  frames      `--frames` frames (backbone step + depth decoder's 31 steps) through the frame
              backend load_model would choose (or --backend), driven like the generator does (the
              next frame started before the current one is read); the count is fixed: the
              end-of-speech rule never stops the benchmark
  mimi        a full-size Mimi (random weights, engine.mimi defaults) decoding those frames, whole
              and as one streamed chunk (for the time to first audio)
The time to first audio is prefill + the first frame + the rest of the first chunk's frames
(`--chunk-frames`, at the steady rate) + decoding that chunk; frames/s with decode is the frames over
the frame loop's time plus decoding them all (not overlapped, unlike the generator's streaming).
and prints a table, or with --json one JSON object. Real-time factor = compute seconds per second
of audio (below 1 is faster than real time); one frame is 80 ms of audio.

Options: --dtype float32|bfloat16|float16 (default: engine.device.default_dtype()), --quantize 8|4,
--backend auto|mlx|cpu (which frame backend; the table says which ran and, after a fallback, why),
--threads N (native CPU backend), --prompt-tokens N, --frames N, --size full|tiny (tiny is for
tests), --no-openblas (runs itself again in a fresh process with CSM_OPENBLAS=0, since the BLAS is
chosen before MLX is imported), --no-mimi, --compile / --no-compile (the MLX backend's compiled frame
step), --generator (the same work again through engine.generator: streaming, Mimi decode
overlapped, as CSMModel.generate runs it), --compare backends|compile|threads|prefill (variants
measured side by side, taking turns in one process: the MLX and native CPU backends' frames or
prompt prefill, MLX eager/compiled, 1 and 2 threads). For the native backend the table also gives
the weight bytes a frame reads and the rate reached.
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
from mlx.utils import tree_flatten

from engine.checkpoints.tiny import quantizable_tiny_config as tiny_config  # the name bench/conversation.py imports
from engine.checkpoints.tiny import random_csm, random_prompt
from engine.cpu.blas import ENV_SWITCH, blas_info
from engine.csm import CSM, CSMConfig, csm_1b_config
from engine.device import DTYPES, default_dtype

FRAME_SECONDS = 0.08  # one Mimi frame
RESULT_KEYS = (
    "frames_per_second", "real_time_factor", "time_to_first_audio", "prefill_rows_per_second",
    "frames_per_second_with_decode",
    "mimi_decode_realtime_multiple", "peak_memory_gb", "load_seconds", "device", "mlx_version", "blas",
)


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


def make_backend(model: CSM, args, **changes):
    """The frame backend the engine would choose for `model` under the benchmark's settings
    (--backend, --compile, --threads), as load_model chooses it."""
    from engine.backends import choose_backend
    from engine.options import EngineOptions

    settings = {"backend": args.backend, "compile": args.compile, "threads": args.threads, **changes}
    return choose_backend(model, EngineOptions.from_env(**settings))


def _draw(seed: int):
    from engine.backends import Draw

    return Draw(temperature=0.9, top_k=50, suppress_undecodable=True, seed=seed, frame=0)


def as_float32(x) -> np.ndarray:
    """A backend's result (an MLX array of any dtype, or NumPy) as float32 NumPy, evaluated."""
    if isinstance(x, mx.array):
        return np.array(x.astype(mx.float32))
    return np.asarray(x, dtype=np.float32)


def prefill(backend, cache, tokens: np.ndarray, mask: np.ndarray):
    """The prompt in the generator's aligned blocks, as the generator prefills it
    (backend.prefill_blocks) -> the last hidden state."""
    from engine.generator import PREFILL_BLOCK

    return backend.prefill_blocks(cache, tokens, mask, PREFILL_BLOCK)


def run_frames(backend, cache, codes, draw, first_frame: int, frames: int) -> tuple[np.ndarray, float]:
    """`frames` frames after `codes`, driven as the generator does (the next frame is started with
    backend.start before the current one is read). -> (codes (frames, K), seconds)."""
    out = []
    start = time.perf_counter()
    for i in range(frames):
        nxt = backend.step([cache], codes, [draw.at(first_frame + i)])
        backend.start(nxt)
        out.append(np.asarray(codes).reshape(-1))
        codes = nxt
    out.append(np.asarray(codes).reshape(-1))
    return np.stack(out[1:]).astype(np.int32), time.perf_counter() - start


def measure(backend, config: CSMConfig, prompt_rows: int, frames: int, *, seed: int = 0, mimi=None,
            chunk_frames: int = 6) -> dict:
    """Time prefill, the frame loop and (with `mimi`) decoding through `backend`. -> the figures."""
    tokens, mask = random_prompt(prompt_rows, config, seed)
    draw = _draw(seed)

    # Warm-up on a scratch cache: first calls pay for allocations and (compiled) tracing.
    scratch = backend.new_cache(prompt_rows + 8)
    h = backend.prefill(scratch, tokens[:4], mask[:4])
    run_frames(backend, scratch, backend.frames_from_hidden([h], [draw]), draw, 1, 2)
    del scratch
    mx.reset_peak_memory()

    cache = backend.new_cache(prompt_rows + frames + 1)
    start = time.perf_counter()
    h = prefill(backend, cache, tokens, mask)
    as_float32(h)
    prefill_s = time.perf_counter() - start

    codes = backend.frames_from_hidden([h], [draw])
    codes = np.asarray(codes)
    first_frame_s = time.perf_counter() - start - prefill_s
    rest, loop_s = run_frames(backend, cache, codes, draw, 1, frames - 1)
    codes_np = np.concatenate([codes, rest]) if frames > 1 else codes  # (frames, K)
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
    result["first_chunk_frames"] = first_chunk
    result["time_to_first_audio"] = first_chunk_ready
    result["frames_per_second_with_decode"] = result["all_audio_seconds"] = None
    if mimi is not None:
        result.update(measure_mimi(mimi, result["codes"], first_chunk))
        result["time_to_first_audio"] = first_chunk_ready + result["mimi_first_chunk_seconds"]
        # every frame made and decoded (the decode timed whole, after the frames: not overlapped)
        made_and_decoded = result["generation_seconds"] + result["mimi_decode_seconds"]
        result["frames_per_second_with_decode"] = frames / made_and_decoded
        result["all_audio_seconds"] = prefill_s + made_and_decoded
    result["mlx_peak_memory_gb"] = mx.get_peak_memory() / 1e9
    return result


def measure_generator(backend, config: CSMConfig, prompt_rows: int, frames: int, *, seed: int = 0, mimi=None,
                      chunk_frames: int = 6) -> dict:
    """The same work through engine.generator.Generator (streaming, Mimi decoding overlapped with the
    frame loop): what a user of CSMModel.generate sees."""
    from engine.generator import Generator

    tokens, mask = random_prompt(prompt_rows, config, seed)
    gen = Generator(backend, codec=mimi)
    # Warm-up, as measure() has one: a short run of the same shapes (the prompt's 64-row blocks,
    # one-row steps, a streamed chunk), so first-use work (kernel compilation: on CUDA MLX compiles
    # kernels at first use, seconds each on a fresh machine) is not timed as generation.
    warm = min(frames, chunk_frames + 2)
    for _ in gen.generate(tokens, mask, max_frames=warm, draw=_draw(seed), stream=mimi is not None,
                          chunk_frames=chunk_frames, reuse_cache=False, decode=mimi is not None):
        pass
    start = time.perf_counter()
    chunks = list(gen.generate(tokens, mask, max_frames=frames, draw=_draw(seed), stream=mimi is not None,
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


def compare(config: CSMConfig, variants: dict, frames: int, rounds: int = 3, seed: int = 0) -> dict:
    """Frames/s of each variant (a frame backend), measured side by side: the variants take turns,
    `rounds` times, in one process (so a busy machine slows them alike).
    -> {name: {"fps": [...], "codes": ...}}"""
    tokens, mask = random_prompt(8, config, seed)
    draw = _draw(seed)
    results = {name: {"fps": []} for name in variants}
    for r in range(rounds + 1):  # round 0 warms each variant up (compiles, allocates)
        for name, backend in variants.items():
            cache = backend.new_cache(8 + frames + 2)
            h = prefill(backend, cache, tokens, mask)
            first = np.asarray(backend.frames_from_hidden([h], [draw]))
            codes, seconds = run_frames(backend, cache, first, draw, 1, frames if r else 2)
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


def default_dtype_name(args=None) -> str:
    """The name (a DTYPES key) of engine.device's per-device default dtype (for --backend)."""
    from engine.options import EngineOptions

    options = EngineOptions.from_env(backend=getattr(args, "backend", None))
    return next(k for k, v in DTYPES.items() if v == default_dtype(options))


def run(args) -> dict:
    if args.dtype is None:
        args.dtype = default_dtype_name(args)
    model, load_s, quant_error = build_model(args)
    if not args.quantize:  # a quantized folder given with --model
        args.quantize = next((m.bits for _, m in model.named_modules() if hasattr(m, "bits")), None)
    mimi = None if args.no_mimi else build_mimi(args.size)
    backend = make_backend(model, args)
    r = measure(backend, model.config, args.prompt_tokens, args.frames, seed=args.seed, mimi=mimi,
                chunk_frames=args.chunk_frames)
    r.pop("codes")
    if args.generator:
        r["generator"] = measure_generator(backend, model.config, args.prompt_tokens, args.frames, seed=args.seed,
                                           mimi=mimi, chunk_frames=args.chunk_frames)
    info = blas_info()
    r.update(weight_bandwidth(backend, r["frames_per_second"]))
    r.update({
        "load_seconds": load_s,
        "quantization_logit_error": quant_error,
        "model": args.model or f"random CSM-1B ({args.size})",
        "dtype": args.dtype,
        "quantize": args.quantize,
        "backend": backend.name,
        "backend_detail": backend.detail,
        "device": device_name(),
        "mlx_version": mx.__version__,
        "blas": info.describe(),
        "blas_loaded": info.loaded,
        "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "command": "python -m engine.bench " + " ".join(args.argv),
    })
    return r


def weight_bandwidth(backend, frames_per_second: float) -> dict:
    """Bytes of weights one frame reads (the native backend knows them) and the rate reached."""
    packed = getattr(backend, "packed", None)
    if packed is None:
        return {"frame_weight_gb": None, "weight_gb_per_second": None}
    gb = packed.frame_bytes() / 1e9
    return {"frame_weight_gb": gb, "weight_gb_per_second": gb * frames_per_second}


def compare_prefill(config: CSMConfig, variants: dict, rows: int, rounds: int = 3, seed: int = 0) -> dict:
    """Prompt prefill rows/s of each variant (a backend), side by side like compare(): `rows` prompt
    rows in the generator's aligned blocks (prefill() above).
    -> {name: {"rps": [...], "hidden": last hidden state (NumPy)}}"""
    from engine.generator import PREFILL_BLOCK

    tokens, mask = random_prompt(rows, config, seed)
    results = {name: {"rps": []} for name in variants}
    for r in range(rounds + 1):  # round 0 warms each variant up
        for name, backend in variants.items():
            cache = backend.new_cache(rows + 1)
            n = rows if r else min(rows, PREFILL_BLOCK)
            start = time.perf_counter()
            h = as_float32(prefill(backend, cache, tokens[:n], mask[:n]))
            seconds = time.perf_counter() - start
            if r:
                results[name]["rps"].append(n / seconds)
                results[name]["hidden"] = h
    return results


def comparison_variants(which: str, model: CSM, args) -> dict:
    """Named backends for --compare: 'backends' (the MLX and the native CPU backend), 'compile'
    (MLX's frame step eager and compiled), 'threads' (the chosen backend with 1 and 2 threads) or
    'prefill' (the backends' prompt prefill)."""
    if which in ("backends", "prefill"):
        from engine.cpu.blas import configured_threads, set_threads

        cpu = make_backend(model, args, backend="cpu")
        set_threads(configured_threads())  # the native backend gave MLX's BLAS one thread; MLX's frames use them all
        return {"mlx": make_backend(model, args, backend="mlx"), "cpu": cpu}
    if which == "compile":
        return {"mlx eager": make_backend(model, args, backend="mlx", compile=False),
                "mlx compiled": make_backend(model, args, backend="mlx", compile=True)}
    from engine.cpu.blas import set_threads

    set_threads(1)
    one = make_backend(model, args, threads=1)
    set_threads(2)
    return {"1 thread": one, "2 threads": make_backend(model, args, threads=2)}


def run_compare(args) -> dict:
    model, load_s, _ = build_model(args)
    variants = comparison_variants(args.compare, model, args)
    common = {"compare": args.compare, "frames": args.frames, "rounds": args.rounds, "dtype": args.dtype,
              "quantize": args.quantize, "model": args.model or f"random CSM-1B ({args.size})",
              "device": device_name(), "mlx_version": mx.__version__, "blas": blas_info().describe(),
              "backends": {name: b.detail for name, b in variants.items()},
              "load_seconds": load_s, "command": "python -m engine.bench " + " ".join(args.argv)}
    if args.compare == "prefill":
        results = compare_prefill(model.config, variants, args.prompt_tokens, rounds=args.rounds, seed=args.seed)
        first = next(iter(results))
        base = float(np.median(results[first]["rps"]))
        scale = float(np.abs(results[first]["hidden"]).max()) or 1.0
        rows = [{"variant": name, "prefill_rows_per_second": float(np.median(r["rps"])), "all_rps": r["rps"],
                 "speedup": float(np.median(r["rps"])) / base,
                 "hidden_max_rel_diff": float(np.abs(r["hidden"] - results[first]["hidden"]).max()) / scale}
                for name, r in results.items()]
        return {**common, "prompt_tokens": args.prompt_tokens, "rows": rows}
    results = compare(model.config, variants, args.frames, rounds=args.rounds, seed=args.seed)
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
    backends = [f"  {name}: {detail}" for name, detail in r["backends"].items()]
    return "\n".join([f"{model}; {r['device']}; MLX {r['mlx_version']}; {r['blas']}", "backends:", *backends,
                      what, header, *map(line, r["rows"]), f"command: {r['command']}"])


def format_table(r: dict) -> str:
    def fmt(v, unit=""):
        if v is None:
            return "n/a"
        return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"

    rows = [
        ("model", r["model"]), ("dtype", r["dtype"] + (f", {r['quantize']}-bit" if r["quantize"] else "")),
        ("device", r["device"]), ("mlx", r["mlx_version"]), ("blas", r["blas"]),
        ("backend", f"{r['backend']} ({r['backend_detail']})"),
        ("load", fmt(r["load_seconds"], " s")),
        ("prefill", f"{r['prompt_tokens']} rows in {fmt(r['prefill_seconds'], ' s')} "
                    f"({r['prefill_rows_per_second']:.1f} rows/s)"),
        ("frames", f"{r['frames']} ({fmt(r['ms_per_frame'], ' ms')} per frame)"),
        ("frames/s", fmt(r["frames_per_second"])),
        ("real-time factor", fmt(r["real_time_factor"]) + "  (s of compute per s of audio)"),
        ("time to first audio", fmt(r["time_to_first_audio"], " s")),
        ("mimi decode", fmt(r["mimi_decode_realtime_multiple"], "x real time")),
        *([("frames/s with decode", fmt(r["frames_per_second_with_decode"]) + "  (the frames, then their decode)")]
          if r.get("frames_per_second_with_decode") else []),
        *([("weights read", f"{r['frame_weight_gb']:.2f} GB per frame, {r['weight_gb_per_second']:.1f} GB/s")]
          if r.get("frame_weight_gb") else []),
        ("peak memory", fmt(r["peak_memory_gb"], " GB") + "  (process peak RSS)"),
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
    p.add_argument("--backend", choices=("auto", "mlx", "cpu"), default=None,
                   help="frame backend (default: as load_model chooses, CSM_BACKEND)")
    p.add_argument("--threads", type=int, default=None, help="native CPU backend threads")
    p.add_argument("--compile", dest="compile", action="store_true", default=True)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--generator", action="store_true",
                   help="also run the same work through engine.generator (streaming, decode overlapped)")
    p.add_argument("--compare", choices=("backends", "compile", "threads", "prefill"), default=None,
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
            args.dtype = default_dtype_name(args)
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
