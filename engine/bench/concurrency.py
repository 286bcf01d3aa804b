"""The concurrency benchmark: N streams generated at once through the batching scheduler.

`python -m engine.bench concurrency [--streams 1,2,4,8] [--size full|tiny] [--frames 24] [--json]`

For each N, N requests (each with its own seed, a short voice prompt of random codes and a line of
text) are submitted together and consumed side by side, as the server's worker consumes its jobs:
the scheduler advances all of them by one frame per tick through one batched backend step.
Reported per N: aggregate frames/s (all frames / wall time), per-stream frames/s, time to first
audio (first streamed chunk, Mimi-decoded unless --no-mimi) under that load, the speedup over one
stream alone, and peak memory. `--max-batch 1` runs the same load one request after another.

Weights are random (nothing is downloaded). Full size needs ~7 GB: run it under a lock
(`flock LOCKFILE python -m engine.bench concurrency`) when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import mlx.core as mx
import numpy as np

FRAME_MS = 80
LINE = "Thanks for calling, let me check that for you right away."


def run_load(model, voice, streams: int, frames: int, chunk_frames: int, max_batch: int,
             seed: int) -> dict:
    """N requests at once through the scheduler; -> figures for this N."""
    scheduler = model.generator.batch(max_batch=max_batch)
    try:
        started = time.perf_counter()
        iterators = [
            model.generate(LINE, voice=None, speaker=0, context=[voice], stream=True,
                           streaming_interval=chunk_frames * FRAME_MS / 1000,
                           max_audio_length_ms=frames * FRAME_MS, seed=seed + i, watermark=False,
                           cache_key=("bench", i))
            for i in range(streams)
        ]
        first = [None] * streams
        done = [None] * streams
        produced = [0] * streams
        live = set(range(streams))
        while live:
            for i in sorted(live):
                try:
                    result = next(iterators[i])
                except StopIteration:
                    live.discard(i)
                    continue
                now = time.perf_counter()
                if first[i] is None and result.samples:
                    first[i] = now - started
                produced[i] = len(result.frames)
                if result.is_final:
                    done[i] = now - started
        wall = time.perf_counter() - started
    finally:
        model.generator.unbatch()
    total = sum(produced)
    return {
        "streams": streams,
        "max_batch": max_batch,
        "frames": total,
        "seconds": wall,
        "aggregate_fps": total / wall,
        "per_stream_fps": [p / d for p, d in zip(produced, done)],
        "time_to_first_audio": [f if f is not None else d for f, d in zip(first, done)],
        "ticks": scheduler.ticks,
        "peak_batch": scheduler.peak_batch,
        "peak_memory_gb": _peak_memory_gb(),
    }


def _peak_memory_gb() -> float:
    mlx_peak = mx.get_peak_memory() / 1e9 if hasattr(mx, "get_peak_memory") else 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux -> GB
    return max(mlx_peak, rss)


def run(args) -> dict:
    from engine.bench.conversation import build_model, voice_prompts
    from engine.bench.generation import device_name

    model, load_seconds, dtype = build_model(args.size, args.dtype, not args.no_mimi, args.seed)
    voice = voice_prompts(args.voice_seconds, args.seed)[0]
    # warm-up: compiles, first allocations, one request through the same path
    run_load(model, voice, 1, min(args.frames, args.chunk_frames + 2), args.chunk_frames, 1, args.seed)
    loads = []
    for n in args.streams:
        r = run_load(model, voice, n, args.frames, args.chunk_frames, args.max_batch or n, args.seed)
        loads.append(r)
        if not args.quiet:
            print(f"  {n} stream(s): {r['aggregate_fps']:.2f} frames/s aggregate, first audio "
                  f"{np.median(r['time_to_first_audio']):.2f} s (median)", file=sys.stderr, flush=True)
    one = next((r for r in loads if r["streams"] == 1), None)
    for r in loads:
        r["speedup_over_one"] = r["aggregate_fps"] / one["aggregate_fps"] if one else None
    return {
        "benchmark": "concurrency",
        "size": args.size,
        "dtype": str(dtype),
        "device": device_name(),
        "backend": model.backend.detail,
        "frames_per_stream": args.frames,
        "chunk_frames": args.chunk_frames,
        "prompt_rows": int(model.prompt_rows([voice]) + model.text_rows(LINE)),
        "load_seconds": load_seconds,
        "loads": loads,
    }


def format_table(r: dict) -> str:
    lines = [f"concurrency: {r['size']} {r['dtype']} on {r['device']} ({r['backend']}), "
             f"{r['frames_per_stream']} frames per stream, prompt {r['prompt_rows']} rows",
             f"{'streams':>7} {'batch':>5} {'agg fps':>8} {'x one':>6} {'per-stream fps':>15} "
             f"{'first audio s (med/max)':>24} {'peak GB':>8}"]
    for x in r["loads"]:
        ttfa = x["time_to_first_audio"]
        speed = f"{x['speedup_over_one']:.2f}" if x["speedup_over_one"] else "-"
        lines.append(f"{x['streams']:>7} {x['peak_batch']:>5} {x['aggregate_fps']:>8.2f} {speed:>6} "
                     f"{np.median(x['per_stream_fps']):>15.2f} "
                     f"{np.median(ttfa):>11.2f} / {max(ttfa):<10.2f} {x['peak_memory_gb']:>8.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.bench concurrency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,2,4,8", help="comma-separated stream counts")
    p.add_argument("--size", choices=("tiny", "full"), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--frames", type=int, default=24, help="frames per stream (80 ms each)")
    p.add_argument("--chunk-frames", type=int, default=6, help="frames in a streamed chunk")
    p.add_argument("--voice-seconds", type=float, default=2.0, help="each request's voice prompt")
    p.add_argument("--max-batch", type=int, default=0,
                   help="the scheduler's batch limit (default: all streams together; 1: one by one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mimi", action="store_true", help="no codec: first audio = first chunk's frames")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        args.streams = [int(x) for x in str(args.streams).split(",") if x.strip()]
    except ValueError:
        p.error(f"--streams takes numbers like 1,2,4,8, got {args.streams!r}")
    if not args.streams or min(args.streams) < 1 or args.frames < 1 or args.chunk_frames < 1:
        p.error("--streams, --frames and --chunk-frames must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    r = run(args)
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
