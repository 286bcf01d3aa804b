"""SEANet encoder and decoder (causal, ELU, no final tanh), as flat layer lists.

The lists mirror the checkpoints' own numbering (`encoder.layers.N`, Kyutai's `encoder.model.N`),
ELUs included, so loading is a rename: see `layouts.seanet_encoder_plan` / `seanet_decoder_plan`.

    encoder: conv(k7) [res*, ELU, conv(k=2r, stride r)] for r in reversed(ratios), ELU, conv(k3) -> hidden
    decoder: conv(k7) [ELU, convtr(k=2r, stride r), res*] for r in ratios, ELU, conv(k3) -> audio
    res:     x + conv1x1(ELU(conv_k3(ELU(x))))  (channels halved inside)
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import MimiConfig
from .conv import ELU, CausalConv1d, CausalConvTranspose1d, elu
from .layouts import seanet_decoder_plan, seanet_encoder_plan


class ResBlock(nn.Module):
    def __init__(self, dim: int, cfg: MimiConfig, dilation: int):
        super().__init__()
        hidden = dim // cfg.compress
        self.block = [
            ELU(),
            CausalConv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilation, pad_mode=cfg.pad_mode),
            ELU(),
            CausalConv1d(hidden, dim, 1, pad_mode=cfg.pad_mode),
        ]

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.block[3](elu(self.block[1](elu(x))))

    def stream(self) -> "ResStream":
        return ResStream(self)


class ResStream:
    """Both convs are stride 1 and causal, so every chunk in gives the same number of samples out."""

    def __init__(self, block: ResBlock):
        self.convs = (block.block[1].stream(), block.block[3].stream())

    def reset(self):
        for s in self.convs:
            s.reset()

    def arrays(self) -> list:
        return [a for s in self.convs for a in s.arrays()]

    def step(self, x: mx.array) -> mx.array:
        if x.shape[1] == 0:
            return x
        return x + self.convs[1].step(elu(self.convs[0].step(elu(x))))

    def flush(self) -> mx.array:
        return self.convs[1].flush()  # stride-1 convs complete every window as it comes: empty


def _build(plan, cfg: MimiConfig, transposed_ok: bool) -> list:
    layers = []
    for _, kind, a in plan:
        if kind == "elu":
            layers.append(ELU())
        elif kind == "res":
            layers.append(ResBlock(a["dim"], cfg, a["dilation"]))
        elif kind == "conv":
            layers.append(CausalConv1d(a["cin"], a["cout"], a["k"], stride=a.get("stride", 1), pad_mode=cfg.pad_mode))
        elif kind == "convtr" and transposed_ok:
            layers.append(CausalConvTranspose1d(a["cin"], a["cout"], a["k"], a["stride"]))
        else:
            raise ValueError(kind)
    return layers


class SequentialStream:
    """Streams of a layer list, stepped in order; `flush` pushes each layer's end-of-signal outputs on."""

    def __init__(self, layers: list):
        self.parts = [layer.stream() if hasattr(layer, "stream") else layer for layer in layers]

    def reset(self):
        for p in self.parts:
            if hasattr(p, "reset"):
                p.reset()

    def arrays(self) -> list:
        return [a for p in self.parts if hasattr(p, "arrays") for a in p.arrays()]

    def step(self, x: mx.array) -> mx.array:
        for p in self.parts:
            x = p.step(x) if hasattr(p, "step") else p(x)
        return x

    def flush(self) -> mx.array | None:
        y = None
        for p in self.parts:
            if not hasattr(p, "step"):
                y = p(y) if y is not None else None
                continue
            out = [p.step(y)] if y is not None and y.shape[1] else []
            tail = p.flush()
            if tail.shape[1]:
                out.append(tail)
            y = mx.concatenate(out, axis=1) if len(out) > 1 else (out[0] if out else None)
        return y


class SEANetEncoder(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.layers = _build(seanet_encoder_plan(cfg), cfg, transposed_ok=False)

    def __call__(self, x: mx.array) -> mx.array:  # (B, T, 1) -> (B, ceil(T / hop), hidden)
        for layer in self.layers:
            x = layer(x)
        return x

    def stream(self) -> SequentialStream:
        return SequentialStream(self.layers)


class SEANetDecoder(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.layers = _build(seanet_decoder_plan(cfg), cfg, transposed_ok=True)

    def __call__(self, x: mx.array) -> mx.array:  # (B, n, hidden) -> (B, n * hop, 1)
        for layer in self.layers:
            x = layer(x)
        return x

    def stream(self) -> SequentialStream:
        return SequentialStream(self.layers)
