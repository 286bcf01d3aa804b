"""Benchmarks: `python -m engine.bench` (generation), `... conversation ...`, `... mimi ...`.

See engine/bench/__main__.py for the dispatch and engine/bench/generation.py for what is measured.
"""
