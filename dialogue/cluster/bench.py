"""Turns per second over HTTP with 1, 2, ... model replicas behind Ray Serve, and the time to first
audio of each turn.

    python -m dialogue.cluster.bench --replicas 1 2 --sessions 4 --turns 4
    python -m dialogue.cluster.bench --db postgresql://csm@db:5432/csm --model tiny-random

For each replica count a fresh Ray application is started (not timed), then `--sessions` clients
run at once, each taking `--turns` streamed turns of its own session in order (a session's turns
are sequential, as a conversation's are). Reported: turns per second over the whole run (wall
clock, all clients), and the median and 90th percentile time from sending a turn to its first
audio bytes, as the client sees it. The first turn of each session is a warm-up, not counted.
Without --db a temporary SQLite file is used (one machine only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from dialogue.server.bench import free_port, timed_stream


def _session_run(client, session: str, turns: int, max_ms: float, out: list, errors: list) -> None:
    for index in range(turns + 1):
        body = {"speaker": index % 2, "input": f"This is turn {index} of {session}.",
                "seed": index, "max_audio_length_ms": max_ms, "stream": True,
                "response_format": "pcm"}
        sent = time.perf_counter()
        try:
            first, _ = timed_stream(client, f"/v1/sessions/{session}/turns", body)
        except Exception as error:  # reported, not fatal: the figures say how many failed
            errors.append(f"{session} turn {index}: {type(error).__name__}: {error}")
            continue
        if index:  # turn 0 warms the session's replica up
            out.append((first, time.perf_counter() - sent, time.perf_counter()))


def measure(replicas: int, args) -> dict:
    import httpx

    from . import ClusterSettings
    from .app import start, stop

    port = free_port()
    db = args.db or str(Path(tempfile.mkdtemp(prefix="csm-cluster-bench-")) / "bench.db")
    settings = ClusterSettings(model=args.model, db=db, replicas=replicas,
                               replica_cpus=args.replica_cpus)
    started = time.perf_counter()
    start(settings, host="127.0.0.1", port=port)
    startup = time.perf_counter() - started
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        names = [f"bench-{replicas}-{i}-{int(time.time())}" for i in range(args.sessions)]
        for name in names:
            client.post("/v1/sessions", json={"id": name}).raise_for_status()
        samples: list = []
        errors: list = []
        threads = [threading.Thread(target=_session_run,
                                    args=(client, name, args.turns, args.max_ms, samples, errors))
                   for name in names]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # the counted window: from the first counted turn's start to the last one's end
        wall = time.perf_counter() - began
        ttfa = sorted(s[0] for s in samples if s[0] is not None)
        return {
            "replicas": replicas, "sessions": args.sessions, "turns": len(samples),
            "failed": len(errors), "errors": errors[:5],
            "turns_per_s": round(len(samples) / wall, 3) if wall else None,
            "wall_s": round(wall, 2),
            "ttfa_median_s": round(statistics.median(ttfa), 3) if ttfa else None,
            "ttfa_p90_s": round(ttfa[int(0.9 * (len(ttfa) - 1))], 3) if ttfa else None,
            "turn_median_s": round(statistics.median(s[1] for s in samples), 3) if samples else None,
            "startup_s": round(startup, 1),
        }
    finally:
        stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dialogue.cluster.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--db", default=None, help="postgresql:// URL (default: a temporary SQLite file)")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--sessions", type=int, default=4, help="concurrent clients, one session each")
    p.add_argument("--turns", type=int, default=4, help="counted turns per session")
    p.add_argument("--max-ms", type=float, default=800.0, help="max_audio_length_ms of each turn")
    p.add_argument("--json", action="store_true", help="print one JSON object per replica count")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    results = []
    for replicas in args.replicas:
        result = measure(replicas, args)
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{replicas} replica(s): {result['turns_per_s']} turns/s over {result['turns']} "
                  f"turns ({result['failed']} failed), time to first audio median "
                  f"{result['ttfa_median_s']} s, p90 {result['ttfa_p90_s']} s, turn median "
                  f"{result['turn_median_s']} s (start-up {result['startup_s']} s)", flush=True)
    if len(results) > 1 and results[0]["turns_per_s"]:
        for result in results[1:]:
            ratio = (result["turns_per_s"] or 0) / results[0]["turns_per_s"]
            print(f"{result['replicas']} vs {results[0]['replicas']} replica(s): {ratio:.2f}x turns/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
