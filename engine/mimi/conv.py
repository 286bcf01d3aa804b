"""Causal 1-D convolutions that run on a whole signal or step chunk by chunk.

Tensors are channels-last: (B, T, C). Every layer here speaks the streaming protocol of this package:

    y = layer(x)                 # the whole signal at once
    s = layer.stream()           # a stream that owns its state
    y1 = s.step(x1); y2 = s.step(x2); ...; tail = s.flush()   # concat(y1, y2, ..., tail) == layer(x)
    s.reset()                    # start over

Padding follows transformers / moshi 0.2.2 (the version CSM pinned): a causal conv pads
`kernel_eff - stride` samples on the left (zeros, or copies of the first sample in "replicate" mode)
and, on a whole signal, just enough on the right to complete the last window; `flush()` adds that same
right padding at the end of a stream. A causal transposed conv drops its last `kernel - stride`
outputs; streamed, they are the overlap carried into the next chunk.

Weights are stored in the layout the computation wants: conv (C_out, K, C_in/groups) as mx.conv1d
takes it; transposed conv (C_in, K, C_out/groups) so that it runs as one matrix product followed by
an overlap-add (MLX's conv_transpose1d is ~100x slower on CPU).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def elu(x: mx.array) -> mx.array:
    return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0)))


class ELU(nn.Module):
    """Stateless; a stream of it is the function itself."""

    def __call__(self, x):
        return elu(x)


def _empty(x: mx.array, channels: int) -> mx.array:
    return mx.zeros((x.shape[0], 0, channels), dtype=x.dtype)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class CausalConv1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = True, pad_mode: str = "constant"):
        super().__init__()
        self.weight = mx.zeros((cout, kernel_size, cin // groups))  # (C_out, K, C_in/groups)
        if bias:
            self.bias = mx.zeros((cout,))
        self.cin, self.cout, self.stride, self.dilation, self.groups = cin, cout, stride, dilation, groups
        self.kernel_eff = (kernel_size - 1) * dilation + 1
        self.padding = self.kernel_eff - stride  # left padding of a causal conv
        self.pad_mode = pad_mode

    def extra_padding(self, length: int) -> int:
        """Right padding that completes the last window of a `length`-sample input (transformers' rule)."""
        frames = _ceil_div(length - self.kernel_eff + self.padding + self.stride, self.stride)  # ceil(n) + 1
        ideal = (frames - 1) * self.stride + self.kernel_eff - self.padding
        return max(ideal - length, 0)

    def _pad(self, x: mx.array, left: int, right: int) -> mx.array:
        if left == 0 and right == 0:
            return x
        mode = "edge" if self.pad_mode == "replicate" else "constant"
        return mx.pad(x, [(0, 0), (left, right), (0, 0)], mode=mode)

    def conv(self, x: mx.array) -> mx.array:
        """The bare (valid) convolution of an already padded (B, T, C_in)."""
        y = mx.conv1d(x, self.weight, stride=self.stride, dilation=self.dilation, groups=self.groups)
        return y + self.bias if "bias" in self else y

    def __call__(self, x: mx.array) -> mx.array:  # (B, T, C_in) -> (B, ceil(T/stride), C_out)
        if x.shape[1] == 0:
            return _empty(x, self.cout)
        return self.conv(self._pad(x, self.padding, self.extra_padding(x.shape[1])))

    def stream(self) -> "ConvStream":
        return ConvStream(self)


class ConvStream:
    """A CausalConv1d's state: the input samples its next window still needs."""

    def __init__(self, layer: CausalConv1d):
        self.layer = layer
        self.reset()

    def reset(self):
        self.pending: mx.array | None = None  # (B, n, C_in): left context + not yet consumed input
        self.length = 0  # input samples seen

    def arrays(self) -> list:
        return [] if self.pending is None else [self.pending]

    def _push(self, x: mx.array) -> mx.array:
        layer = self.layer
        buf = mx.concatenate([self.pending, x], axis=1)
        n = (buf.shape[1] - layer.kernel_eff) // layer.stride + 1 if buf.shape[1] >= layer.kernel_eff else 0
        self.pending = buf[:, n * layer.stride:]
        if n == 0:
            return _empty(x, layer.cout)
        return layer.conv(buf[:, : (n - 1) * layer.stride + layer.kernel_eff])

    def step(self, x: mx.array) -> mx.array:
        if x.shape[1] == 0:
            return _empty(x, self.layer.cout)
        if self.pending is None:  # the left padding, as the whole-signal call adds it
            self.pending = self.layer._pad(x[:, :1], self.layer.padding, 0)[:, : self.layer.padding]
        self.length += x.shape[1]
        return self._push(x)

    def flush(self) -> mx.array:
        """Outputs that only the end of the signal completes (the whole call's right padding)."""
        layer = self.layer
        extra = layer.extra_padding(self.length) if self.length else 0
        if extra == 0 or self.pending is None:
            return mx.zeros((1 if self.pending is None else self.pending.shape[0], 0, layer.cout))
        last = self.pending[:, -1:]
        if layer.pad_mode == "replicate":
            pad = mx.repeat(last, extra, axis=1)
        else:
            pad = mx.zeros((last.shape[0], extra, last.shape[2]), dtype=last.dtype)
        return self._push(pad)


class CausalConvTranspose1d(nn.Module):
    """Transposed conv, causal: output length = input length * stride (the last K - stride trimmed).

    `groups` is 1 (full) or C_in == C_out (depthwise, as Mimi's 25 Hz upsampler)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, groups: int = 1, bias: bool = True):
        super().__init__()
        if groups not in (1, cin) or (groups == cin and cin != cout):
            raise ValueError("only full or depthwise transposed convolutions are supported")
        self.weight = mx.zeros((cin, kernel_size, cout // groups))  # (C_in, K, C_out/groups)
        if bias:
            self.bias = mx.zeros((cout,))
        self.cin, self.cout, self.kernel_size, self.stride, self.groups = cin, cout, kernel_size, stride, groups
        self.blocks = _ceil_div(kernel_size, stride)  # kernel taps in whole strides
        self.overlap = self.blocks * stride - stride  # outputs carried into the next chunk

    def full(self, x: mx.array) -> mx.array:
        """(B, n, C_in) -> the untrimmed, bias-free output (B, n*stride + overlap, C_out)."""
        b, n, _ = x.shape
        k, s, m = self.kernel_size, self.stride, self.blocks
        if self.groups == 1:
            z = (x @ self.weight.reshape(self.cin, k * self.cout)).reshape(b, n, k, self.cout)
        else:
            z = x[:, :, None, :] * self.weight[:, :, 0].T  # (B, n, K, C)
        if m * s != k:
            z = mx.pad(z, [(0, 0), (0, 0), (0, m * s - k), (0, 0)])
        z = z.reshape(b, n, m, s, self.cout)
        out = None
        for j in range(m):  # tap block j lands j strides later
            part = mx.pad(z[:, :, j].reshape(b, n * s, self.cout), [(0, 0), (j * s, (m - 1 - j) * s), (0, 0)])
            out = part if out is None else out + part
        return out

    def _finish(self, y: mx.array) -> mx.array:
        return y + self.bias if "bias" in self else y

    def __call__(self, x: mx.array) -> mx.array:  # (B, n, C_in) -> (B, n*stride, C_out)
        if x.shape[1] == 0:
            return _empty(x, self.cout)
        return self._finish(self.full(x)[:, : x.shape[1] * self.stride])

    def stream(self) -> "ConvTransposeStream":
        return ConvTransposeStream(self)


class ConvTransposeStream:
    """A transposed conv's state: the overlap of the last chunk's taps into the next outputs."""

    def __init__(self, layer: CausalConvTranspose1d):
        self.layer = layer
        self.reset()

    def reset(self):
        self.tail: mx.array | None = None  # (B, overlap, C_out), bias-free

    def arrays(self) -> list:
        return [] if self.tail is None else [self.tail]

    def step(self, x: mx.array) -> mx.array:
        layer = self.layer
        if x.shape[1] == 0:
            return _empty(x, layer.cout)
        y = layer.full(x)
        if self.tail is not None and layer.overlap:
            y = mx.concatenate([y[:, : layer.overlap] + self.tail, y[:, layer.overlap:]], axis=1)
        n = x.shape[1] * layer.stride
        self.tail = y[:, n:]
        return layer._finish(y[:, :n])

    def flush(self) -> mx.array:
        """Nothing: the trimmed outputs never reach the whole-signal result either."""
        return mx.zeros((1 if self.tail is None else self.tail.shape[0], 0, self.layer.cout))
