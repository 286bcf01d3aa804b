"""Concurrent speech requests through the real HTTP server: how much audio it makes per second with
1, 2, 4, ... clients at once, and how long each client waits for its first audio.

    python -m dialogue.server.bench --streams 1,4 --size full --frames 24
    python -m dialogue.server.bench --streams 1,4 --size tiny --quantize 8 --json

The FastAPI app `csm serve` runs (`create_app`) is served by uvicorn on 127.0.0.1 in this process,
over a model with random weights (tiny or full size; nothing is downloaded) and the tiny model's
two voice presets (2 s of noise each, Mimi-encoded by this model once, in the warm-up). For each
N, N clients POST /v1/audio/speech at once (streamed 16-bit PCM, each its own seed and the same
line), and each request makes exactly `--frames` frames (random weights never end speech, and the
line's text-length cap is higher). Reported per N: aggregate audio seconds per wall second (all
clients' audio over the time from the first request to the last byte), the same as frames/s, the
speed-up over one client alone, and the median time from sending a request to its first audio
bytes. The server batches up to --max-batch requests (default: the largest N) frame by frame.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time

from engine.constants import FRAME_RATE, MS_PER_FRAME, SAMPLE_RATE

LINE = ("This is one of several requests that the server answers at the same time, and it goes on "
        "for long enough to make every frame the benchmark asks for.")
BYTES_PER_SAMPLE = 2  # response_format pcm: 16-bit mono


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a benchmark's own server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_stream(client, path: str, body: dict) -> tuple[float | None, int]:
    """POST `body` to `path` and read the streamed reply: (seconds until its first bytes, bytes
    read). RuntimeError for a reply other than 200; httpx's errors for a broken connection."""
    sent = time.perf_counter()
    first, size = None, 0
    with client.stream("POST", path, json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code} {reply.read()[:200]!r}")
        for chunk in reply.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - sent
            size += len(chunk)
    return first, size


def build_model(size: str, dtype: str | None, quantize: int | None, backend: str | None, seed: int):
    """A CSMModel with random weights of `size`, the tiny test tokenizer and the tiny model's voices."""
    from engine.bench.conversation import build_model as random_model
    from engine.checkpoints.tiny import tiny_random_path
    from engine.model import CSMModel
    from engine.options import EngineOptions
    from engine.quantize import quantize_csm
    from engine.voices import VoiceLibrary

    base, _, _ = random_model(size, dtype, True, seed)
    if quantize:
        quantize_csm(base.csm, quantize)
    options = EngineOptions.from_env(backend=backend, dtype=dtype)
    voices = VoiceLibrary(tiny_random_path(), user_dir=tempfile.mkdtemp(prefix="csm-bench-voices-"))
    return CSMModel(base.csm, base.tokenizer, base.codec, voices, name=f"random CSM ({size})",
                    options=options)


def _request(client, index: int, frames: int, seed: int, out: list, errors: list) -> None:
    body = {"model": "csm-1b", "input": LINE, "voice": "conversational_a", "seed": seed + index,
            "response_format": "pcm", "stream": True, "max_audio_length_ms": frames * MS_PER_FRAME}
    sent = time.perf_counter()
    try:
        first, size = timed_stream(client, "/v1/audio/speech", body)
    except Exception as error:  # counted, not fatal: the figures say how many failed
        errors.append(f"request {index}: {type(error).__name__}: {error}")
        return
    out.append({"first_audio_s": first, "seconds": time.perf_counter() - sent,
                "audio_s": size / BYTES_PER_SAMPLE / SAMPLE_RATE, "done": time.perf_counter()})


def run_load(base_url: str, n: int, frames: int, seed: int) -> dict:
    import httpx

    out: list[dict] = []
    errors: list[str] = []
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(3600.0)) as client:
        started = time.perf_counter()
        clients = [threading.Thread(target=_request, args=(client, i, frames, seed, out, errors))
                   for i in range(n)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
    wall = max((r["done"] for r in out), default=time.perf_counter()) - started
    audio = sum(r["audio_s"] for r in out)
    return {
        "streams": n, "ok": len(out), "errors": errors, "wall_s": wall,
        "audio_s": audio, "audio_s_per_s": audio / wall if wall > 0 else 0.0,
        "frames_per_s": audio * FRAME_RATE / wall if wall > 0 else 0.0,
        "first_audio_median_s": statistics.median(r["first_audio_s"] for r in out) if out else None,
        "first_audio_max_s": max((r["first_audio_s"] for r in out), default=None),
    }


def run(args) -> dict:
    import uvicorn

    from dialogue.server import create_app

    model = build_model(args.size, args.dtype, args.quantize, args.backend, args.seed)
    max_batch = args.max_batch or max(args.streams)
    app = create_app(loaded_model=model, max_batch=max_batch, max_queue=max(8, 2 * max(args.streams)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        run_load(base_url, 1, min(args.frames, 4), args.seed)  # warm-up: voice codes, first graphs
        loads = []
        for n in args.streams:
            r = run_load(base_url, n, args.frames, args.seed)
            loads.append(r)
            if not args.json:
                print(f"  {n} client(s): {r['frames_per_s']:.2f} frames/s aggregate, first audio "
                      f"{r['first_audio_median_s'] or 0:.2f} s (median)", file=sys.stderr, flush=True)
    finally:
        server.should_exit = True
        thread.join(30)
    one = next((r for r in loads if r["streams"] == 1), None)
    for r in loads:
        r["speedup_over_one"] = r["frames_per_s"] / one["frames_per_s"] if one and one["frames_per_s"] else None
    return {"benchmark": "server concurrency", "size": args.size, "backend": model.backend.detail,
            "quantize": args.quantize, "frames_per_request": args.frames, "max_batch": max_batch,
            "loads": loads}


def format_table(r: dict) -> str:
    lines = [f"server concurrency, {r['size']} size, {r['frames_per_request']} frames a request, "
             f"max batch {r['max_batch']}; backend: {r['backend']}",
             "clients  ok  frames/s aggregate  audio s/s  x one  first audio median (max)"]
    for x in r["loads"]:
        ratio = f"{x['speedup_over_one']:.2f}" if x["speedup_over_one"] else "-"
        lines.append(f"{x['streams']:>7}  {x['ok']:>2}  {x['frames_per_s']:>18.2f}  "
                     f"{x['audio_s_per_s']:>9.3f}  {ratio:>5}  {x['first_audio_median_s'] or 0:.2f} s "
                     f"({x['first_audio_max_s'] or 0:.2f} s)")
        lines.extend(f"    error: {e}" for e in x["errors"])
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dialogue.server.bench", description=__doc__.split("\n")[0])
    p.add_argument("--streams", default="1,4", help="comma-separated numbers of concurrent clients")
    p.add_argument("--size", choices=("tiny", "full"), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--quantize", type=int, choices=(8, 4), default=None)
    p.add_argument("--backend", choices=("auto", "mlx", "cpu"), default=None)
    p.add_argument("--frames", type=int, default=24, help="frames each request makes (80 ms each)")
    p.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch (default: the most clients)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        args.streams = [int(s) for s in args.streams.split(",") if s.strip()]
    except ValueError:
        p.error(f"--streams takes numbers separated by commas, got {args.streams!r}")
    if not args.streams or min(args.streams) < 1 or args.frames < 1:
        p.error("--streams and --frames must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all(not x["errors"] for x in result["loads"]) else 1


if __name__ == "__main__":
    sys.exit(main())
