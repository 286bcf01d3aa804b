"""Quantizing a CSM network in memory (MLX affine quantization, as mlx-community conversions do).

`quantize_csm(model, bits)` swaps every Linear and Embedding whose input width is a multiple of the
group size for its quantized form (`nn.quantize`), in place. The depth decoder's `audio_head`
(K-1, Dd, V) is a plain array used as `h @ audio_head[i-1]` and stays in float, as in the MLX
community conversions. engine/checkpoints/convert.py writes such a model to a folder, and
`load_model(..., quantize=bits)` quantizes at load.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from engine.constants import QUANTIZE_BITS, QUANTIZE_GROUP_SIZES
from engine.errors import InputError

DEFAULT_GROUP_SIZE = 64


def check_bits(bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> None:
    if bits not in QUANTIZE_BITS:
        raise InputError(f"quantize takes one of {', '.join(map(str, QUANTIZE_BITS))} bits, got {bits!r}")
    if group_size not in QUANTIZE_GROUP_SIZES:
        raise InputError(f"the group size must be one of {', '.join(map(str, QUANTIZE_GROUP_SIZES))}, "
                         f"got {group_size!r}")


def quantizable(group_size: int):
    """class_predicate for nn.quantize: layers that can be quantized with this group size."""

    def predicate(path: str, module: nn.Module) -> bool:
        if not hasattr(module, "to_quantized") or isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return False
        weight = getattr(module, "weight", None)
        return weight is not None and weight.shape[-1] % group_size == 0

    return predicate


def quantize_csm(model: nn.Module, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Quantize `model` in place; return the config entry {"group_size", "bits"}."""
    check_bits(bits, group_size)
    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=quantizable(group_size))
    mx.eval(model.parameters())
    return {"group_size": group_size, "bits": bits}


def quantized_paths(model: nn.Module) -> list[str]:
    """Module paths that hold quantized weights (those with `.scales`)."""
    return sorted(k[: -len(".scales")] for k, _ in tree_flatten(model.parameters()) if k.endswith(".scales"))
