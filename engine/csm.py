"""The CSM network: text and audio embeddings, the Llama backbone, the depth decoder and the heads.

A prompt row ("frame") has K+1 columns: K audio codes (one per codebook) and a text token; a mask
says which columns count. A row's embedding is the masked sum of its column embeddings, codebook k
using row `k * V + code` of the audio table (V = audio vocabulary).

One generated frame (DESIGN.md, REFERENCE.md):
  h = backbone hidden of the last row (after the final norm)          (B, Db)
  c0 ~ codebook0_head(h)
  depth decoder over [h, audio_emb(c0)] at positions 0, 1, then one step per codebook i = 1..K-1:
      c_i ~ decoder_hidden @ audio_head[i-1];  next input audio_emb(c_i + i*V)
  The decoder's cache is reset every frame (positions 0..K-1). Inputs go through `projection`
  (Db -> Dd) before the decoder.

A bfloat16 model on a CPU with engine.cpu.kernels runs a one-sequence frame's depth decoder in
engine/cpu/depth.py (NumPy over bfloat16 kernels) instead of the MLX graph.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .cpu import depth as cpu_depth
from .kv_cache import KVCache
from .llama import Linear, Llama, LlamaArgs, head_matmul

Sampler = Callable[[mx.array], mx.array]  # logits (B, V) -> codes (B,) int32

# Run the per-frame depth-decoder loop as one compiled graph (see CSM.generate_frame).
COMPILE_FRAMES = os.environ.get("CSM_COMPILE", "1") != "0"

# Rows embedded at once by embed_rows: bounds the (B, chunk, K, Db) gather of the audio table.
EMBED_CHUNK_ROWS = 128


@dataclass
class CSMConfig:
    backbone: LlamaArgs
    decoder: LlamaArgs
    text_vocab_size: int = 128256
    audio_vocab_size: int = 2051
    audio_num_codebooks: int = 32
    max_seq_len: int = 2048


def llama_1b() -> LlamaArgs:
    """Sesame's "llama-1B" backbone flavour."""
    return LlamaArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, hidden_dim=8192,
        norm_eps=1e-5, rope_theta=500000.0, rope_scaling=dict(SESAME_ROPE_SCALING), max_seq_len=2048,
    )


def llama_100m() -> LlamaArgs:
    """Sesame's "llama-100M" depth-decoder flavour."""
    return LlamaArgs(
        dim=1024, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=128, hidden_dim=8192,
        norm_eps=1e-5, rope_theta=500000.0, rope_scaling=dict(SESAME_ROPE_SCALING), max_seq_len=2048,
    )


# Sesame's Llama3ScaledRoPE constants (the transformers config writes equivalent values).
SESAME_ROPE_SCALING = {
    "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def csm_1b_config() -> CSMConfig:
    return CSMConfig(backbone=llama_1b(), decoder=llama_100m())


class CSM(nn.Module):
    """CSM-1B. Parameters (mlx-community names): text_embeddings, audio_embeddings, backbone.*,
    decoder.*, projection, codebook0_head, audio_head (K-1, Dd, V).

    Note: `self.backbone(...)` is the contract's method (embeds, cache) -> hidden; the backbone
    *module* is `self["backbone"]` (its parameters are still named `backbone.*`).
    """

    def __init__(self, config: CSMConfig):
        super().__init__()
        self.config = config
        Db, Dd = config.backbone.dim, config.decoder.dim
        K, V = config.audio_num_codebooks, config.audio_vocab_size
        self["backbone"] = Llama(config.backbone)
        self.decoder = Llama(config.decoder)
        self.text_embeddings = nn.Embedding(config.text_vocab_size, Db)
        self.audio_embeddings = nn.Embedding(K * V, Db)
        self.projection = Linear(Db, Dd)
        self.codebook0_head = Linear(Db, V)
        self.audio_head = mx.zeros((K - 1, Dd, V))
        self._codebook_offsets = mx.arange(K, dtype=mx.int32) * V  # (K,)
        self._decoder_cache: list[KVCache] | None = None
        self._compiled_frames: dict = {}  # sampler -> compiled frame function
        self._compile_failed = False
        self._cpu_depth_state = None  # (dtype, device, CpuDepthDecoder | None), see _cpu_depth

    # ---- embeddings -------------------------------------------------------------------------
    def embed_rows(self, tokens, mask) -> mx.array:
        """Masked sum of column embeddings: tokens (B, T, K+1) int, mask (B, T, K+1) bool -> (B, T, Db)."""
        tokens = mx.array(tokens).astype(mx.int32)
        mask = mx.array(mask).astype(mx.bool_)
        K = self.config.audio_num_codebooks
        T = tokens.shape[1]
        parts = []
        for start in range(0, T, EMBED_CHUNK_ROWS):
            tok = tokens[:, start:start + EMBED_CHUNK_ROWS]
            msk = mask[:, start:start + EMBED_CHUNK_ROWS]
            tok = mx.where(msk, tok, 0)  # masked-out columns may hold anything
            audio = self.audio_embeddings(tok[..., :K] + self._codebook_offsets)  # (B, t, K, Db)
            audio = (audio * msk[..., :K, None].astype(audio.dtype)).sum(axis=2)
            text = self.text_embeddings(tok[..., K]) * msk[..., K:].astype(audio.dtype)
            parts.append(audio + text)
        return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=1)

    def frame_embedding(self, codes: mx.array) -> mx.array:
        """Row embedding of one audio frame: codes (B, K) -> (B, 1, Db) (all K columns count)."""
        codes = mx.array(codes).astype(mx.int32)
        return self.audio_embeddings(codes + self._codebook_offsets).sum(axis=1, keepdims=True)

    def _embed_code(self, codebook: int, code: mx.array) -> mx.array:
        """code (B,) of one codebook -> (B, 1, Db)."""
        return self.audio_embeddings(code[:, None] + codebook * self.config.audio_vocab_size)

    # ---- backbone ---------------------------------------------------------------------------
    def new_backbone_cache(self, max_size: int | None = None, batch: int = 1) -> list[KVCache]:
        return self["backbone"].new_cache(max_size or self.config.max_seq_len, batch=batch)

    def backbone(self, embeds: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        """embeds (B, T, Db) -> hidden (B, T, Db) after the final norm; appends to `cache`."""
        return self["backbone"](embeds, cache)

    # ---- one frame --------------------------------------------------------------------------
    def _frame_decoder_cache(self, batch: int) -> list[KVCache]:
        """The depth decoder's preallocated cache (K positions), reset for a new frame."""
        cache = self._decoder_cache
        dtype = self._act_dtype()
        if cache is None or cache[0].keys.shape[0] != batch or cache[0].keys.dtype != dtype:
            cache = self.decoder.new_cache(self.config.audio_num_codebooks, batch=batch, dtype=dtype)
            self._decoder_cache = cache
        for c in cache:
            c.reset()
        return cache

    def _act_dtype(self):
        """Activation dtype: that of the norms (quantized layers keep float norms)."""
        return self.decoder.norm.weight.dtype

    def generate_frame(self, h_last: mx.array, sampler: Sampler) -> mx.array:
        """Sample one frame: h_last (B, Db) -> codes (B, K) int32.

        The 32 steps run as one compiled graph per sampler (mx.compile; the sampler's draws come
        from mx.random's global state, which the compiled function reads and advances exactly as
        the plain path does). Set CSM_COMPILE=0 (or COMPILE_FRAMES = False) to run it op by op.
        """
        depth = self._cpu_depth()
        if depth is not None:
            if h_last.shape[0] == 1:
                return self._cpu_frame(depth, h_last, sampler)
            # the kernels' one-row products evaluate eagerly: no compiled graph around them
            return self._frame(h_last, sampler, self._frame_decoder_cache(h_last.shape[0]))
        if COMPILE_FRAMES and not self._compile_failed:
            fn = self._compiled_frame(sampler)
            if fn is not None:
                try:
                    return fn(h_last)
                except RuntimeError as err:  # e.g. no C++ compiler for MLX's CPU kernels
                    warnings.warn(f"compiled frame step unavailable ({err}); running uncompiled")
                    self._compile_failed = True
        return self._frame(h_last, sampler, self._frame_decoder_cache(h_last.shape[0]))

    def _cpu_depth(self):
        """The NumPy depth decoder when this model can use it here (engine/cpu/depth.py), else None."""
        key = (self._act_dtype(), mx.default_device())
        state = self._cpu_depth_state
        if state is None or state[:2] != key:
            depth = cpu_depth.CpuDepthDecoder(self) if cpu_depth.usable(self) else None
            state = self._cpu_depth_state = (*key, depth)
        return state[2]

    def _cpu_frame(self, depth, h_last: mx.array, sampler: Sampler) -> mx.array:
        """One frame for one sequence through engine/cpu/depth.py: codes (1, K) int32."""
        c0 = int(sampler(self.codebook0_head(h_last)).astype(mx.int32).item())
        rest = depth.frame(np.array(h_last[0].astype(mx.float32)), c0, sampler)
        return mx.array([[c0, *rest]], dtype=mx.int32)

    def _compiled_frame(self, sampler: Sampler):
        try:
            fn = self._compiled_frames.get(sampler)
        except TypeError:  # an unhashable sampler: no compiled cache for it
            return None
        if fn is None:
            if len(self._compiled_frames) >= 8:
                self._compiled_frames.clear()

            def frame(h_last):
                cache = self.decoder.new_cache(self.config.audio_num_codebooks, batch=h_last.shape[0],
                                               dtype=self._act_dtype())
                return self._frame(h_last, sampler, cache)

            fn = mx.compile(frame, inputs=[mx.random.state], outputs=[mx.random.state])
            self._compiled_frames[sampler] = fn
        return fn

    def _frame(self, h_last: mx.array, sampler: Sampler, cache: list[KVCache]) -> mx.array:
        """One frame as a lazy graph; `cache` is the depth decoder's (empty, K positions)."""
        return self.depth_frame(h_last, lambda codebook, logits: sampler(logits), cache)

    def depth_frame(self, h_last: mx.array, pick: Callable[[int, mx.array], mx.array],
                    cache: list[KVCache]) -> mx.array:
        """One frame as a lazy graph: h_last (B, Db) -> codes (B, K) int32. `pick(codebook, logits
        (B, V))` draws codebook i's codes (B,); `cache` is the depth decoder's (empty, K positions)."""
        K = self.config.audio_num_codebooks
        c = pick(0, self.codebook0_head(h_last)).astype(mx.int32)  # (B,)
        codes = [c]
        x = mx.concatenate([h_last[:, None, :], self._embed_code(0, c)], axis=1)  # (B, 2, Db)
        for i in range(1, K):
            h = self.decoder(self.projection(x), cache)  # (B, t, Dd)
            c = pick(i, head_matmul(h[:, -1, :], self.audio_head[i - 1])).astype(mx.int32)  # (B,)
            codes.append(c)
            if i < K - 1:
                x = self._embed_code(i, c)  # (B, 1, Db)
        return mx.stack(codes, axis=1)

    # Compiled graphs hold the weights they were traced with: forget them when weights change.
    def update(self, parameters: dict, *args, **kwargs):
        self._compiled_frames = {}
        self._cpu_depth_state = None
        return super().update(parameters, *args, **kwargs)

    def update_modules(self, modules: dict, *args, **kwargs):
        self._compiled_frames = {}
        self._cpu_depth_state = None
        return super().update_modules(modules, *args, **kwargs)

    def frame_logits(self, h_last: mx.array, codes: mx.array) -> mx.array:
        """Teacher-forced logits of one frame: h_last (B, Db), codes (B, K) -> (B, K, V).

        [:, 0] is the codebook-0 head; [:, i] the depth decoder's logits for codebook i given
        codes 0..i-1 of the frame.
        """
        K = self.config.audio_num_codebooks
        codes = mx.array(codes).astype(mx.int32)
        c0_logits = self.codebook0_head(h_last)  # (B, V)
        emb = self.audio_embeddings(codes[:, : K - 1] + self._codebook_offsets[: K - 1])  # (B, K-1, Db)
        x = mx.concatenate([h_last[:, None, :], emb], axis=1)  # (B, K, Db)
        h = self.decoder(self.projection(x))  # (B, K, Dd), causal, fresh positions 0..K-1
        rest = mx.einsum("bkd,kdv->bkv", h[:, 1:, :], self.audio_head)  # (B, K-1, V)
        return mx.concatenate([c0_logits[:, None, :], rest], axis=1)
