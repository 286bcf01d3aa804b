"""A loaded CSM's weights in the native CPU formats (shared by the frame step and the prefill kernels).

Formats (`PackedWeight.fmt`):
  "bf16"   row-major (out, in) uint16, the bits of bfloat16 values;
  "q8"     MLX affine 8-bit: (out, in) uint8 codes q, float32 scales and biases (out, in/group),
           w = scale*q + bias, groups along `in`;
  "q4"     MLX affine 4-bit: (out, in/2) bytes, element 2j in the low nibble and 2j+1 in the high one
           (MLX's uint32 words read as little-endian bytes); scales and biases as for q8;
  "bf16t"  bfloat16 stored input-major, (in, out): the depth decoder's audio heads, which MLX keeps
           as (K-1, Dd, V) and uses as h @ audio_head[i].

Nothing is re-quantized: an MLX-quantized layer's codes are viewed as bytes. The codes of quantized
layers and the bits of bfloat16 weights are NumPy views of the MLX arrays' own buffers (no second
copy; `keep` holds the arrays). Only the small float32 scales/biases and norm gains are copied.
A float32 or float16 model is converted to bfloat16 for the native path (a bfloat16 copy of its
weights, half the size of the float32 originals).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import InputError

FORMATS = ("bf16", "q8", "q4", "bf16t")
NATIVE_BITS = (4, 8)
NATIVE_GROUPS = (32, 64, 128)


class UnsupportedWeights(InputError):
    """The model holds weights the native kernels cannot take (e.g. 3-bit layers)."""


@dataclass
class PackedWeight:
    fmt: str  # one of FORMATS
    out: int
    in_: int
    data: np.ndarray  # uint16 (bf16, bf16t) or uint8 (q8, q4)
    scales: np.ndarray | None = None  # float32 (out, in/group)
    biases: np.ndarray | None = None
    group: int = 0
    bits: int = 16
    keep: tuple = field(default=(), repr=False)  # MLX arrays whose buffers `data` views

    @property
    def nbytes(self) -> int:
        """Bytes a product with this weight reads."""
        extra = 0 if self.scales is None else self.scales.nbytes + self.biases.nbytes
        return self.data.nbytes + extra

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` of W (out, in) as float32 (n, in): embedding lookups and the slow product."""
        index = np.asarray(index, dtype=np.int64)
        if self.fmt == "bf16t":
            raise InputError("rows() of an input-major weight")
        if self.fmt == "bf16":
            return bf16_to_float32(self.data[index])
        codes = self.data[index]
        if self.fmt == "q4":
            codes = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(len(index), self.in_)
        n_groups = self.in_ // self.group
        q = codes.reshape(len(index), n_groups, self.group).astype(np.float32)
        w = q * self.scales[index][..., None] + self.biases[index][..., None]
        return w.reshape(len(index), self.in_)

    def dequantize(self) -> np.ndarray:
        """The whole weight as float32 (out, in)."""
        if self.fmt == "bf16t":
            return np.ascontiguousarray(bf16_to_float32(self.data).T)
        return self.rows(np.arange(self.out))


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even): the bits as uint16."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def _numpy_view(a: mx.array) -> np.ndarray:
    mx.eval(a)
    return np.asarray(a)


def bf16_bits(a: mx.array) -> tuple[np.ndarray, tuple]:
    """The bfloat16 bits of `a` as uint16: a view of its buffer when it is bfloat16, else a rounded copy."""
    if a.dtype == mx.bfloat16:
        bits = a.view(mx.uint16)
        return _numpy_view(bits), (a, bits)
    return float32_to_bf16(_numpy_view(a.astype(mx.float32))), ()


def _affine(module) -> PackedWeight:
    bits, group = int(module.bits), int(module.group_size)
    mode = getattr(module, "mode", "affine")
    if mode != "affine" or bits not in NATIVE_BITS or group not in NATIVE_GROUPS:
        raise UnsupportedWeights(
            f"{bits}-bit {mode} weights in groups of {group} have no native CPU kernels "
            f"(the native backend takes affine {' or '.join(map(str, NATIVE_BITS))}-bit, groups of 32, 64 or 128)")
    codes = _numpy_view(module.weight).view(np.uint8)  # (out, in*bits/8), little-endian words
    out = codes.shape[0]
    in_ = codes.shape[1] * 8 // bits
    scales = np.ascontiguousarray(_numpy_view(module.scales.astype(mx.float32)))
    biases = np.ascontiguousarray(_numpy_view(module.biases.astype(mx.float32)))
    return PackedWeight("q8" if bits == 8 else "q4", out, in_, codes, scales, biases, group, bits,
                        keep=(module.weight,))


def pack_linear(module) -> PackedWeight:
    """A (bias-free) Linear or Embedding, float or MLX-quantized."""
    if "bias" in module:
        raise UnsupportedWeights("the native CPU backend takes bias-free layers only")
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return _affine(module)
    bits, keep = bf16_bits(module.weight)
    out, in_ = bits.shape
    return PackedWeight("bf16", out, in_, bits, keep=keep)


def pack_input_major(w: mx.array) -> PackedWeight:
    """A weight used as h @ w, w (in, out): "bf16t"."""
    bits, keep = bf16_bits(w)
    in_, out = bits.shape
    return PackedWeight("bf16t", out, in_, bits, keep=keep)


def float32_of(a: mx.array) -> np.ndarray:
    return np.ascontiguousarray(_numpy_view(a.astype(mx.float32)))


@dataclass
class PackedLayer:
    q: PackedWeight
    k: PackedWeight
    v: PackedWeight
    o: PackedWeight
    gate: PackedWeight
    up: PackedWeight
    down: PackedWeight
    norm1: np.ndarray
    norm2: np.ndarray


@dataclass
class PackedStack:
    args: object  # LlamaArgs
    layers: list[PackedLayer]
    norm: np.ndarray
    inv_freq: np.ndarray  # (head_dim/2,) float64


@dataclass
class PackedCSM:
    config: object  # CSMConfig
    backbone: PackedStack
    decoder: PackedStack
    projection: PackedWeight
    codebook0_head: PackedWeight
    audio_embeddings: PackedWeight
    text_embeddings: PackedWeight
    audio_head: list[PackedWeight]  # K-1 of "bf16t" (Dd -> V)

    def weights(self):
        """Every packed weight (for byte counts and checks)."""
        for stack in (self.backbone, self.decoder):
            for layer in stack.layers:
                yield from (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down)
        yield from (self.projection, self.codebook0_head, self.audio_embeddings, self.text_embeddings)
        yield from self.audio_head

    @property
    def formats(self) -> list[str]:
        return sorted({w.fmt for w in self.weights()} - {"bf16t"})

    def frame_bytes(self) -> int:
        """Weight bytes one frame reads: the backbone once, the depth decoder K-1 times."""
        K = self.config.audio_num_codebooks
        backbone = sum(w.nbytes for w in self._stack_weights(self.backbone)) + self.codebook0_head.nbytes
        decoder = sum(w.nbytes for w in self._stack_weights(self.decoder)) + self.projection.nbytes
        return backbone + (K - 1) * decoder + sum(w.nbytes for w in self.audio_head)

    @staticmethod
    def _stack_weights(stack):
        for layer in stack.layers:
            yield from (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down)


def _pack_stack(llama) -> PackedStack:
    from ..llama import llama3_inv_freqs

    a = llama.args
    layers = []
    for block in llama.layers:
        at, mlp = block.self_attn, block.mlp
        layers.append(PackedLayer(
            q=pack_linear(at.q_proj), k=pack_linear(at.k_proj), v=pack_linear(at.v_proj),
            o=pack_linear(at.o_proj), gate=pack_linear(mlp.gate_proj), up=pack_linear(mlp.up_proj),
            down=pack_linear(mlp.down_proj),
            norm1=float32_of(block.input_layernorm.weight), norm2=float32_of(block.post_attention_layernorm.weight),
        ))
    inv = llama3_inv_freqs(a.head_dim, a.rope_theta, a.rope_scaling)
    return PackedStack(a, layers, float32_of(llama.norm.weight), inv)


def pack_csm(csm) -> PackedCSM:
    """Pack a loaded CSM (engine/csm.py). Raises UnsupportedWeights for layers without native kernels."""
    cfg = csm.config
    for args in (cfg.backbone, cfg.decoder):
        if args.head_dim % 2 or any(d % 32 for d in (args.dim, args.hidden_dim, args.n_heads * args.head_dim)):
            raise UnsupportedWeights("the native CPU kernels need layer widths that are multiples of 32")
    groups = set()
    packed = PackedCSM(
        config=cfg,
        backbone=_pack_stack(csm["backbone"]),
        decoder=_pack_stack(csm.decoder),
        projection=pack_linear(csm.projection),
        codebook0_head=pack_linear(csm.codebook0_head),
        audio_embeddings=pack_linear(csm.audio_embeddings),
        text_embeddings=pack_linear(csm.text_embeddings),
        audio_head=[],
    )
    head_bits, keep = bf16_bits(csm.audio_head)  # (K-1, Dd, V)
    for i in range(head_bits.shape[0]):
        packed.audio_head.append(PackedWeight("bf16t", head_bits.shape[2], head_bits.shape[1], head_bits[i], keep=keep))
    for w in packed.weights():
        if w.group:
            groups.add(w.group)
    if len(groups) > 1:
        raise UnsupportedWeights(f"quantized layers with several group sizes ({sorted(groups)})")
    return packed
