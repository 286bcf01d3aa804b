import importlib

# First, before anything imports MLX: an optimised BLAS for MLX's CPU backend on Linux (engine/cpu/blas.py).
from .cpu import blas as _blas

_blas.load_openblas()

# The public API. Names load on first use, so `import engine.errors` (the CLI's --help, storage
# tools) does not pay for importing MLX and the model code.
from .errors import (  # noqa: E402
    AudioError,
    ContextTooLongError,
    CSMError,
    InputError,
    VoiceError,
    WeightsError,
)

_LAZY = {
    "load_model": "engine.model",
    "CSMModel": "engine.model",
    "GenerationResult": "engine.model",
    "Segment": "engine.segment",
}

__all__ = [
    "load_model", "CSMModel", "GenerationResult", "Segment",
    "CSMError", "InputError", "AudioError", "VoiceError", "ContextTooLongError", "WeightsError",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
