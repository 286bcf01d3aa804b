"""`python -m engine.bench [generation] [options]`  -> the generation benchmark (engine/bench/generation.py)
`python -m engine.bench conversation [options]`    -> engine/bench/conversation.py
`python -m engine.bench concurrency [options]`     -> engine/bench/concurrency.py
`python -m engine.bench mimi [options]`            -> engine/bench/mimi.py (when present)
`python -m engine.bench gemm [options]`            -> engine/bench/gemm.py (the prefill kernels)
`python -m engine.bench peer --python PY [...]`     -> engine/bench/peer.py (ours against transformers)
"""

import importlib
import sys

SUBCOMMANDS = ("generation", "conversation", "concurrency", "mimi", "gemm", "peer")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = "generation"
    if argv and argv[0] in SUBCOMMANDS:
        name = argv.pop(0)
    try:
        module = importlib.import_module(f"engine.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"engine.bench.{name}":
            raise
        print(f"the {name} benchmark is not available in this version", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
