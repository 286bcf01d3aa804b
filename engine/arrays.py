"""Arrays from the user to NumPy: one conversion for audio samples, codes and anything else that
may arrive as a NumPy array, an MLX array or a list."""

from __future__ import annotations

import numpy as np


def to_numpy(value) -> np.ndarray:
    """np / mx / list -> np.ndarray; an MLX bfloat16 array goes through float32 (NumPy has no
    bfloat16). Raises TypeError or ValueError for what NumPy cannot take; callers turn that into
    their own error."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("mlx"):
        import mlx.core as mx  # lazy: stored audio and segments are read and replayed without MLX

        if value.dtype == mx.bfloat16:
            value = value.astype(mx.float32)
        return np.array(value)
    return np.asarray(value)
