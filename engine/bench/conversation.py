"""The conversation benchmark: time to first audio for turns 1..N, with and without KV-cache reuse.

`python -m engine.bench conversation [--size tiny|full] [--turns 10] [--frames 6] ...`

A conversation is driven through the engine's own API, the way dialogue.Conversation drives it:
two pinned voice prompts (random codes, `--voice-seconds` each) come first, then every earlier turn
(its text and the codes generated for it), then the new line. Each turn is generated twice from the
same state, once with the generator's KV-cache reuse (only the rows the cache does not hold are
prefilled: the previous turn's tail and the new text) and once with reuse off (the whole prompt is
prefilled every turn). Both runs use the same seed per turn, so they must produce identical codes;
the benchmark checks that too.

With `--sessions N` (the interleaved mode), N conversations take turns on one model: turn 1 of
each, then turn 2 of each, ... Each session has its own KV-cache key (as Conversation passes its
session id), so a turn still prefills only its own new rows although other sessions spoke since.

Time to first audio is measured from the generate() call to the first streamed chunk
(`--chunk-frames` frames, decoded by Mimi unless --no-mimi). Weights are random (nothing is
downloaded); text is tokenized with the tiny test tokenizer, so text rows are a little more
numerous than with Llama-3's. Full size needs ~7 GB: run it under `flock /tmp/fullsize.lock`.

The engine must not import dialogue, so this module builds its prompts from engine pieces only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

import mlx.core as mx
import numpy as np

LINES = [
    "Hi there, how are you doing today?",
    "Pretty good, thanks for asking. And you?",
    "Not bad at all. Did you catch the game last night?",
    "I did, it went all the way to overtime.",
    "That last goal was really something else.",
    "I still cannot believe they pulled it off.",
    "Shall we watch the next one together?",
    "Sure, Saturday evening works for me.",
    "Great, I will bring some snacks along.",
    "See you then, have a good week.",
]
FRAME_MS = 80


def build_model(size: str, dtype_name: str | None, use_mimi: bool, seed: int):
    """A CSMModel with random weights (tiny or full size) and the tiny test tokenizer."""
    from engine.bench.generation import build_mimi, random_csm, tiny_config
    from engine.csm import csm_1b_config
    from engine.device import DTYPES, default_dtype
    from engine.model import CSMModel
    from engine.text import TextTokenizer, build_tiny_tokenizer

    dtype = DTYPES[dtype_name] if dtype_name else default_dtype()
    if size == "full":
        config = csm_1b_config()
    else:  # the benchmark's tiny CSM, with the full 2048 positions a conversation needs
        base = tiny_config()
        config = dataclasses.replace(
            base, max_seq_len=2048,
            backbone=dataclasses.replace(base.backbone, max_seq_len=2048),
            decoder=dataclasses.replace(base.decoder, max_seq_len=2048),
        )
    started = time.perf_counter()
    csm = random_csm(config, dtype, seed=seed)
    codec = build_mimi(size) if use_mimi else None
    folder = tempfile.mkdtemp(prefix="csm-bench-")
    tokenizer = TextTokenizer.from_file(build_tiny_tokenizer(f"{folder}/tokenizer.json", 512))
    model = CSMModel(csm, tokenizer, codec, voices=None, name=f"random CSM-1B ({size})")
    return model, time.perf_counter() - started, mx.float32 if dtype is None else dtype


def voice_prompts(seconds: float, seed: int) -> list:
    """Two pinned voice prompts with random codes (speaker 0 and 1), like set_voice() stores."""
    from engine.segment import Segment

    rng = np.random.default_rng(seed)
    frames = max(1, int(round(seconds * 1000 / FRAME_MS)))
    return [
        Segment(speaker, f"This is how speaker {speaker} sounds when talking.",
                codes=rng.integers(0, 2048, (frames, 32)).astype(np.int32))
        for speaker in (0, 1)
    ]


def run_conversation(model, voices, turns: int, frames: int, chunk_frames: int, reuse: bool,
                     seed: int, progress: bool = False, sessions: int = 1) -> list[dict]:
    """Generate `turns` turns (of each of `sessions` sessions, taking turns); per turn: TTFA,
    prefill/cached rows, frames, and the codes."""
    from engine.segment import Segment

    model.generator.reset()
    histories: list[list[Segment]] = [[] for _ in range(sessions)]
    rows = []
    for n, session in ((n, s) for n in range(turns) for s in range(sessions)):
        history = histories[session]
        text = LINES[(n + session) % len(LINES)]
        speaker = n % 2
        results = model.generate(
            text=text, voice=None, speaker=speaker, context=[*voices, *history], stream=True,
            streaming_interval=chunk_frames * FRAME_MS / 1000, max_audio_length_ms=frames * FRAME_MS,
            temperature=0.9, top_k=50, seed=seed + n + 1000 * session, normalize=False,
            reuse_cache=reuse, watermark=False, cache_key=("bench-session", session),
        )
        first = last = None
        for result in results:
            first = first or result
            last = result
        codes = np.asarray(last.frames, dtype=np.int32)
        rows.append({
            "session": session + 1,
            "turn": n + 1,
            "prompt_rows": int(first.prompt_tokens),
            "prefill_rows": int(first.prefill_tokens),
            "cached_rows": int(first.cached_tokens),
            "time_to_first_audio": float(first.time_to_first_audio),
            "frames": int(codes.shape[0]),
            "turn_seconds": float(last.compute_seconds),
            "codes": codes,
        })
        history.append(Segment(speaker, last.text, codes=codes))
        if progress:
            r = rows[-1]
            print(f"  {'reuse   ' if reuse else 'no reuse'} session {session + 1} turn {n + 1:2d}/{turns}: prompt "
                  f"{r['prompt_rows']} rows, prefilled {r['prefill_rows']}, first audio after "
                  f"{r['time_to_first_audio']:.3f} s", file=sys.stderr, flush=True)
    return rows


def _median_run(runs: list[list[dict]]) -> list[dict]:
    """Per turn: the first run's figures with the median time to first audio over the runs."""
    merged = []
    for turn in zip(*runs):
        row = dict(turn[0])
        row["time_to_first_audio"] = float(np.median([t["time_to_first_audio"] for t in turn]))
        merged.append(row)
    return merged


def run(args) -> dict:
    from engine.bench.generation import device_name
    from engine.cpu.blas import blas_info

    model, load_s, dtype = build_model(args.size, args.dtype, not args.no_mimi, args.seed)
    voices = voice_prompts(args.voice_seconds, args.seed)
    # Warm-up: first calls pay for allocations (and tracing, where the engine compiles).
    run_conversation(model, voices[:1], 2, min(args.frames, 3), args.chunk_frames, True, args.seed)
    # Repeats alternate the two modes, so both see the same machine load; per turn the median.
    repeats = {True: [], False: []}
    for _ in range(args.repeats):
        for reuse in (True, False):
            repeats[reuse].append(run_conversation(model, voices, args.turns, args.frames,
                                                   args.chunk_frames, reuse, args.seed,
                                                   progress=not args.quiet, sessions=args.sessions))
    runs = {reuse: _median_run(done) for reuse, done in repeats.items()}
    identical = all(
        np.array_equal(a["codes"], b["codes"])
        for run in repeats[True] + repeats[False] for a, b in zip(repeats[True][0], run)
    )
    turns = []
    for with_reuse, without in zip(runs[True], runs[False]):
        turns.append({
            "session": with_reuse["session"],
            "turn": with_reuse["turn"],
            "prompt_rows": with_reuse["prompt_rows"],
            "frames": with_reuse["frames"],
            "reuse": {k: with_reuse[k] for k in ("prefill_rows", "cached_rows", "time_to_first_audio")},
            "no_reuse": {k: without[k] for k in ("prefill_rows", "cached_rows", "time_to_first_audio")},
        })
    later = [t for t in turns if t["turn"] > 1] or turns
    mean = lambda key: float(np.mean([t[key]["time_to_first_audio"] for t in later]))  # noqa: E731
    return {
        "model": model.name,
        "dtype": str(dtype).replace("mlx.core.", ""),
        "mimi": not args.no_mimi and model.codec is not None,
        "device": device_name(),
        "blas": blas_info().describe(),
        "mlx_version": mx.__version__,
        "load_seconds": load_s,
        "voice_seconds": args.voice_seconds,
        "frames_per_turn": args.frames,
        "sessions": args.sessions,
        "chunk_frames": args.chunk_frames,
        "repeats": args.repeats,
        "codes_identical": identical,
        "mean_ttfa_turns_2_on": {"reuse": mean("reuse"), "no_reuse": mean("no_reuse")},
        "turns": turns,
        "command": "python -m engine.bench conversation " + " ".join(args.argv),
    }


def format_table(r: dict) -> str:
    lines = [
        f"model {r['model']} ({r['dtype']}, mimi {'on' if r['mimi'] else 'off'}), {r['device']}, "
        f"mlx {r['mlx_version']}, {r['blas']}",
        f"two pinned voices of {r['voice_seconds']:g} s, {r['frames_per_turn']} frames per turn, "
        f"first chunk {r['chunk_frames']} frames; load {r['load_seconds']:.1f} s; "
        f"time to first audio: median of {r['repeats']} run(s)",
        "",
        f"{'sess':>4}  {'turn':>4}  {'prompt':>6}  {'reuse: prefill':>14}  {'ttfa':>8}  "
        f"{'no reuse: prefill':>17}  {'ttfa':>8}  {'speed-up':>8}",
    ]
    for t in r["turns"]:
        a, b = t["reuse"], t["no_reuse"]
        ratio = b["time_to_first_audio"] / a["time_to_first_audio"] if a["time_to_first_audio"] else 0
        lines.append(
            f"{t['session']:>4}  {t['turn']:>4}  {t['prompt_rows']:>6}  {a['prefill_rows']:>14}  "
            f"{a['time_to_first_audio']:>7.3f}s  {b['prefill_rows']:>17}  "
            f"{b['time_to_first_audio']:>7.3f}s  {ratio:>7.2f}x"
        )
    m = r["mean_ttfa_turns_2_on"]
    lines += [
        "",
        f"mean time to first audio, turns 2 on: {m['reuse']:.3f} s with reuse, "
        f"{m['no_reuse']:.3f} s without",
        f"codes identical with and without reuse: {'yes' if r['codes_identical'] else 'NO'}",
        f"command: {r['command']}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.bench conversation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "full"), default="tiny",
                   help="random model size (full: ~7 GB, run under flock /tmp/fullsize.lock)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: engine.device.default_dtype()")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--sessions", type=int, default=1,
                   help="conversations taking turns on one model (interleaved mode when > 1)")
    p.add_argument("--frames", type=int, default=6, help="frames per turn (80 ms each)")
    p.add_argument("--chunk-frames", type=int, default=2, help="frames in a streamed chunk")
    p.add_argument("--voice-seconds", type=float, default=8.0, help="length of each pinned voice prompt")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode (median per turn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-mimi", action="store_true", help="no codec: time to the first chunk's frames")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no per-turn progress on stderr")
    args = p.parse_args(argv)
    if min(args.turns, args.frames, args.chunk_frames, args.repeats, args.sessions) < 1:
        p.error("--turns, --sessions, --frames, --chunk-frames and --repeats must be at least 1")
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    result = run(args)
    print(json.dumps(result) if args.json else format_table(result), flush=True)
    return 0 if result["codes_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
