"""Random CSM models: tiny ones in the real on-disk formats (for tests, notebooks and the
`tiny-random` name), and networks of any size in memory (for benchmarks and tests).

    folder = write_tiny_csm(tmp, layout="transformers")   # or "sesame", "mlx" (quantize={...})
    path = tiny_random_path()                             # $CSM_HOME/tiny-random, built once
    model = random_csm(quantizable_tiny_config())         # in memory; random_csm(csm_1b_config()): full size
    tokens, mask = random_prompt(16, model.config)        # prompt rows like a voice prompt

A tiny model folder holds everything the product needs, so every feature runs offline on it (its
audio is noise: the weights are random):

  config.json, model.safetensors   the network, in the chosen layout (see layouts.py)
  generation_config.json           (transformers layout, as save_pretrained writes it)
  tokenizer.json                   a tiny Llama-3-format tokenizer (engine.text.build_tiny_tokenizer)
  codec                            transformers layout: `codec_model.*` tensors + `codec_config` in
                                   config.json; other layouts: a `codec/` folder in Kyutai's layout
                                   (engine.mimi.testing.write_tiny_mimi)
  prompts/conversational_{a,b}.wav the voice presets' audio (24 kHz mono 16-bit WAV)
  prompts/conversational_{a,b}.txt their transcripts (UTF-8, one line)

The tiny network keeps the real structure: 32 codebooks of 2051 ids, grouped-query attention, the
published Llama-3 RoPE scaling; only the widths are small (backbone 2 layers x 64, decoder 2 x 32).
The transformers layout is written the way transformers 5.x `save_pretrained` writes a
CsmForConditionalGeneration (checked against transformers 5.24: config keys, tensor names, the tied
audio embeddings stored once under depth_decoder.model.embed_tokens, q/k rows in rotate-half order).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import soundfile as sf
from mlx.utils import tree_flatten, tree_unflatten

from engine.constants import SAMPLE_RATE, csm_home
from engine.csm import CSM, CSMConfig
from engine.llama import LlamaArgs
from engine.mimi.testing import tiny_test_signal, write_tiny_mimi
from engine.text import build_tiny_tokenizer

from .layouts import source_name

TINY_VERSION = "1"  # bump when the tiny model's content changes: cached copies are rebuilt
TINY_TEXT_VOCAB = 512
# As the published sesame/csm-1b config writes them (transformers' form of Sesame's constants).
BACKBONE_ROPE = {"factor": 32.0, "low_freq_factor": 0.125, "high_freq_factor": 0.5,
                 "original_max_position_embeddings": 1024}
DECODER_ROPE = {"factor": 32.0, "low_freq_factor": 1 / 512, "high_freq_factor": 1 / 128,
                "original_max_position_embeddings": 16}  # same curve as Sesame's (32, 1, 4, 8192)
PROMPTS = {
    "conversational_a": ("Hello there, this is the first tiny voice, and it only makes noise.", 2.0),
    "conversational_b": ("And this is the second tiny voice, also noise, but a little longer.", 2.4),
}
LAYOUTS = ("transformers", "sesame", "mlx")


def tiny_csm_config(text_vocab_size: int = TINY_TEXT_VOCAB) -> CSMConfig:
    backbone = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
                         rope_theta=500000.0, rope_scaling=dict(BACKBONE_ROPE), max_seq_len=2048)
    decoder = LlamaArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=64,
                        rope_theta=500000.0, rope_scaling=dict(DECODER_ROPE), max_seq_len=33)
    return CSMConfig(backbone=backbone, decoder=decoder, text_vocab_size=text_vocab_size,
                     audio_vocab_size=2051, audio_num_codebooks=32, max_seq_len=2048)


def random_csm_weights(config: CSMConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under our parameter names, at a unit scale (attention that is not
    uniform, logits that differ), with random norm gains."""
    rng = np.random.default_rng(seed)
    shapes = {k: v.shape for k, v in tree_flatten(CSM(config).parameters())}
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            w = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("embeddings.weight"):
            w = rng.standard_normal(shape)
        elif name == "audio_head":  # (K-1, Dd, V), used as h @ audio_head[i]
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
        else:  # Linear (out, in)
            scale = 2.0 if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
            w = scale * rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = w.astype(np.float32)
    return weights


# ---------------------------------------------------------------------------------------------
# In-memory random networks of any size (benchmarks and tests) and random prompts


def quantizable_tiny_config() -> CSMConfig:
    """A small CSM whose every layer quantizes at the default group size of 64 (widths 128 and 64),
    with the real audio vocabulary and codebook count (so sampling costs the same shape): the
    benchmark's `--size tiny`, and the quantization and CPU-kernel tests."""
    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    backbone = LlamaArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=256,
                         rope_scaling=scaling, max_seq_len=512)
    decoder = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
                        rope_scaling=scaling, max_seq_len=512)
    return CSMConfig(backbone=backbone, decoder=decoder, text_vocab_size=512, max_seq_len=512)


def random_csm(config: CSMConfig | None = None, dtype=mx.float32, seed: int = 0, std: float = 0.02) -> CSM:
    """A CSM with random normal weights (norms at 1), made directly in `dtype` on the device, in
    memory (write_tiny_csm writes a model folder). `config`: default tiny_csm_config(); the benchmark
    passes csm_1b_config() for the full size.

    Drawing 1.5 B normal numbers costs minutes on a small CPU, so every tensor is cut from one pool
    of (up to) 2^24 + 43 draws at a random offset; the pool length divides no row length, so no two rows are
    equal. For timing (and for quantization error on random weights) that is as good as fresh draws.
    """
    model = CSM(config or tiny_csm_config())
    params = tree_flatten(model.parameters())
    pool_size = min(1 << 24, max(p.size for _, p in params) // 4) + 43
    pool = mx.random.normal((pool_size,), dtype=dtype, scale=std, key=mx.random.key(seed))
    mx.eval(pool)
    rng = np.random.default_rng(seed)
    new = []
    for name, p in params:
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            value = mx.ones(p.shape, dtype=dtype)
        else:
            value = _cut(pool, int(rng.integers(0, pool_size)), p.size).reshape(p.shape)
        mx.eval(value)  # one tensor at a time: the peak stays near the model's size
        new.append((name, value))
    model.update(tree_unflatten(new))
    return model


def _cut(pool: mx.array, start: int, size: int) -> mx.array:
    """`size` values of `pool` read cyclically from `start`, in a buffer of their own (a slice of a
    tiled pool would keep the whole tiled buffer alive)."""
    n = pool.shape[0]
    parts, left = [], size
    while left > 0:
        take = min(left, n - start)
        parts.append(pool[start : start + take])
        left -= take
        start = 0
    return parts[0] + 0 if len(parts) == 1 else mx.concatenate(parts)


def random_prompt(rows: int, config: CSMConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`rows` prompt rows like a voice prompt: a text segment (1 in 4 rows) then audio rows."""
    rng = np.random.default_rng(seed)
    K = config.audio_num_codebooks
    tokens = np.zeros((rows, K + 1), np.int32)
    mask = np.zeros((rows, K + 1), np.bool_)
    n_text = max(1, rows // 4)
    tokens[:n_text, K] = rng.integers(0, config.text_vocab_size, n_text)
    mask[:n_text, K] = True
    tokens[n_text:, :K] = rng.integers(0, 2048, (rows - n_text, K))
    mask[n_text:, :K] = True
    return tokens, mask


# ---------------------------------------------------------------------------------------------
# Our names -> a layout's names (the inverse of layouts.py)


def _to_rotate_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved q/k rows -> transformers' rotate-half order: (H, hd/2, 2, D) -> (H, 2, hd/2, D)."""
    rows, D = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, D).transpose(0, 2, 1, 3).reshape(rows, D)


def weights_in_layout(weights: dict, config: CSMConfig, layout: str, prefix: str = "model.") -> dict:
    """Our-named tensors (NumPy or MLX) renamed (and q/k permuted) for `layout`.
    `prefix` is used by the mlx layout only ("model." as mlx-audio writes, or "")."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    out = {}
    for name, w in weights.items():
        if layout == "transformers" and name.endswith(("q_proj.weight", "k_proj.weight")) and w.ndim == 2:
            args = config.backbone if name.startswith("backbone.") else config.decoder
            heads = args.n_heads if name.endswith("q_proj.weight") else args.n_kv_heads
            w = _to_rotate_half(np.asarray(w), heads)
        out[source_name(name, layout, prefix)] = w
    return out


def _rope_entry(args: LlamaArgs) -> dict:
    if not args.rope_scaling:
        return {"rope_theta": args.rope_theta, "rope_type": "default"}
    s = args.rope_scaling
    return {"factor": float(s["factor"]), "high_freq_factor": float(s["high_freq_factor"]),
            "low_freq_factor": float(s["low_freq_factor"]),
            "original_max_position_embeddings": int(s["original_max_position_embeddings"]),
            "rope_theta": float(args.rope_theta), "rope_type": "llama3"}


def transformers_config(config: CSMConfig, codec_config: dict | None = None) -> dict:
    """config.json as transformers 5.x writes a CsmForConditionalGeneration's (keys sorted as it does)."""
    b, d = config.backbone, config.decoder
    depth = {
        "attention_bias": False, "attention_dropout": 0.0, "backbone_hidden_size": b.dim,
        "bos_token_id": None, "eos_token_id": None, "head_dim": d.head_dim, "hidden_act": "silu",
        "hidden_size": d.dim, "initializer_range": 0.02, "intermediate_size": d.hidden_dim,
        "max_position_embeddings": max(d.max_seq_len, config.audio_num_codebooks + 1), "mlp_bias": False,
        "model_type": "csm_depth_decoder_model", "num_attention_heads": d.n_heads,
        "num_codebooks": config.audio_num_codebooks, "num_hidden_layers": d.n_layers,
        "num_key_value_heads": d.n_kv_heads, "pad_token_id": None, "rms_norm_eps": d.norm_eps,
        "rope_parameters": _rope_entry(d), "use_cache": True, "vocab_size": config.audio_vocab_size,
    }
    out = {
        "architectures": ["CsmForConditionalGeneration"], "attention_bias": False, "attention_dropout": 0.0,
        "audio_eos_token_id": 128003, "audio_token_id": 128002, "bos_token_id": 128000,
        "codebook_eos_token_id": 0, "codebook_pad_token_id": config.audio_vocab_size - 1,
    }
    if codec_config is not None:
        out["codec_config"] = codec_config
    out.update({
        "depth_decoder_config": depth, "dtype": "float32", "eos_token_id": None, "head_dim": b.head_dim,
        "hidden_act": "silu", "hidden_size": b.dim, "initializer_range": 0.02, "intermediate_size": b.hidden_dim,
        "max_position_embeddings": b.max_seq_len, "mlp_bias": False, "model_type": "csm",
        "num_attention_heads": b.n_heads, "num_codebooks": config.audio_num_codebooks,
        "num_hidden_layers": b.n_layers, "num_key_value_heads": b.n_kv_heads, "pad_token_id": 128002,
        "rms_norm_eps": b.norm_eps, "rope_parameters": _rope_entry(b), "text_vocab_size": config.text_vocab_size,
        "tie_codebooks_embeddings": True, "tie_word_embeddings": True, "transformers_version": "5.24.0",
        "use_cache": True, "vocab_size": config.audio_vocab_size,
    })
    return out


TRANSFORMERS_GENERATION_CONFIG = {
    "_from_model_config": True, "bos_token_id": 128000, "depth_decoder__from_model_config": True,
    "depth_decoder_output_attentions": False, "depth_decoder_output_hidden_states": False,
    "depth_decoder_use_cache": True, "output_attentions": False, "output_hidden_states": False,
    "pad_token_id": 128002, "transformers_version": "5.24.0", "use_cache": True,
}


def flavors_config(config: CSMConfig, quantization: dict | None = None) -> dict:
    """config.json in Sesame's form, the tiny flavours defined in the file ("flavors")."""
    out = {
        "backbone_flavor": "tiny-backbone", "decoder_flavor": "tiny-decoder",
        "flavors": {"tiny-backbone": asdict(config.backbone), "tiny-decoder": asdict(config.decoder)},
        "text_vocab_size": config.text_vocab_size, "audio_vocab_size": config.audio_vocab_size,
        "audio_num_codebooks": config.audio_num_codebooks,
    }
    if quantization:
        out["quantization"] = dict(quantization)
    return out


def save_csm(folder, weights: dict | CSM, config: CSMConfig, layout: str = "mlx", *, prefix: str = "model.",
             quantize: dict | None = None, codec: tuple[dict, dict] | None = None) -> Path:
    """Write config.json + model.safetensors for these weights (our names, or a CSM) in `layout`.

    quantize: {"group_size", "bits"} (mlx layout only): quantize every Linear/Embedding whose input
    width the group divides, as the MLX community conversions do. codec: (transformers-named Mimi
    tensors, codec_config) stored inside a transformers checkpoint.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(weights, CSM):
        weights = dict(tree_flatten(weights.parameters()))
    if quantize:
        if layout != "mlx":
            raise ValueError("only the mlx layout stores quantized weights")
        model = CSM(config)
        model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
        gs = int(quantize["group_size"])
        nn.quantize(model, group_size=gs, bits=int(quantize["bits"]),
                    class_predicate=lambda p, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % gs == 0)
        weights = dict(tree_flatten(model.parameters()))
    tensors = weights_in_layout(weights, config, layout, prefix)
    if layout == "transformers":
        if codec is not None:
            tensors.update({f"codec_model.{k}": v for k, v in codec[0].items()})
        cfg = transformers_config(config, codec[1] if codec is not None else None)
        (folder / "generation_config.json").write_text(json.dumps(TRANSFORMERS_GENERATION_CONFIG, indent=2) + "\n")
    else:
        cfg = flavors_config(config, quantize)
    arrays = {k: mx.array(v) for k, v in tensors.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), arrays,
                        metadata={"format": "mlx" if layout == "mlx" else "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------
# A complete tiny model folder


def write_prompts(folder, seconds_scale: float = 1.0) -> Path:
    """prompts/<voice>.wav (24 kHz mono PCM16) and prompts/<voice>.txt (the transcript)."""
    prompts = Path(folder) / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    for i, (voice, (text, seconds)) in enumerate(PROMPTS.items()):
        audio = tiny_test_signal(int(SAMPLE_RATE * seconds * seconds_scale))
        if i % 2:
            audio = 0.9 * audio[::-1]  # a different "voice"
        sf.write(str(prompts / f"{voice}.wav"), np.ascontiguousarray(audio), SAMPLE_RATE, subtype="PCM_16")
        (prompts / f"{voice}.txt").write_text(text + "\n", encoding="utf-8")
    return prompts


def write_tiny_csm(folder, layout: str = "transformers", seed: int = 0, with_codec: bool = True,
                   with_tokenizer: bool = True, with_prompts: bool = True, quantize: dict | None = None,
                   prefix: str = "model.", config: CSMConfig | None = None) -> Path:
    """Write a complete tiny random model into `folder` (created) and return it."""
    folder = Path(folder)
    config = config or tiny_csm_config()
    weights = random_csm_weights(config, seed)
    codec = None
    if with_codec:
        if layout == "transformers":
            codec = write_tiny_mimi({}, layout="transformers", seed=seed)
        else:
            write_tiny_mimi(folder / "codec", layout="kyutai", seed=seed)
    save_csm(folder, weights, config, layout, prefix=prefix, quantize=quantize, codec=codec)
    if with_tokenizer:
        build_tiny_tokenizer(folder / "tokenizer.json", config.text_vocab_size)
    if with_prompts:
        write_prompts(folder)
    return folder


def tiny_random_path() -> Path:
    """$CSM_HOME/tiny-random (transformers layout), built on first use. The build happens in a temporary
    folder renamed into place, so a crash or a second process never sees half a model."""
    home = csm_home()
    target = home / "tiny-random"
    marker = target / ".tiny-version"
    if marker.is_file() and marker.read_text().strip() == TINY_VERSION:
        return target
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-random-", dir=home))
    try:
        write_tiny_csm(tmp, layout="transformers", seed=0)
        (tmp / ".tiny-version").write_text(TINY_VERSION + "\n")
        if target.exists():  # stale (an older version): move it away first
            if marker.is_file() and marker.read_text().strip() == TINY_VERSION:
                return target  # another process finished first
            trash = Path(tempfile.mkdtemp(prefix=".tiny-random-old-", dir=home))
            os.replace(target, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process renamed its copy into place in between
            if not (marker.is_file() and marker.read_text().strip() == TINY_VERSION):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = [
    "tiny_csm_config", "random_csm_weights", "quantizable_tiny_config", "random_csm", "random_prompt", "weights_in_layout", "transformers_config", "flavors_config",
    "save_csm", "write_prompts", "write_tiny_csm", "tiny_random_path",
]
