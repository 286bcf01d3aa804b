"""Causal 1-D convolutions that run on a whole signal or step chunk by chunk.

Tensors are channels-last: (B, T, C). Every layer here speaks the streaming protocol of this package:

    y = layer(x)                 # the whole signal at once
    s = layer.stream()           # a stream that owns its state
    y1 = s.step(x1); y2 = s.step(x2); ...; tail = s.flush()   # concat(y1, y2, ..., tail) == layer(x)
    s.reset()                    # start over

Padding follows transformers / moshi 0.2.2 (the version CSM pinned): a causal conv pads
`kernel_eff - stride` samples on the left (zeros, or copies of the first sample in "replicate" mode)
and, on a whole signal, just enough on the right to complete the last window; `flush()` adds that same
right padding at the end of a stream. A causal transposed conv keeps the first `stride` outputs of
each input step and drops the last `kernel - stride` of the signal.

Both run as sums of plain matrix products (fast with an optimised BLAS; MLX's CPU conv1d is 2-8x and
its conv_transpose1d ~100x slower here). A transposed conv with kernel m*stride is computed as a
causal conv over input steps with m taps whose C_out*stride outputs per step are the next `stride`
samples ("depth to space"): y[t*s + r] = sum_j x[t - j] @ W[j*s + r]. Its stream state is then the
last m - 1 input steps, like any causal conv. Weights are kept in those computing layouts;
`from_torch` converts PyTorch's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

def elu(x: mx.array) -> mx.array:
    """ELU (alpha 1). On the CPU it runs in NumPy: MLX's CPU exp is scalar (~18 ns an element here,
    NumPy's vectorised expm1 ~0.5 ns), and the decoder's ELUs see ~7 M elements per second of audio.
    (It evaluates x, so the codec is never run under mx.compile.)"""
    if mx.default_device().type == mx.DeviceType.cpu:
        mx.eval(x)
        a = np.asarray(x)  # a view of the evaluated array (never written)
        y = np.minimum(a, 0)
        np.expm1(y, out=y)
        y += np.maximum(a, 0)
        return mx.array(y)
    return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0)))


class ELU(nn.Module):
    """Stateless; a stream of it is the function itself."""

    def __call__(self, x):
        return elu(x)


def _empty(x: mx.array, channels: int) -> mx.array:
    return mx.zeros((x.shape[0], 0, channels), dtype=x.dtype)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _tap_sum(x: mx.array, weights: mx.array, offsets, n: int) -> mx.array:
    """sum_j x[:, offsets[j] : offsets[j] + n] @ weights[j]."""
    y = None
    for j, o in enumerate(offsets):
        part = x[:, o:o + n] @ weights[j]
        y = part if y is None else y + part
    return y


class CausalConv1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = True, pad_mode: str = "constant"):
        super().__init__()
        if groups != 1 or (stride > 1 and dilation > 1):
            raise ValueError("only ungrouped convolutions, strided or dilated (not both), are supported")
        self.weight = mx.zeros((kernel_size, cin, cout))  # (K, C_in, C_out)
        if bias:
            self.bias = mx.zeros((cout,))
        self.cin, self.cout, self.kernel_size = cin, cout, kernel_size
        self.stride, self.dilation = stride, dilation
        self.kernel_eff = (kernel_size - 1) * dilation + 1
        self.padding = self.kernel_eff - stride  # left padding of a causal conv
        self.pad_mode = pad_mode

    def from_torch(self, w: mx.array) -> mx.array:
        """PyTorch Conv1d weight (C_out, C_in, K) -> ours."""
        return mx.contiguous(w.transpose(2, 1, 0))

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
        """The bare (valid) convolution of an already padded (B, T, C_in). Stride 1: a sum over taps;
        stride s: the input cut in blocks of s steps, a sum over block offsets."""
        b, t, _ = x.shape
        k, s = self.kernel_size, self.stride
        n = (t - self.kernel_eff) // s + 1
        if s == 1 and self.cin * k <= 32:  # a few input channels (the first conv): one product over stacked taps
            cols = mx.concatenate([x[:, j * self.dilation: j * self.dilation + n] for j in range(k)], axis=-1)
            y = cols @ self.weight.reshape(k * self.cin, self.cout)
        elif s == 1:
            y = _tap_sum(x, self.weight, [j * self.dilation for j in range(k)], n)
        else:
            m = _ceil_div(k, s)  # taps in whole blocks of s (zero taps in front when k % s)
            front = m * s - k
            w = self.weight
            if front:
                x = mx.pad(x, [(0, 0), (front, 0), (0, 0)])
                w = mx.pad(w, [(front, 0), (0, 0), (0, 0)])
            blocks = x[:, : (n + m - 1) * s].reshape(b, n + m - 1, s * self.cin)
            y = _tap_sum(blocks, w.reshape(m, s * self.cin, self.cout), range(m), n)
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
        self.cin, self.cout, self.kernel_size, self.stride, self.groups = cin, cout, kernel_size, stride, groups
        self.taps = _ceil_div(kernel_size, stride)  # input steps one output depends on
        if groups == 1:
            self.weight = mx.zeros((self.taps, cin, stride * cout))  # (m, C_in, s*C_out): tap j acts on x[t-j]
        else:
            self.weight = mx.zeros((self.taps, stride, cout))  # (m, s, C)
        if bias:
            self.bias = mx.zeros((cout,))

    def from_torch(self, w: mx.array) -> mx.array:
        """PyTorch ConvTranspose1d weight (C_in, C_out/groups, K) -> ours."""
        m, s = self.taps, self.stride
        if m * s != self.kernel_size:
            w = mx.pad(w, [(0, 0), (0, 0), (0, m * s - self.kernel_size)])
        w = w.reshape(w.shape[0], w.shape[1], m, s)  # (C_in, C_out/g, m, s): tap j, phase r
        if self.groups == 1:
            w = w.transpose(2, 0, 3, 1).reshape(m, self.cin, s * self.cout)
        else:
            w = w[:, 0].transpose(1, 2, 0)  # (m, s, C)
        return mx.contiguous(w)

    def steps(self, x: mx.array, n: int) -> mx.array:
        """x (B, m - 1 + n, C_in): m - 1 steps of context, then n new ones -> (B, n * stride, C_out)."""
        b, m, s = x.shape[0], self.taps, self.stride
        offsets = [m - 1 - j for j in range(m)]
        if self.groups == 1:
            y = _tap_sum(x, self.weight, offsets, n)  # (B, n, s*C_out)
        else:
            y = None
            for j, o in enumerate(offsets):
                part = x[:, o:o + n, None, :] * self.weight[j]  # (B, n, s, C)
                y = part if y is None else y + part
        y = y.reshape(b, n * s, self.cout)
        return y + self.bias if "bias" in self else y

    def __call__(self, x: mx.array) -> mx.array:  # (B, n, C_in) -> (B, n*stride, C_out)
        if x.shape[1] == 0:
            return _empty(x, self.cout)
        return self.steps(mx.pad(x, [(0, 0), (self.taps - 1, 0), (0, 0)]), x.shape[1])

    def stream(self) -> "ConvTransposeStream":
        return ConvTransposeStream(self)


class ConvTransposeStream:
    """A transposed conv's state: its last m - 1 input steps (their taps reach into the next outputs)."""

    def __init__(self, layer: CausalConvTranspose1d):
        self.layer = layer
        self.reset()

    def reset(self):
        self.context: mx.array | None = None  # (B, m - 1, C_in)

    def arrays(self) -> list:
        return [] if self.context is None else [self.context]

    def step(self, x: mx.array) -> mx.array:
        layer = self.layer
        if x.shape[1] == 0:
            return _empty(x, layer.cout)
        if self.context is None:
            self.context = mx.zeros((x.shape[0], layer.taps - 1, x.shape[2]), dtype=x.dtype)
        buf = mx.concatenate([self.context, x], axis=1)
        self.context = buf[:, buf.shape[1] - (layer.taps - 1):]
        return layer.steps(buf, x.shape[1])

    def flush(self) -> mx.array:
        """Nothing: the trimmed outputs never reach the whole-signal result either."""
        return mx.zeros((1 if self.context is None else self.context.shape[0], 0, self.layer.cout))
