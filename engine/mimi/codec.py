"""Mimi: 24 kHz mono audio <-> frames of codes (12.5 Hz, 32 codebooks for the real codec).

    encode: audio (T,) -> SEANet encoder (25 Hz) -> encoder transformer -> learnt stride-2 conv
            (12.5 Hz latent, "pre-quantizer latent") -> split RVQ -> codes (K, F)
    decode: codes (K, F) -> RVQ centroids -> depthwise stride-2 transposed conv (25 Hz) -> decoder
            transformer -> SEANet decoder -> audio (F * frame_size,)

Everything is causal, so decoding chunk by chunk with carried state (`streaming_decoder()`) gives
the same waveform as decoding at once. Long inputs are processed in chunks that way internally to
bound memory.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from ..audio import resample
from ..errors import AudioError, InputError
from .config import MimiConfig
from .quantizer import SplitResidualVectorQuantizer
from .resample import make_downsample, make_upsample
from .seanet import SEANetDecoder, SEANetEncoder
from .transformer import CodecTransformer

ENCODE_CHUNK_FRAMES = 250  # longer audio is encoded as a stream of chunks this long (20 s)
DECODE_CHUNK_FRAMES = 250  # longer code sequences are decoded as a stream of chunks this long


class Mimi(nn.Module):
    def __init__(self, config: MimiConfig | dict | None = None):
        super().__init__()
        cfg = MimiConfig.from_dict(config) if config is not None else MimiConfig()
        self.config = cfg
        self.encoder = SEANetEncoder(cfg)
        self.encoder_transformer = CodecTransformer(cfg)
        self.quantizer = SplitResidualVectorQuantizer(cfg)
        self.decoder_transformer = CodecTransformer(cfg)
        self.decoder = SEANetDecoder(cfg)
        if cfg.latent_stride > 1:
            self.downsample = make_downsample(cfg)
            self.upsample = make_upsample(cfg)

    # --- construction ------------------------------------------------------------------------------
    def set_weights(self, params: dict[str, mx.array]) -> "Mimi":
        """Install parameters (our names and layouts) and recompute what derives from them."""
        self.update(tree_unflatten(list(params.items())))
        self.quantizer.refresh()
        mx.eval(self.parameters())
        return self

    def update(self, parameters: dict, *args, **kwargs) -> "Mimi":
        """As nn.Module.update (also behind load_weights, set_dtype), then the codebook centroids
        derived from the new parameters are recomputed on next use."""
        super().update(parameters, *args, **kwargs)
        self.quantizer.invalidate()
        return self

    # --- sizes ---------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def num_codebooks(self) -> int:
        return self.config.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _stride(self) -> bool:
        return "downsample" in self

    # --- encoding ------------------------------------------------------------------------------------
    def encode(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """Audio (1-D float, 24 kHz; 2-D is downmixed, another `sample_rate` resampled) -> codes
        (num_codebooks, ceil(samples / frame_size)) int32. A ragged end is padded inside each strided
        conv, as transformers and moshi 0.2.2 do."""
        latent = self.encode_latent(audio, sample_rate)
        codes = self.quantizer.encode(latent)
        return np.array(codes, dtype=np.int32)

    def encode_latent(self, audio, sample_rate: int | None = None) -> mx.array:
        """The pre-quantizer latent (frames, hidden_size) at the codec frame rate."""
        x = mx.array(self._check_audio(audio, sample_rate))[None, :, None]  # (1, T, 1)
        chunk = ENCODE_CHUNK_FRAMES * self.frame_size
        if x.shape[1] <= chunk:
            h = self.encoder_transformer(self.encoder(x))
            latent = self.downsample(h) if self._stride() else h
        else:
            latent = self._encode_streamed(x, chunk)
        mx.eval(latent)
        return latent[0]

    def _encode_streamed(self, x: mx.array, chunk: int) -> mx.array:
        seanet, transformer = self.encoder.stream(), self.encoder_transformer.stream()
        down = self.downsample.stream() if self._stride() else None
        out = []

        def push(h):
            h = transformer.step(h)
            h = down.step(h) if down is not None else h
            if h.shape[1]:
                out.append(h)

        for start in range(0, x.shape[1], chunk):
            push(seanet.step(x[:, start:start + chunk]))
            mx.eval(out[-1] if out else [], seanet.arrays(), transformer.arrays(), down.arrays() if down else [])
        tail = seanet.flush()
        if tail is not None and tail.shape[1]:
            push(tail)
        if down is not None:
            last = down.flush()
            if last.shape[1]:
                out.append(last)
        return mx.concatenate(out, axis=1)

    def _check_audio(self, audio, sample_rate: int | None) -> np.ndarray:
        try:
            a = np.asarray(audio, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise AudioError(f"audio must be an array of float samples, not {type(audio).__name__}") from err
        if a.ndim == 2:  # (channels, samples) or (samples, channels): average the short axis
            a = a.mean(axis=0 if a.shape[0] <= a.shape[1] else 1)
        if a.ndim != 1:
            raise AudioError(f"audio must be 1-D mono samples (or 2-D to downmix), got shape {a.shape}")
        if sample_rate is not None:
            a = resample(a, int(sample_rate), self.sample_rate)
        if a.size == 0:
            raise AudioError("audio is empty: nothing to encode")
        if not np.isfinite(a).all():
            raise AudioError("audio contains NaN or infinite samples")
        return a

    # --- decoding ------------------------------------------------------------------------------------
    def check_codes(self, codes, num_codebooks: int | None = None) -> mx.array:
        """Validated codes (K, F) int32. K must be `num_codebooks` (default: all of them); a smaller K
        decodes with the first K codebooks only (as transformers does), but must be asked for, so that
        frames x codebooks input is never taken for codebooks x frames."""
        k = self.num_codebooks if num_codebooks is None else int(num_codebooks)
        if not 1 <= k <= self.num_codebooks:
            raise InputError(f"num_codebooks must be in 1..{self.num_codebooks}, got {k}")
        if isinstance(codes, mx.array):
            codes = np.array(codes)
        a = np.asarray(codes)
        if a.ndim != 2:
            raise InputError(f"codes must be 2-D (num_codebooks, frames), got shape {a.shape}")
        if a.shape[0] != k:
            hint = ""
            if a.shape[1] == k:
                hint = " (frames x codebooks? transpose it)"
            elif a.shape[0] < self.num_codebooks and num_codebooks is None:
                hint = f" (to decode with the first {a.shape[0]} codebooks only, pass num_codebooks={a.shape[0]})"
            raise InputError(f"codes must be ({k} codebooks, frames), got shape {a.shape}{hint}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
                raise InputError(f"codes must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= self.codebook_size):
            bad = np.argwhere((a < 0) | (a >= self.codebook_size))[0]
            raise InputError(
                f"code {int(a[tuple(bad)])} at codebook {bad[0]}, frame {bad[1]} is outside 0..{self.codebook_size - 1}; "
                f"Mimi cannot decode it (CSM's audio ids {self.codebook_size}.. are special tokens, not sounds)")
        return mx.array(a.astype(np.int32))

    def decode(self, codes, num_codebooks: int | None = None) -> mx.array:
        """Codes (num_codebooks, F) -> float32 audio (F * frame_size,) at 24 kHz."""
        c = self.check_codes(codes, num_codebooks)
        frames = c.shape[1]
        if frames == 0:
            return mx.zeros((0,), dtype=mx.float32)
        if frames > DECODE_CHUNK_FRAMES:
            stream = self.streaming_decoder(num_codebooks)
            parts = [stream.decode(c[:, s:s + DECODE_CHUNK_FRAMES]) for s in range(0, frames, DECODE_CHUNK_FRAMES)]
            return mx.concatenate(parts)
        h = self.quantizer.decode(c)[None]  # (1, F, hidden)
        if self._stride():
            h = self.upsample(h)
        audio = self.decoder(self.decoder_transformer(h)).reshape(-1)
        mx.eval(audio)
        return audio

    def streaming_decoder(self, num_codebooks: int | None = None) -> "MimiStreamingDecoder":
        return MimiStreamingDecoder(self, num_codebooks)


class MimiStreamingDecoder:
    """Decodes codes chunk by chunk; the concatenated outputs equal `Mimi.decode` of all the codes.

    State carried between chunks: the upsampler's overlap, the decoder transformer's positions and
    keys/values (the last sliding-window - 1 positions of every layer), and every SEANet conv's left
    context and transposed conv's overlap. Each decoder owns its state: several may run at once."""

    def __init__(self, mimi: Mimi, num_codebooks: int | None = None):
        self.mimi = mimi
        self.num_codebooks = num_codebooks
        self.upsample = mimi.upsample.stream() if mimi._stride() else None
        self.transformer = mimi.decoder_transformer.stream()
        self.seanet = mimi.decoder.stream()
        self.frames = 0

    def reset(self):
        for part in (self.upsample, self.transformer, self.seanet):
            if part is not None:
                part.reset()
        self.frames = 0

    def decode(self, codes) -> mx.array:
        """The next codes (K, f) -> the next f * frame_size samples (float32)."""
        c = self.mimi.check_codes(codes, self.num_codebooks)
        if c.shape[1] == 0:
            return mx.zeros((0,), dtype=mx.float32)
        h = self.mimi.quantizer.decode(c)[None]
        if self.upsample is not None:
            h = self.upsample.step(h)
        audio = self.seanet.step(self.transformer.step(h)).reshape(-1)
        state = self.transformer.arrays() + self.seanet.arrays() + (self.upsample.arrays() if self.upsample else [])
        mx.eval(audio, state)
        self.frames += c.shape[1]
        return audio
