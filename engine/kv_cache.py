"""A preallocated key/value cache for one attention layer.

Keys and values live in fixed buffers of `max_size` positions; `offset` is how many are filled.
`trim(n)` forgets the last n positions (the buffers are not touched: the next update overwrites
them), which is how a generator keeps the longest common prefix of two prompts.
"""

from __future__ import annotations

import mlx.core as mx

from .errors import ContextTooLongError


class KVCache:
    def __init__(self, max_size: int, n_kv_heads: int, head_dim: int, batch: int = 1, dtype=mx.float32):
        self.max_size = max_size
        shape = (batch, n_kv_heads, max_size, head_dim)
        self.keys = mx.zeros(shape, dtype=dtype)  # (B, n_kv, max_size, head_dim)
        self.values = mx.zeros(shape, dtype=dtype)
        self.offset = 0

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Append k, v (B, n_kv, T, head_dim); return all keys and values so far (B, n_kv, offset, hd)."""
        T = k.shape[2]
        end = self.offset + T
        if end > self.max_size:
            raise ContextTooLongError(
                f"the KV cache holds {self.max_size} positions; {self.offset} are used and {T} more were "
                "given. Shorten the context or the text, or ask for less audio."
            )
        self.keys[:, :, self.offset:end, :] = k
        self.values[:, :, self.offset:end, :] = v
        self.offset = end
        return self.keys[:, :, :end, :], self.values[:, :, :end, :]

    def trim(self, n: int) -> int:
        """Forget the last `n` positions (at most all of them); return how many were forgotten."""
        n = max(0, min(int(n), self.offset))
        self.offset -= n
        return n

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.offset = 0

    def copy_from(self, other: "KVCache", n: int) -> None:
        """Hold the first n positions of `other` (and nothing more)."""
        n = max(0, min(int(n), other.offset))
        if n:
            self.keys[:, :, :n, :] = other.keys[:, :, :n, :]
            self.values[:, :, :n, :] = other.values[:, :, :n, :]
        self.offset = n

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
