"""The default compute dtype for the device MLX runs on, chosen by measurement (engine.bench).

- GPU (Metal or CUDA): bfloat16. The frame loop is memory-bound and bfloat16 halves the bytes read,
  as the reference does.
- CPU where the native CPU backend runs (engine/cpu/: x86-64 or ARM64 with a C compiler, not
  switched off, the backend setting not "mlx"): bfloat16. Its kernels read bfloat16 weights
  directly, and the packed weights then share the model's own buffers (a float32 model would be
  converted to a bfloat16 copy).
- Other CPUs (the MLX backend): float32. There MLX's float32 products go through OpenBLAS, while its
  bfloat16 and quantized products run in MLX's own slower CPU kernels (README, Performance).

`EngineOptions.dtype` (`load_model(dtype=...)`, or `CSM_DTYPE=float32|bfloat16|float16`) overrides the choice.
"""

from __future__ import annotations

import mlx.core as mx

from .options import EngineOptions

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def on_gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def default_dtype(options: EngineOptions | None = None) -> mx.Dtype:
    """`options.dtype` when set (EngineOptions.from_env() fills it from CSM_DTYPE), else mx.bfloat16 on a
    GPU and on a CPU where the native backend runs, else mx.float32."""
    from .backends import native_unavailable_reason

    options = options or EngineOptions.from_env()
    if options.dtype is not None:
        return DTYPES[options.dtype]
    if on_gpu():
        return mx.bfloat16
    if options.backend == "mlx" or native_unavailable_reason(options) is not None:
        return mx.float32
    return mx.bfloat16
