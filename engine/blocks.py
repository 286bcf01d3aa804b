"""The Generator's canonical chunks of positions: aligned blocks [0, B), [B, 2B), ... (see
engine/generator.py). Backends that take several chunks at once cut them here."""

from __future__ import annotations


def aligned_bounds(start: int, stop: int, block: int) -> list[int]:
    """Where the aligned chunks of positions start..stop begin and end: [start, every multiple of
    `block` strictly between, stop] (one chunk when start == stop)."""
    return [start, *range((start // block + 1) * block, stop, block), stop]
