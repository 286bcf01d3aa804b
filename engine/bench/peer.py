"""`python -m engine.bench peer --python PEER_PYTHON`: ours against transformers, taking turns.

Each round runs, one after the other, each in a fresh process:
  ours    `python -m engine.bench generation --json --prompt-tokens N --frames F --no-mimi [--ours ...]`
          (random full-size weights; add our options after `--ours`, e.g. `--ours --quantize 8`);
  theirs  engine/bench/transformers_peer.py under PEER_PYTHON, a virtualenv's python with torch and
          transformers (`pip install torch==2.13.0 transformers==5.24.0 numpy`): CSM built from the
          full-size CsmConfig in bfloat16, timed through its own `generate`.
Then it prints each round's figures, the medians and the ratios ours/theirs: prefill rows/s, time to
the first frame (prefill + one frame), frames/s after the first, and each process's peak resident
memory (read from the kernel when the process ends). Neither side decodes audio. Both load a
full-size model: run it when nothing else big runs (on a shared machine, under a lock).

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
    ("frames_per_second", "frames/s", True),
    ("peak_rss_gb", "peak resident memory, GB", False),
)


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


def ours(ns) -> dict:
    cmd = [sys.executable, "-m", "engine.bench", "generation", "--json", "--prompt-tokens", str(ns.prompt_rows),
           "--frames", str(ns.frames), "--no-mimi", *ns.ours]
    r = run_child(cmd)
    # ours reports the first frame's time after prefill; the peer's is from the call of generate
    r["first_frame_seconds"] = r["prefill_seconds"] + r["first_frame_seconds"]
    return r


def theirs(ns) -> dict:
    cmd = [ns.python, str(PEER_SCRIPT), "--prompt-rows", str(ns.prompt_rows), "--frames", str(ns.frames)]
    if ns.threads:
        cmd += ["--threads", str(ns.threads)]
    return run_child(cmd)


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
    rounds = _take_turns(ns, ours_products, theirs_products)
    medians = {side: {key: float(np.median([r[side][key] for r in rounds])) for key, _, _ in PRODUCT_FIGURES}
               for side in ("ours", "theirs")}
    ratios = {key: medians["ours"][key] / medians["theirs"][key] for key, _, _ in PRODUCT_FIGURES}
    return {"products": True, "rows": ns.products, "bits": ns.bits, "layers": ns.layers, "rounds": rounds, "medians": medians,
            "ratios_ours_over_theirs": ratios, "ours_variant": rounds[0]["ours"]["variant"],
            "peer": {k: rounds[0]["theirs"].get(k) for k in ("torch", "threads")}}


def _take_turns(ns, ours_fn, theirs_fn) -> list[dict]:
    rounds = []
    for i in range(ns.rounds):
        # alternate who goes first, so neither always meets a warmer or a busier machine
        pair = [("ours", ours_fn), ("theirs", theirs_fn)]
        if i % 2:
            pair.reverse()
        got = {}
        for name, fn in pair:
            print(f"round {i + 1}: {name} ...", file=sys.stderr, flush=True)
            got[name] = fn(ns)
        rounds.append(got)
    return rounds


def compare(ns) -> dict:
    rounds = _take_turns(ns, ours, theirs)
    medians = {side: {key: float(np.median([r[side][key] for r in rounds])) for key, _, _ in FIGURES}
               for side in ("ours", "theirs")}
    ratios = {key: medians["ours"][key] / medians["theirs"][key] for key, _, _ in FIGURES}
    return {"prompt_rows": ns.prompt_rows, "frames": ns.frames, "rounds": rounds, "medians": medians,
            "ratios_ours_over_theirs": ratios, "ours_options": ns.ours,
            "peer": {k: rounds[0]["theirs"].get(k) for k in ("torch", "transformers", "threads")},
            "ours_detail": {k: rounds[0]["ours"].get(k) for k in ("device", "backend", "dtype", "blas", "mlx_version")}}


def format_result(r: dict) -> str:
    if r.get("products"):
        return format_products(r)
    peer = r["peer"]
    lines = [f"{r['prompt_rows']}-row prompt, {r['frames']} frames, {len(r['rounds'])} rounds taking turns; "
             f"theirs: transformers {peer['transformers']} + torch {peer['torch']}, bfloat16, {peer['threads']} threads; "
             f"ours: {' '.join(r['ours_options']) or 'defaults'}",
             f"{'':<34}{'ours':>10}{'theirs':>10}{'ours/theirs':>13}   (per round: ours | theirs)"]
    for key, label, _ in FIGURES:
        per = " ".join(f"{x['ours'][key]:.3g}|{x['theirs'][key]:.3g}" for x in r["rounds"])
        lines.append(f"{label:<34}{r['medians']['ours'][key]:>10.3g}{r['medians']['theirs'][key]:>10.3g}"
                     f"{r['ratios_ours_over_theirs'][key]:>12.2f}x   ({per})")
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
    p.add_argument("--threads", type=int, default=None, help="torch threads for theirs (default: torch's)")
    p.add_argument("--products", type=int, default=None, metavar="ROWS",
                   help="compare the prefill's matrix products alone, for a ROWS-row block")
    p.add_argument("--bits", type=int, choices=(16, 8, 4), default=16, help="our weights for --products")
    p.add_argument("--layers", type=int, default=16, help="backbone layers for --products (default all 16)")
    p.add_argument("--product-rounds", type=int, default=3, help="blocks timed per process with --products")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    ns = p.parse_args(argv)
    ns.ours = extra
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
