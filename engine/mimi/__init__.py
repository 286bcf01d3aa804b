"""The Mimi codec on MLX: 24 kHz mono audio <-> 12.5 Hz frames of 32 codes.

    from engine.mimi import load_mimi
    mimi = load_mimi("kyutai/mimi")          # or a folder, a .safetensors file, a hub id
    codes = mimi.encode(audio)               # (32, frames) int32
    audio = mimi.decode(codes)               # mx.array (frames * 1920,)
    dec = mimi.streaming_decoder(); dec.decode(codes[:, :1]) ...

Exports are resolved lazily so that `engine.mimi.config` / `engine.mimi.testing` import without MLX.
"""

from __future__ import annotations

__all__ = ["load_mimi", "mimi_from_weights", "Mimi", "MimiConfig", "MimiStreamingDecoder"]


def __getattr__(name):
    if name == "MimiConfig":
        from .config import MimiConfig

        return MimiConfig
    if name in ("Mimi", "MimiStreamingDecoder"):
        from . import codec

        return getattr(codec, name)
    if name in ("load_mimi", "mimi_from_weights"):
        from . import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'engine.mimi' has no attribute {name!r}")
