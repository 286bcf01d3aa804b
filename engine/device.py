"""The default compute dtype for the device MLX runs on, chosen by measurement (engine.bench).

CPU without engine.cpu.kernels (Linux, 2-core Xeon, MLX 0.32): float32 is the fastest. With OpenBLAS the fp32 matrix-vector
products of the frame loop are memory-bound BLAS calls, while bfloat16/float16 matmuls and quantized
matmuls run in MLX's own slower CPU kernels (see the README's performance table). Without OpenBLAS
float32 still matches bfloat16 per frame and keeps full precision. On a GPU (Metal or CUDA) the
frame loop is memory-bound and bfloat16 halves the bytes read, as the reference does.

With engine.cpu.kernels (x86-64 or ARM64 with a C compiler) bfloat16 is faster on the CPU
too: the frame loop's one-row products and the depth decoder run in bfloat16 kernels that read half
the bytes at float32's speed (README, Performance), so bfloat16 is the CPU default there.

`EngineOptions.dtype` (`load_model(dtype=...)`, or `CSM_DTYPE=float32|bfloat16|float16`) overrides the choice.
"""

from __future__ import annotations

import mlx.core as mx

from .cpu import kernels as cpu_kernels
from .options import EngineOptions

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def on_gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def default_dtype(options: EngineOptions | None = None) -> mx.Dtype:
    """`options.dtype` when set (EngineOptions.from_env() fills it from CSM_DTYPE), else mx.bfloat16 on a
    GPU and on a CPU with engine.cpu.kernels, else mx.float32."""
    options = options or EngineOptions.from_env()
    if options.dtype is not None:
        return DTYPES[options.dtype]
    if on_gpu():
        return mx.bfloat16
    if options.cpu_kernels == "off":
        return mx.float32
    return mx.bfloat16 if cpu_kernels.available() else mx.float32
