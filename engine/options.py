"""Engine settings, chosen once when a model loads and passed in from there: never module globals
flipped from outside. Environment variables only fill the defaults (`EngineOptions.from_env()`).

    load_model("sesame/csm-1b", options=EngineOptions(backend="mlx", compile=False))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from engine.errors import InputError

DTYPE_NAMES = ("float32", "bfloat16", "float16")
BACKENDS = ("auto", "mlx", "cpu")
CPU_KERNELS = ("auto", "portable", "off")


@dataclass(frozen=True)
class EngineOptions:
    """How a loaded model computes.

    dtype:       float parameters' dtype; None = the device's measured default (engine/device.py).
                 Env: CSM_DTYPE.
    backend:     how a frame is computed: "auto" (the native CPU backend on a CPU where it builds,
                 else MLX), "mlx" or "cpu". Env: CSM_BACKEND.
    compile:     run MLX's frame step as a compiled graph (mx.compile). Env: CSM_COMPILE=0 turns it off.
    cpu_kernels: "auto" (the fastest variant this CPU has), "portable" (plain C loops) or "off".
                 Env: CSM_CPU_KERNELS (0 = off).
    threads:     CPU threads for native kernels; None = engine.cpu.blas.default_threads().
                 Env: CSM_THREADS.
    """

    dtype: str | None = None
    backend: str = "auto"
    compile: bool = True
    cpu_kernels: str = "auto"
    threads: int | None = None

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise InputError(f"dtype must be one of {', '.join(DTYPE_NAMES)} (or None for the device's "
                             f"default), got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.cpu_kernels not in CPU_KERNELS:
            raise InputError(f"cpu_kernels must be one of {', '.join(CPU_KERNELS)}, got {self.cpu_kernels!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= 1024):
            raise InputError(f"threads must be a whole number from 1 to 1024 (or None), got {self.threads!r}")

    @classmethod
    def from_env(cls, **overrides) -> "EngineOptions":
        """Defaults from the environment (CSM_DTYPE, CSM_BACKEND, CSM_COMPILE, CSM_CPU_KERNELS,
        CSM_THREADS), then `overrides` (None values are ignored)."""
        env = os.environ
        values: dict = {}
        if env.get("CSM_DTYPE", "").strip():
            values["dtype"] = env["CSM_DTYPE"].strip().lower()
        if env.get("CSM_BACKEND", "").strip():
            values["backend"] = env["CSM_BACKEND"].strip().lower()
        if env.get("CSM_COMPILE", "").strip():
            values["compile"] = env["CSM_COMPILE"].strip() != "0"
        kernels = env.get("CSM_CPU_KERNELS", "").strip().lower()
        if kernels:
            values["cpu_kernels"] = "off" if kernels in ("0", "false", "no", "off") else kernels
        threads = env.get("CSM_THREADS", "").strip()
        if threads:
            try:
                values["threads"] = int(threads)
            except ValueError:
                raise InputError(f"CSM_THREADS must be a whole number, got {threads!r}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise InputError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "EngineOptions":
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
