"""`python -m engine.bench peer --python PEER_PYTHON`: ours against transformers, taking turns.

Each round runs theirs once and each of our variants (`--variants`, default `default,q8,q4`) once,
one after the other, each in a fresh process, the order reversed every other round:
  ours    `python -m engine.bench generation --json --prompt-tokens N --frames F --size S [--ours ...]
          [variant]`: random weights, Mimi decoding included; a variant is `default` (no flags: the
          engine's default dtype and backend), `q8` / `q4` (`--quantize 8` / `4`, any `qBITS`) or a
          dtype (`float32`, `bfloat16`, `float16`); options after `--ours` go to every variant,
          before the variant's own (e.g. `--ours --threads 1`);
  theirs  engine/bench/transformers_peer.py under PEER_PYTHON, a virtualenv's python with torch and
          transformers (`pip install torch==2.13.0 transformers==5.24.0 numpy`): CSM with its Mimi
          codec built from CsmConfig in bfloat16, timed through its own `generate`, then the codec
          decoding the frames.
Then it prints, per figure, the medians of theirs and of each variant with the ratio variant/theirs
(measured in the same rounds), then each round's figures: prefill rows/s; the first frame after the
prompt (prefill + one frame); the time to first audio (prefill + the first chunk's `--chunk-frames`
frames + decoding that chunk: transformers does not stream, so for them it is the chunk's last frame
at generate's streamer + decoding those frames, the earliest a streaming caller could hear them);
frames/s (the frames alone) and with decoding (the frames over the frame time + decoding them all);
prompt to all audio; each process's peak resident memory (read from the kernel when it ends). Both
load a full-size model (`--size tiny` for a quick check): run it when nothing else big runs.

`--products ROWS` compares the prefill's matrix products alone, quicker and steadier: one ROWS-row
block through the 16 backbone layers' 7 products, ours (`python -m engine.bench gemm`, the best
variant, `--bits` 16/8/4) against torch's bfloat16 `F.linear` on the same shapes, taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PEER_SCRIPT = Path(__file__).with_name("transformers_peer.py")
FIGURES = (  # key, label, higher is better
    ("prefill_rows_per_second", "prefill rows/s", True),
    ("first_frame_seconds", "first frame after the prompt, s", False),
    ("time_to_first_audio", "time to first audio, s", False),
    ("frames_per_second", "frames/s (frames only)", True),
    ("frames_per_second_with_decode", "frames/s with decoding", True),
    ("all_audio_seconds", "prompt to all audio, s", False),
    ("streamed_first_audio_seconds", "generate(stream): first audio, s", False),
    ("streamed_all_audio_seconds", "generate(stream): all audio, s", False),
    ("peak_rss_gb", "peak resident memory, GB", False),
)
DTYPE_VARIANTS = ("float32", "bfloat16", "float16")
QUANTIZE_BITS = (8, 6, 5, 4, 3, 2)  # what `engine.bench generation --quantize` takes


def variant_options(name: str) -> list[str]:
    """Our benchmark's options for a variant name: default, qBITS or a dtype."""
    if name == "default":
        return []
    if name in DTYPE_VARIANTS:
        return ["--dtype", name]
    if name[:1] == "q" and name[1:].isdigit() and int(name[1:]) in QUANTIZE_BITS:
        return ["--quantize", name[1:]]
    raise ValueError(f"unknown variant {name!r}: default, q8, q4 (q{'/q'.join(map(str, QUANTIZE_BITS))}) "
                     f"or a dtype ({', '.join(DTYPE_VARIANTS)})")


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd`, parse the last JSON line it prints and add its peak RSS (from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-800:]}")
    result = json.loads(lines[-1])
    result["peak_rss_gb"] = usage.ru_maxrss * 1024 / 1e9
    return result


def ours(ns, variant: str = "default") -> dict:
    cmd = [sys.executable, "-m", "engine.bench", "generation", "--json", "--prompt-tokens", str(ns.prompt_rows),
           "--frames", str(ns.frames), "--chunk-frames", str(ns.chunk_frames), "--size", ns.size,
           *ns.ours, *variant_options(variant)]
    r = run_child([*cmd, "--generator"])
    # ours reports the first frame's time after prefill; the peer's is from the call of generate
    r["first_frame_seconds"] = r["prefill_seconds"] + r["first_frame_seconds"]
    # the same work through the engine's Generator, the path CSMModel.generate(stream=True) takes
    # (prefill, frames, Mimi decoding overlapped): from the call to the first chunk, and to the last
    g = r.get("generator") or {}
    r["streamed_first_audio_seconds"] = g.get("time_to_first_audio")
    r["streamed_all_audio_seconds"] = g.get("seconds")
    r["variant"] = variant
    return r


def theirs(ns) -> dict:
    cmd = [ns.python, str(PEER_SCRIPT), "--prompt-rows", str(ns.prompt_rows), "--frames", str(ns.frames),
           "--chunk-frames", str(ns.chunk_frames), "--size", ns.size]
    if ns.threads:
        cmd += ["--threads", str(ns.threads)]
    r = run_child(cmd)
    # they do not stream: their generate-then-decode is what a caller of theirs waits for
    r["streamed_first_audio_seconds"] = r.get("time_to_first_audio")
    r["streamed_all_audio_seconds"] = r.get("all_audio_seconds")
    return r


PRODUCT_FIGURES = (
    ("ms_per_block", "ms per block (wall)", False),
    ("cpu_ms_per_block", "CPU ms per block (all threads)", False),
    ("rows_per_second_products", "rows/s (products only)", True),
)


def ours_products(ns) -> dict:
    cmd = [sys.executable, "-m", "engine.bench", "gemm", "--json", "--rows", str(ns.products), "--bits",
           str(ns.bits), "--rounds", str(ns.product_rounds), "--threads", str(ns.threads or 2), "--layers", str(ns.layers), "--variants", "best"]
    r = run_child(cmd)
    (row,) = r["results"]
    return {**row, "bits": r["bits"]}


def theirs_products(ns) -> dict:
    cmd = [ns.python, str(PEER_SCRIPT), "--products", str(ns.products), "--rounds", str(ns.product_rounds),
           "--threads", str(ns.threads or 2), "--layers", str(ns.layers)]
    return run_child(cmd)


def compare_products(ns) -> dict:
    rounds = _take_turns(ns, [("ours", ours_products), ("theirs", theirs_products)])
    medians = {side: {key: float(np.median([r[side][key] for r in rounds])) for key, _, _ in PRODUCT_FIGURES}
               for side in ("ours", "theirs")}
    ratios = {key: medians["ours"][key] / medians["theirs"][key] for key, _, _ in PRODUCT_FIGURES}
    return {"products": True, "rows": ns.products, "bits": ns.bits, "layers": ns.layers, "rounds": rounds, "medians": medians,
            "ratios_ours_over_theirs": ratios, "ours_variant": rounds[0]["ours"]["variant"],
            "peer": {k: rounds[0]["theirs"].get(k) for k in ("torch", "threads")}}


def _take_turns(ns, sides: list) -> list[dict]:
    """`ns.rounds` rounds of each (name, fn) in `sides`, fn(ns) -> figures; the order is reversed
    every other round, so no side always meets a warmer or a busier machine. -> [{name: figures}]"""
    rounds = []
    for i in range(ns.rounds):
        order = sides if i % 2 == 0 else sides[::-1]
        got = {}
        for name, fn in order:
            print(f"round {i + 1}/{ns.rounds}: {name} ...", file=sys.stderr, flush=True)
            got[name] = fn(ns)
        rounds.append({name: got[name] for name, _ in sides})
    return rounds


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def compare(ns, theirs_fn=None, ours_fn=None) -> dict:
    """Theirs and each of ns.variants, taking turns (`theirs_fn(ns)` and `ours_fn(ns, variant)` run
    one process each; tests give stand-ins). -> rounds, medians, ratios variant/theirs."""
    theirs_fn, ours_fn = theirs_fn or theirs, ours_fn or ours
    sides = [("theirs", theirs_fn)] + [(v, lambda ns, v=v: ours_fn(ns, v)) for v in ns.variants]
    rounds = _take_turns(ns, sides)
    medians = {side: {key: _median([r[side].get(key) for r in rounds]) for key, _, _ in FIGURES}
               for side, _ in sides}
    ratios = {v: {key: _ratio(medians[v][key], medians["theirs"][key]) for key, _, _ in FIGURES}
              for v in ns.variants}
    detail = ("backend", "backend_detail", "dtype", "quantize", "device", "blas", "mlx_version")
    return {"prompt_rows": ns.prompt_rows, "frames": ns.frames, "chunk_frames": ns.chunk_frames, "size": ns.size,
            "variants": list(ns.variants), "rounds": rounds, "medians": medians, "ratios_ours_over_theirs": ratios,
            "ours_options": ns.ours, "variant_options": {v: [*ns.ours, *variant_options(v)] for v in ns.variants},
            "peer": {k: rounds[0]["theirs"].get(k) for k in ("torch", "transformers", "threads", "dtype")},
            "ours_detail": {v: {k: rounds[0][v].get(k) for k in detail} for v in ns.variants}}


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def format_result(r: dict) -> str:
    if r.get("products"):
        return format_products(r)
    peer, variants = r["peer"], r["variants"]
    size = "" if r.get("size", "full") == "full" else f" ({r['size']} models)"
    lines = [f"{r['prompt_rows']}-row prompt, {r['frames']} frames, first audio after a {r['chunk_frames']}-frame "
             f"chunk, {len(r['rounds'])} rounds taking turns{size}",
             f"theirs: transformers {peer['transformers']} + torch {peer['torch']}, {peer.get('dtype') or 'bfloat16'}, "
             f"{peer['threads']} threads; generate, then the codec decodes (no streaming: their first audio is "
             "counted at the chunk's last frame + decoding it)",
             f"ours: options for every variant: {' '.join(r['ours_options']) or 'none'}"]
    for v in variants:
        d = r["ours_detail"][v]
        bits = f", {d['quantize']}-bit" if d.get("quantize") else ""
        lines.append(f"  {v:<8} {' '.join(r['variant_options'][v]) or '(defaults)'}: {d.get('backend')} backend, "
                     f"{d.get('dtype')}{bits} ({d.get('backend_detail')})")
    label_w = 34
    lines.append(f"{'medians':<{label_w}}{'theirs':>9}" + "".join(f"{v:>10}{'/theirs':>9}" for v in variants))
    for key, label, _ in FIGURES:
        row = f"{label:<{label_w}}{_fmt(r['medians']['theirs'][key]):>9}"
        for v in variants:
            ratio = r["ratios_ours_over_theirs"][v][key]
            row += f"{_fmt(r['medians'][v][key]):>10}{'n/a' if ratio is None else f'{ratio:.2f}x':>9}"
        lines.append(row)
    lines.append("(ratios ours/theirs: above 1 is better for rates, below 1 for times and memory)")
    lines.append(f"per round (theirs | {' | '.join(variants)}):")
    for key, label, _ in FIGURES:
        per = "   ".join("|".join(_fmt(x[side].get(key)) for side in ("theirs", *variants)) for x in r["rounds"])
        lines.append(f"{label:<{label_w}}{per}")
    return "\n".join(lines)


def format_products(r: dict) -> str:
    kind = {16: "bfloat16", 8: "int8", 4: "int4"}[r["bits"]]
    lines = [f"prefill products, one {r['rows']}-row block through {r['layers']} layers x 7 products, {len(r['rounds'])} "
             f"rounds taking turns; ours: {r['ours_variant']} over {kind} weights; theirs: torch "
             f"{r['peer']['torch']} F.linear, bfloat16; {r['peer']['threads']} threads each",
             f"{'':<32}{'ours':>10}{'theirs':>10}{'ours/theirs':>13}   (per round: ours | theirs)"]
    for key, label, _ in PRODUCT_FIGURES:
        per = " ".join(f"{x['ours'][key]:.4g}|{x['theirs'][key]:.4g}" for x in r["rounds"])
        lines.append(f"{label:<32}{r['medians']['ours'][key]:>10.4g}{r['medians']['theirs'][key]:>10.4g}"
                     f"{r['ratios_ours_over_theirs'][key]:>12.2f}x   ({per})")
    return "\n".join(lines)


def parse_args(argv) -> argparse.Namespace:
    argv = list(argv)
    extra = []
    if "--ours" in argv:  # everything after --ours goes to our benchmark
        i = argv.index("--ours")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m engine.bench peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", required=True, help="the peer virtualenv's python (torch + transformers)")
    p.add_argument("--prompt-rows", type=int, default=100)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default="default,q8,q4",
                   help="ours, comma-separated: default, q8, q4 (any qBITS) or a dtype (default: default,q8,q4)")
    p.add_argument("--chunk-frames", type=int, default=6, help="frames of the first audio chunk (both sides)")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="both models full-size, or tiny (a quick check that the comparison runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for theirs (default: torch's)")
    p.add_argument("--products", type=int, default=None, metavar="ROWS",
                   help="compare the prefill's matrix products alone, for a ROWS-row block")
    p.add_argument("--bits", type=int, choices=(16, 8, 4), default=16, help="our weights for --products")
    p.add_argument("--layers", type=int, default=16, help="backbone layers for --products (default all 16)")
    p.add_argument("--product-rounds", type=int, default=3, help="blocks timed per process with --products")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    ns = p.parse_args(argv)
    ns.ours = extra
    ns.variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    try:
        for v in ns.variants:
            variant_options(v)
    except ValueError as exc:
        p.error(f"--variants: {exc}")
    if not ns.variants or len(set(ns.variants)) < len(ns.variants):
        p.error("--variants: one or more distinct names")
    if not Path(ns.python).exists():
        p.error(f"--python {ns.python}: no such file (make the peer virtualenv first, see --help)")
    return ns


def main(argv=None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        r = compare_products(ns) if ns.products else compare(ns)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r) if ns.json else format_result(r), flush=True)
    return 0
