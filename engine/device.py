"""The default compute dtype for the device MLX runs on, chosen by measurement (engine.bench).

CPU without engine.cpu_kernels (Linux, 2-core Xeon, MLX 0.32): float32 is the fastest. With OpenBLAS the fp32 matrix-vector
products of the frame loop are memory-bound BLAS calls, while bfloat16/float16 matmuls and quantized
matmuls run in MLX's own slower CPU kernels (see the README's performance table). Without OpenBLAS
float32 still matches bfloat16 per frame and keeps full precision. On a GPU (Metal or CUDA) the
frame loop is memory-bound and bfloat16 halves the bytes read, as the reference does.

With engine.cpu_kernels (x86-64 or ARM64 with a C compiler) bfloat16 is faster on the CPU
too: the frame loop's one-row products and the depth decoder run in bfloat16 kernels that read half
the bytes at float32's speed (README, Performance), so bfloat16 is the CPU default there.

`CSM_DTYPE=float32|bfloat16|float16` overrides the choice.
"""

from __future__ import annotations

import os

import mlx.core as mx

from .errors import InputError

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def on_gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def default_dtype() -> mx.Dtype:
    """mx.bfloat16 on a GPU and on a CPU with engine.cpu_kernels, else mx.float32; `CSM_DTYPE` wins."""
    chosen = os.environ.get("CSM_DTYPE", "").strip().lower()
    if chosen:
        if chosen not in DTYPES:
            raise InputError(f"CSM_DTYPE must be one of {', '.join(DTYPES)}, got {chosen!r}")
        return DTYPES[chosen]
    if on_gpu():
        return mx.bfloat16
    from . import cpu_kernels

    return mx.bfloat16 if cpu_kernels.available() else mx.float32
