"""Every streaming piece of the codec equals its whole-input path, and so does the codec."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

import engine.mimi.codec as codec_module
from engine.mimi import Mimi, mimi_from_weights
from engine.mimi.config import MimiConfig
from engine.mimi.conv import CausalConv1d, CausalConvTranspose1d
from engine.mimi.seanet import SEANetDecoder, SEANetEncoder
from engine.mimi.testing import tiny_mimi_config, tiny_test_signal, write_tiny_mimi
from engine.mimi.transformer import CodecTransformer


def randomize(module, seed=0, scale=0.3):
    """Random parameters (the defaults are zeros and ones)."""
    key = mx.random.key(seed)
    leaves = tree_flatten(module.parameters())
    keys = mx.random.split(key, len(leaves))
    new = [(name, scale * mx.random.normal(p.shape, key=k)) for (name, p), k in zip(leaves, keys)]
    module.update(tree_unflatten(new))
    return module


def run_stream(stream, x, sizes, flush=True):
    outs, start, i = [], 0, 0
    while start < x.shape[1]:
        n = sizes[i % len(sizes)]
        outs.append(stream.step(x[:, start:start + n]))
        start, i = start + n, i + 1
    if flush and hasattr(stream, "flush"):
        tail = stream.flush()
        if tail is not None:
            outs.append(tail)
    return mx.concatenate(outs, axis=1)


def assert_close(a, b, tol=1e-5):
    a, b = np.array(a), np.array(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1e-6)


X = mx.random.normal((2, 53, 6), key=mx.random.key(3))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=7),
    dict(kernel_size=3, dilation=2),
    dict(kernel_size=1),
    dict(kernel_size=8, stride=4),
    dict(kernel_size=10, stride=5, pad_mode="replicate"),
    dict(kernel_size=4, stride=2, bias=False, pad_mode="replicate"),
])
@pytest.mark.parametrize("sizes", [[1], [3], [7, 2, 11], [53]])
def test_conv_stream_equals_whole(kwargs, sizes):
    conv = randomize(CausalConv1d(6, 5, **kwargs))
    whole = conv(X)
    stride = kwargs.get("stride", 1)
    assert whole.shape[1] == -(-X.shape[1] // stride)
    stream = conv.stream()
    assert_close(run_stream(stream, X, sizes), whole)
    stream.reset()
    assert_close(run_stream(stream, X, sizes), whole)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=8, stride=4), dict(kernel_size=7, stride=3),
                                    dict(kernel_size=4, stride=2, groups=6, bias=False),
                                    dict(kernel_size=5, stride=2, groups=6)])
@pytest.mark.parametrize("sizes", [[1], [3], [7, 2, 11]])
def test_transposed_conv_stream_equals_whole(kwargs, sizes):
    cout = 6 if kwargs.get("groups") else 5
    conv = randomize(CausalConvTranspose1d(6, cout, **kwargs))
    whole = conv(X)
    assert whole.shape[1] == X.shape[1] * kwargs["stride"]
    assert_close(run_stream(conv.stream(), X, sizes), whole)


@pytest.mark.parametrize("kernel,stride,groups", [(8, 4, 1), (7, 3, 1), (4, 2, 6), (5, 2, 6)])
def test_transposed_conv_matches_mlx_conv_transpose(kernel, stride, groups):
    """From a PyTorch-layout weight (C_in, C_out/groups, K), against MLX's own conv_transpose1d."""
    cout = 6 if groups > 1 else 5
    conv = randomize(CausalConvTranspose1d(6, cout, kernel_size=kernel, stride=stride, groups=groups))
    torch_w = mx.random.normal((6, cout // groups, kernel), key=mx.random.key(7))
    conv.weight = conv.from_torch(torch_w)
    if groups == 1:  # mx.conv_transpose1d weight: (C_out, K, C_in)
        ref = mx.conv_transpose1d(X, torch_w.transpose(1, 2, 0), stride=stride)
    else:
        ref = mx.concatenate([mx.conv_transpose1d(X[..., c:c + 1], torch_w[c:c + 1].transpose(1, 2, 0), stride=stride)
                              for c in range(6)], axis=-1)
    assert_close(conv(X), ref[:, : X.shape[1] * stride] + conv.bias)


@pytest.mark.parametrize("kernel,stride,dilation", [(7, 1, 1), (3, 1, 2), (8, 4, 1), (5, 2, 1)])
def test_conv_matches_mlx_conv1d(kernel, stride, dilation):
    conv = randomize(CausalConv1d(6, 5, kernel, stride=stride, dilation=dilation))
    torch_w = mx.random.normal((5, 6, kernel), key=mx.random.key(8))  # (C_out, C_in, K)
    conv.weight = conv.from_torch(torch_w)
    x = mx.pad(X, [(0, 0), (conv.padding, conv.extra_padding(X.shape[1])), (0, 0)])
    ref = mx.conv1d(x, torch_w.transpose(0, 2, 1), stride=stride, dilation=dilation) + conv.bias
    assert_close(conv(X), ref)


@pytest.mark.parametrize("window,length", [(5, 23), (250, 300)])
def test_transformer_stream_equals_whole_past_the_window(window, length):
    cfg = MimiConfig.from_dict(tiny_mimi_config()).replace(sliding_window=window)
    model = randomize(CodecTransformer(cfg))
    x = mx.random.normal((1, length, cfg.hidden_size), key=mx.random.key(1))
    whole = model(x)
    for sizes in ([1], [2], [6], [7, 1, 33]):
        assert_close(run_stream(model.stream(), x, sizes, flush=False), whole)


def test_transformer_window_is_sliding():
    """Position p sees p-window+1..p: changing an input older than that changes nothing."""
    cfg = MimiConfig.from_dict(tiny_mimi_config()).replace(sliding_window=4, num_layers=1)
    model = randomize(CodecTransformer(cfg))
    x = mx.random.normal((1, 10, cfg.hidden_size), key=mx.random.key(2))
    y = x.at[:, 2].add(mx.random.normal((cfg.hidden_size,), key=mx.random.key(3)))  # not a constant: LayerNorm
    a, b = np.array(model(x)), np.array(model(y))
    assert np.abs(a[0, 3:6] - b[0, 3:6]).max() > 1e-4  # within the window
    assert np.abs(a[0, 6:] - b[0, 6:]).max() == 0  # 6 - 2 >= 4: out of it


def test_seanet_streams_equal_whole():
    cfg = MimiConfig.from_dict(tiny_mimi_config())
    enc, dec = randomize(SEANetEncoder(cfg), 1), randomize(SEANetDecoder(cfg), 2)
    audio = mx.array(tiny_test_signal(5 * 960 + 123))[None, :, None]
    whole = enc(audio)
    assert whole.shape == (1, 6, cfg.hidden_size)
    assert_close(run_stream(enc.stream(), audio, [960]), whole)
    assert_close(run_stream(enc.stream(), audio, [1000, 77]), whole)
    latent = mx.random.normal((1, 9, cfg.hidden_size), key=mx.random.key(4))
    whole = dec(latent)
    assert whole.shape == (1, 9 * 960, 1)
    assert_close(run_stream(dec.stream(), latent, [1]), whole)
    assert_close(run_stream(dec.stream(), latent, [2, 3]), whole)


@pytest.fixture(scope="module")
def mimi():
    weights, config = write_tiny_mimi({})
    return mimi_from_weights(weights, config)


@pytest.fixture(scope="module")
def long_codes():
    return np.random.default_rng(5).integers(0, 2048, (32, 131)).astype(np.int32)  # 262 positions > 250


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_streaming_decoder_equals_decode_past_the_window(mimi, long_codes, chunk):
    whole = np.array(mimi.decode(long_codes))
    dec = mimi.streaming_decoder()
    parts = []
    for start in range(0, long_codes.shape[1], chunk):
        out = dec.decode(long_codes[:, start:start + chunk])
        assert out.shape == (min(chunk, long_codes.shape[1] - start) * 1920,)
        parts.append(np.array(out))
    streamed = np.concatenate(parts)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-5 * np.abs(whole).max()


def test_streaming_decoder_reset_and_independence(mimi, long_codes):
    codes = long_codes[:, :12]
    whole = np.array(mimi.decode(codes))
    a, b = mimi.streaming_decoder(), mimi.streaming_decoder()
    a.decode(long_codes[:, 50:60])  # some other utterance
    a.reset()
    outs_a, outs_b = [], []
    for i in range(0, 12, 4):  # interleaved: each decoder keeps its own state
        outs_a.append(np.array(a.decode(codes[:, i:i + 4])))
        outs_b.append(np.array(b.decode(codes[:, i:i + 2])))
        outs_b.append(np.array(b.decode(codes[:, i + 2:i + 4])))
    for outs in (outs_a, outs_b):
        assert np.abs(np.concatenate(outs) - whole).max() <= 1e-5 * np.abs(whole).max()
    assert mimi.streaming_decoder().decode(np.zeros((32, 0), np.int32)).shape == (0,)


def test_long_inputs_are_chunked_internally_with_the_same_result(mimi, long_codes, monkeypatch):
    audio = tiny_test_signal(23 * 1920 - 500)
    codes, latent, decoded = mimi.encode(audio), np.array(mimi.encode_latent(audio)), np.array(mimi.decode(long_codes))
    monkeypatch.setattr(codec_module, "ENCODE_CHUNK_FRAMES", 4)
    monkeypatch.setattr(codec_module, "DECODE_CHUNK_FRAMES", 9)
    np.testing.assert_array_equal(mimi.encode(audio), codes)
    assert np.abs(np.array(mimi.encode_latent(audio)) - latent).max() <= 1e-5 * np.abs(latent).max()
    assert np.abs(np.array(mimi.decode(long_codes)) - decoded).max() <= 1e-5 * np.abs(decoded).max()
