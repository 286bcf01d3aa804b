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

The network is plain MLX: how a frame is computed fast (a compiled graph, batched rows, native CPU
code) is a frame backend's business (engine/backends/), chosen once when a model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .kv_cache import KVCache
from .llama import Llama, LlamaArgs

Sampler = Callable[[mx.array], mx.array]  # logits (B, V) -> codes (B,) int32

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
        self.projection = nn.Linear(Db, Dd, bias=False)
        self.codebook0_head = nn.Linear(Db, V, bias=False)
        self.audio_head = mx.zeros((K - 1, Dd, V))
        self._codebook_offsets = mx.arange(K, dtype=mx.int32) * V  # (K,)

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
    def _act_dtype(self):
        """Activation dtype: that of the norms (quantized layers keep float norms)."""
        return self.decoder.norm.weight.dtype

    def generate_frame(self, h_last: mx.array, sampler: Sampler) -> mx.array:
        """Sample one frame as a lazy graph: h_last (B, Db) -> codes (B, K) int32, every codebook
        drawn by `sampler` (logits (B, V) -> codes (B,))."""
        cache = self.decoder.new_cache(self.config.audio_num_codebooks, batch=h_last.shape[0], dtype=self._act_dtype())
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
            c = pick(i, h[:, -1, :] @ self.audio_head[i - 1]).astype(mx.int32)  # (B,)
            codes.append(c)
            if i < K - 1:
                x = self._embed_code(i, c)  # (B, 1, Db)
        return mx.stack(codes, axis=1)

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
