"""The Mimi benchmark: how fast the codec runs on this machine, at full size with random weights.

`python -m engine.bench mimi` builds the released codec's shape (engine.mimi defaults: SEANet 64
filters, 8+8 transformer layers of width 512, 32 codebooks of 2048 x 256) with random weights (nothing
is downloaded), then measures, on `--seconds` of audio (random codes / a test waveform):

  decode        Mimi.decode of all the codes at once
  stream-N      a streaming decoder fed N frames at a time (N = 1 and 6 by default): total time and the
                latency of one chunk (median, 90th percentile)
  encode        Mimi.encode of the waveform

Figures are "x real time": seconds of audio processed per second of compute (above 1 is faster than
real time). --no-openblas runs again in a fresh process with CSM_OPENBLAS=0 (MLX's reference BLAS:
the BLAS is bound when MLX is imported). Full size: run it under `flock /tmp/fullsize.lock`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np

from engine.constants import MS_PER_FRAME
from engine.cpu.blas import ENV_SWITCH, blas_info
from engine.mimi import Mimi, mimi_from_weights, MimiConfig
from engine.mimi.testing import tiny_mimi_config, tiny_mimi_weights, tiny_test_signal


def build(size: str) -> Mimi:
    config = MimiConfig().to_dict() if size == "full" else tiny_mimi_config()
    return mimi_from_weights(tiny_mimi_weights(config, seed=0), config)


def timed(fn, repeat: int) -> float:
    """Best wall time of `repeat` runs (after one warm-up run)."""
    mx.eval(fn())
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t)
    return best


def stream(mimi: Mimi, codes: np.ndarray, chunk: int) -> tuple[float, list[float]]:
    dec = mimi.streaming_decoder()
    dec.decode(codes[:, :chunk])  # warm-up
    dec.reset()
    latencies = []
    t0 = time.perf_counter()
    for start in range(0, codes.shape[1], chunk):
        t = time.perf_counter()
        mx.eval(dec.decode(codes[:, start:start + chunk]))
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - t0, latencies


def run(args) -> dict:
    t = time.perf_counter()
    mimi = build(args.size)
    load = time.perf_counter() - t
    frames = max(1, math.ceil(args.seconds * mimi.frame_rate - 1e-9))
    seconds = frames / mimi.frame_rate
    codes = np.random.default_rng(0).integers(0, mimi.codebook_size, (mimi.num_codebooks, frames)).astype(np.int32)
    audio = tiny_test_signal(frames * mimi.frame_size)
    result = {
        "size": args.size, "audio_seconds": seconds, "build_seconds": round(load, 2),
        "blas": blas_info().describe(), "mlx_version": mx.__version__, "machine": platform.processor() or platform.machine(),
        "threads": os.cpu_count(),
    }
    decode = timed(lambda: mimi.decode(codes), args.repeat)
    result["decode_x_realtime"] = seconds / decode
    for chunk in args.chunks:
        total, lat = stream(mimi, codes, chunk)
        result[f"stream{chunk}_x_realtime"] = seconds / total
        result[f"stream{chunk}_chunk_ms_median"] = 1000 * float(np.median(lat))
        result[f"stream{chunk}_chunk_ms_p90"] = 1000 * float(np.percentile(lat, 90))
    if not args.no_encode:
        encode = timed(lambda: mx.array(mimi.encode(audio)), args.repeat)
        result["encode_x_realtime"] = seconds / encode
    return result


def format_table(r: dict) -> str:
    lines = [f"Mimi ({r['size']}), {r['audio_seconds']:.1f} s of audio; BLAS: {r['blas']}; MLX {r['mlx_version']}",
             f"  decode (whole)        {r['decode_x_realtime']:7.2f} x real time"]
    for key in r:
        if key.startswith("stream") and key.endswith("_x_realtime"):
            n = key[len("stream"):-len("_x_realtime")]
            lines.append(f"  stream, {n:>2} frame(s)   {r[key]:7.2f} x real time   chunk latency "
                         f"median {r[f'stream{n}_chunk_ms_median']:.1f} ms, p90 {r[f'stream{n}_chunk_ms_p90']:.1f} ms "
                         f"(for {int(n) * MS_PER_FRAME} ms of audio)")
    if "encode_x_realtime" in r:
        lines.append(f"  encode (whole)        {r['encode_x_realtime']:7.2f} x real time")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m engine.bench mimi", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10 s)")
    p.add_argument("--chunks", type=int, nargs="*", default=[1, 6], help="streaming chunk sizes in frames")
    p.add_argument("--repeat", type=int, default=2, help="timed runs after a warm-up (best is kept)")
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--no-encode", action="store_true")
    p.add_argument("--no-openblas", action="store_true", help="MLX's own reference BLAS (Linux CPU)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.no_openblas and blas_info().loaded:
        env = {**os.environ, ENV_SWITCH: "0"}
        return subprocess.call([sys.executable, "-m", "engine.bench", "mimi", *argv], env=env)
    result = run(args)
    print(json.dumps(result) if args.json else format_table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
