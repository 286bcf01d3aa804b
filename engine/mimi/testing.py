"""A tiny random Mimi in the real on-disk formats, for tests, the tiny CSM model and the golden script.

The tiny codec keeps the real structure: 24 kHz, SEANet ratios (8, 6, 5, 4), 1920 samples per frame
at 12.5 Hz, 32 codebooks of 2048 entries split 1 semantic + 31 acoustic, a 250-position sliding
window; only the widths are small. Every weight is random and meaningful: codebooks, LayerScale and
norms are drawn too (transformers' default init leaves codebooks at zero, which would make codes
meaningless). Values are rounded to float16 so the files can be stored in half precision losslessly.

NumPy only (no MLX): the golden script runs this module under the reference environment.

    weights, config = write_tiny_mimi(folder)                      # transformers MimiModel folder
    weights, config = write_tiny_mimi(folder, layout="kyutai")     # Kyutai original + config.json
    weights, config = write_tiny_mimi({})                          # just the arrays (no files)

`config` is a transformers-style MimiModel config dict: what a transformers CSM checkpoint stores
as `codec_config` (the weights then go under `codec_model.*`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from engine.constants import SAMPLE_RATE

from .config import MimiConfig
from .layouts import seanet_decoder_plan, seanet_encoder_plan, transformers_to_kyutai

KYUTAI_TINY_FILE = "tokenizer-tiny.safetensors"


def tiny_mimi_config() -> dict:
    """The tiny codec's transformers-style config dict (real frame structure, small widths)."""
    return MimiConfig(
        hidden_size=32,
        num_filters=4,
        codebook_dim=2,
        num_layers=2,
        num_heads=4,
        head_dim=8,
        intermediate_size=64,
        upsample_groups=32,
    ).to_dict()


def tiny_mimi_weights(config: dict | MimiConfig | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights (values exactly representable in float16) under transformers' on-disk names."""
    cfg = MimiConfig.from_dict(config if config is not None else tiny_mimi_config())
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}

    def normal(shape, std):
        return rng.standard_normal(shape) * std

    def conv(name, cout, cin, k, bias=True):
        w[f"{name}.weight"] = normal((cout, cin, k), 1.0 / np.sqrt(cin * k))
        if bias:
            w[f"{name}.bias"] = normal((cout,), 0.05)

    def resblock(name, dim):
        hidden = dim // cfg.compress
        conv(f"{name}.block.1.conv", hidden, dim, cfg.residual_kernel_size)
        conv(f"{name}.block.3.conv", dim, hidden, 1)

    for idx, kind, a in seanet_encoder_plan(cfg):
        if kind == "conv":
            conv(f"encoder.layers.{idx}.conv", a["cout"], a["cin"], a["k"])
        elif kind == "res":
            resblock(f"encoder.layers.{idx}", a["dim"])
    plan = seanet_decoder_plan(cfg)
    for idx, kind, a in plan:
        if kind == "conv":
            conv(f"decoder.layers.{idx}.conv", a["cout"], a["cin"], a["k"])
            if idx == plan[-1][0]:  # keep decoded audio within about +-1
                w[f"decoder.layers.{idx}.conv.weight"] *= 0.1
                w[f"decoder.layers.{idx}.conv.bias"] *= 0.1
        elif kind == "convtr":  # torch ConvTranspose1d: (in, out, k)
            w[f"decoder.layers.{idx}.conv.weight"] = normal((a["cin"], a["cout"], a["k"]), 1.0 / np.sqrt(a["cin"] * 2))
            w[f"decoder.layers.{idx}.conv.bias"] = normal((a["cout"],), 0.05)
        elif kind == "res":
            resblock(f"decoder.layers.{idx}", a["dim"])

    h, s = cfg.hidden_size, cfg.latent_stride
    if s > 1:
        w["downsample.conv.weight"] = normal((h, h, 2 * s), 1.0 / np.sqrt(h * 2 * s))
        groups = cfg.upsample_groups
        w["upsample.conv.weight"] = normal((h, h // groups, 2 * s), 1.0 / np.sqrt(2 * h // groups))

    for side in ("encoder", "decoder"):
        for layer in range(cfg.num_layers):
            p = f"{side}_transformer.layers.{layer}."
            for proj in ("q", "k", "v", "o"):
                w[p + f"self_attn.{proj}_proj.weight"] = normal((h, h), 1.0 / np.sqrt(h))
            w[p + "mlp.fc1.weight"] = normal((cfg.intermediate_size, h), 1.0 / np.sqrt(h))
            w[p + "mlp.fc2.weight"] = normal((h, cfg.intermediate_size), 1.0 / np.sqrt(cfg.intermediate_size))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                w[p + f"{norm}.weight"] = 1.0 + normal((h,), 0.1)
                w[p + f"{norm}.bias"] = normal((h,), 0.1)
            for scale in ("self_attn_layer_scale", "mlp_layer_scale"):
                w[p + f"{scale}.scale"] = rng.uniform(0.2, 1.0, (h,))

    d = cfg.codebook_dim
    for half, count in (("semantic", cfg.num_semantic_quantizers), ("acoustic", cfg.num_acoustic_quantizers)):
        p = f"quantizer.{half}_residual_vector_quantizer."
        w[p + "input_proj.weight"] = normal((d, h, 1), 1.0 / np.sqrt(h))
        w[p + "output_proj.weight"] = normal((h, d, 1), (1.0 if half == "semantic" else 0.1) / np.sqrt(d))
        for i in range(count):
            usage = rng.uniform(0.5, 2.0, (cfg.codebook_size,))
            w[p + f"layers.{i}.codebook.cluster_usage"] = usage
            w[p + f"layers.{i}.codebook.embed_sum"] = _tiny_centroids(rng, cfg, 64 if half == "semantic" else 8) * usage[:, None]
            w[p + f"layers.{i}.codebook.initialized"] = np.ones((1,))

    return {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}


def _tiny_centroids(rng, cfg: MimiConfig, active: int) -> np.ndarray:
    """Centroids for a tiny codebook whose codes are robust to float rounding.

    With few dimensions, 2048 random centroids quantize so finely that the residual vanishes within
    a few codebooks and the nearest centroid of the deep codebooks is decided by rounding noise: two
    correct implementations would disagree. So each codebook has a few `active` centroids at the scale
    of the residual (at random indices; the residual keeps that scale along the chain) and parks the
    rest on a ring far enough away never to be nearest, yet still decodable."""
    d = cfg.codebook_dim
    far = rng.standard_normal((cfg.codebook_size, d))
    far *= 8.0 * rng.uniform(1.0, 1.5, (cfg.codebook_size, 1)) / np.linalg.norm(far, axis=1, keepdims=True)
    near = rng.choice(cfg.codebook_size, active, replace=False)
    far[near] = rng.standard_normal((active, d))
    return far


def write_tiny_mimi(target, layout: str = "transformers", seed: int = 0, config: dict | None = None,
                    dtype: str = "float32") -> tuple[dict[str, np.ndarray], dict]:
    """Make a tiny random Mimi in `layout` ("transformers" or "kyutai").

    `target`: a dict (filled with the arrays, nothing written), a folder (transformers: config.json +
    model.safetensors; kyutai: tokenizer-tiny.safetensors + config.json), or a `.safetensors` file path
    (the config goes beside it as `<name>.json`). `dtype` is what the files store ("float16" is lossless).
    Returns (weights in that layout as float32 NumPy arrays, transformers-style config dict).
    """
    if layout not in ("transformers", "kyutai"):
        raise ValueError(f"layout must be 'transformers' or 'kyutai', not {layout!r}")
    config = dict(config) if config is not None else tiny_mimi_config()
    cfg = MimiConfig.from_dict(config)
    weights = tiny_mimi_weights(cfg, seed)
    if layout == "kyutai":
        weights = transformers_to_kyutai(weights, cfg)
    if isinstance(target, dict):
        target.update(weights)
        return weights, config

    target = Path(target)
    if target.suffix == ".safetensors":
        file, config_file = target, target.with_suffix(".json")
    else:
        file = target / ("model.safetensors" if layout == "transformers" else KYUTAI_TINY_FILE)
        config_file = target / "config.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in weights.items()}, str(file),
              metadata={"format": "pt"})
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return weights, config


def tiny_test_signal(num_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic speech-like test waveform (no RNG: identical in every environment), float32."""
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    pitch = 140.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t) ** 2
    hiss = 0.05 * np.sin(2 * np.pi * 3137.0 * t + 3.0 * np.sin(2 * np.pi * 517.0 * t))
    return (0.3 * envelope * voiced + hiss).astype(np.float32)
