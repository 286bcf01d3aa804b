"""The Generator's streams: one backbone KV cache per conversation, kept least-recently-used under a
byte budget.

A stream is what the generator remembers of one conversation: its backbone KV cache (a backend
StreamCache), the rows it holds (canonical tokens + mask) and how many of them are canonical (see
engine/generator.py, "The cache is only a cache"). Streams are keyed by a cache key: a session id,
or None for calls that name none (they share one stream).

A stream in use by a request is never evicted. When the streams' bytes pass the budget, idle ones go,
the least recently used first; a request whose key is busy with another request gets a private
stream for its duration, starting from a copy of the canonical rows it shares with the busy one
(the same codes as computing them again: concurrent requests of one voice prefill only what
differs). When a private stream ends its cache is kept as a spare (within the budget, the first
to go) for the next private stream: a fresh cache's first writes pay a page fault per 4 KB, which
made each copy of a busy stream's rows cost ~0.4 s on a VM where faults are slow; a reused one's
do not.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Hashable

import numpy as np

from engine.constants import ROW_WIDTH

# The default budget: this fraction of the machine's memory (a full-size stream of 2048 positions
# is about 64 MB in bfloat16, 128 MB in float32).
DEFAULT_BUDGET_FRACTION = 1 / 8
FALLBACK_BUDGET_BYTES = 2 * 1024**3


def default_cache_budget() -> int:
    """Bytes of KV cache the generator may keep: 1/8 of the machine's physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return FALLBACK_BUDGET_BYTES
    return int(total * DEFAULT_BUDGET_FRACTION)


class RowLog:
    """The rows (canonical tokens + mask) a KV cache holds, in a preallocated buffer."""

    def __init__(self, capacity: int):
        self.tokens = np.zeros((capacity, ROW_WIDTH), dtype=np.int32)
        self.mask = np.zeros((capacity, ROW_WIDTH), dtype=np.bool_)
        self.count = 0

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens[: self.count], self.mask[: self.count]

    def truncate(self, n: int) -> None:
        self.count = min(self.count, n)

    def extend(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        n = len(tokens)
        self.tokens[self.count : self.count + n] = tokens
        self.mask[self.count : self.count + n] = mask
        self.count += n


class Stream:
    """One conversation's backbone cache and the rows it holds."""

    def __init__(self, key: Hashable, backend, max_positions: int, cache=None):
        self.key = key
        self._backend = backend
        self.max_positions = max_positions
        self._cache = cache  # made on first use when not given (a given one is emptied)
        if cache is not None:
            cache.reset()
        self.rows = RowLog(max_positions)
        self.canonical = 0  # rows [0, canonical) were computed in canonical blocks
        self.owner = None  # the request using this stream, if any

    @property
    def cache(self):
        if self._cache is None:
            self._cache = self._backend.new_cache(self.max_positions)
        return self._cache

    @property
    def nbytes(self) -> int:
        return int(self._cache.nbytes) if self._cache is not None else 0

    def trim_to(self, n: int) -> None:
        if self._cache is not None:
            self._cache.trim_to(n)
        self.rows.truncate(n)
        self.canonical = min(self.canonical, n)

    def take_prefix(self, other: "Stream", n: int) -> None:
        """Hold the first n rows of `other`, n <= other.canonical: canonical rows are the same
        whoever computed them, so a copy gives the codes a recomputation would."""
        if n > other.canonical:
            raise ValueError(f"only canonical rows can be shared: {n} > {other.canonical}")
        self.cache.copy_from(other.cache, n)
        self.rows.count = 0
        self.rows.extend(other.rows.tokens[:n], other.rows.mask[:n])
        self.canonical = n

    def detach_cache(self):
        """Hand over the backend cache (None if never made); the stream no longer holds it."""
        cache, self._cache = self._cache, None
        return cache

    def reset(self) -> None:
        """Forget the cached rows (the buffers stay allocated)."""
        self.rows.truncate(0)
        self.canonical = 0
        if self._cache is not None:
            self._cache.reset()


class StreamStore:
    """Streams by cache key, least recently used first out, under `budget_bytes`."""

    def __init__(self, backend, max_positions: int, budget_bytes: int | None = None):
        self.backend = backend
        self.max_positions = max_positions
        self.budget_bytes = default_cache_budget() if budget_bytes is None else int(budget_bytes)
        self._streams: OrderedDict[Hashable, Stream] = OrderedDict()
        self._spares: list = []  # backend caches of ended private streams, for the next ones
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, key) -> bool:
        return key in self._streams

    def keys(self) -> list:
        return list(self._streams)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._streams.values()) + sum(int(c.nbytes) for c in self._spares)

    def peek(self, key) -> Stream | None:
        return self._streams.get(key)

    def get(self, key) -> Stream:
        """The stream of `key` (made when new), now the most recently used."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = Stream(key, self.backend, self.max_positions)
        self._streams.move_to_end(key)
        return stream

    def private(self, key) -> Stream:
        """A stream outside the store, for a request whose key is busy (recycle() it when it ends);
        its cache is a spare one when there is one."""
        return Stream(key, self.backend, self.max_positions, cache=self._spares.pop() if self._spares else None)

    def recycle(self, stream: Stream) -> None:
        """A private stream has ended: keep its cache as a spare (evict() drops spares first)."""
        cache = stream.detach_cache()
        if cache is not None:
            self._spares.append(cache)
            self.evict()

    def drop(self, key) -> None:
        self._streams.pop(key, None)

    def clear(self) -> None:
        self._spares.clear()
        for key in [k for k, s in self._streams.items() if s.owner is None]:
            del self._streams[key]

    def evict(self, reserve: int = 0) -> None:
        """Drop idle streams, least recently used first, until the store (plus `reserve` bytes about
        to be allocated) fits the budget."""
        total = self.nbytes + reserve
        while self._spares and total > self.budget_bytes:
            total -= int(self._spares.pop().nbytes)
        for key in list(self._streams):
            if total <= self.budget_bytes:
                break
            stream = self._streams[key]
            if stream.owner is None and stream.nbytes:
                total -= stream.nbytes
                del self._streams[key]
                self.evictions += 1
