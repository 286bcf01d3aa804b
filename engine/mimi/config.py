"""Hyperparameters of the Mimi codec.

Defaults are the released codec (Kyutai's `tokenizer-e351c8d8-checkpoint125`, transformers'
`kyutai/mimi`): 24 kHz mono, SEANet ratios (8, 6, 5, 4) -> 25 Hz, a learnt stride-2 resampler ->
12.5 Hz, 1920 samples per frame, 32 codebooks (1 semantic + 31 acoustic) of 2048 x 256.

`MimiConfig.from_dict` reads a transformers MimiModel config dict (the `config.json` of kyutai/mimi,
or the `codec_config` inside a transformers CSM config); `to_dict` writes one back. Nothing here
imports MLX, so tests and the golden script can use it anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..constants import FRAME_RATE, NUM_CODEBOOKS, SAMPLE_RATE
from ..errors import WeightsError


@dataclass
class MimiConfig:
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    hidden_size: int = 512  # SEANet latent dim = transformer width = quantizer input/output
    num_filters: int = 64  # channels after the first SEANet conv (doubled at each encoder stage)
    num_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder (upsampling) order; the encoder runs them reversed
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    compress: int = 2
    pad_mode: str = "constant"
    # quantizer
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_quantizers: int = NUM_CODEBOOKS
    num_semantic_quantizers: int = 1
    # transformers (encoder and decoder)
    num_layers: int = 8
    num_heads: int = 8
    head_dim: int = 64
    intermediate_size: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 250
    # 25 Hz <-> 12.5 Hz
    frame_rate: float = FRAME_RATE
    upsample_groups: int = 512
    extra: dict = field(default_factory=dict, repr=False, compare=False)  # unknown config keys, kept

    def __post_init__(self):
        self.ratios = tuple(int(r) for r in self.ratios)
        problems = []
        if self.channels != 1:
            problems.append(f"audio_channels={self.channels} (only mono is supported)")
        if not 0 < self.num_semantic_quantizers < self.num_quantizers:
            problems.append(f"num_semantic_quantizers={self.num_semantic_quantizers} must be in "
                            f"1..num_quantizers-1 ({self.num_quantizers - 1})")
        if self.num_heads * self.head_dim != self.hidden_size:
            problems.append(f"num_heads*head_dim={self.num_heads}*{self.head_dim} != hidden_size={self.hidden_size}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.pad_mode not in ("constant", "replicate"):
            problems.append(f"pad_mode={self.pad_mode!r} (supported: constant, replicate)")
        stride = self.encoder_frame_rate / self.frame_rate
        if abs(stride - round(stride)) > 1e-6 or round(stride) < 1:
            problems.append(f"frame_rate={self.frame_rate} is not the SEANet rate "
                            f"{self.encoder_frame_rate} divided by a whole number")
        if self.latent_stride > 1 and self.upsample_groups not in (1, self.hidden_size):
            problems.append(f"upsample_groups={self.upsample_groups} (supported: 1 or hidden_size)")
        if problems:
            raise WeightsError("unsupported Mimi configuration: " + "; ".join(problems))

    # --- derived sizes ---------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        """Audio samples per SEANet step (960 for the real codec: 25 Hz)."""
        return math.prod(self.ratios)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def latent_stride(self) -> int:
        """SEANet steps per codec frame (2 for the real codec)."""
        return int(round(self.encoder_frame_rate / self.frame_rate))

    @property
    def frame_size(self) -> int:
        """Audio samples per codec frame (1920 for the real codec)."""
        return self.hop_length * self.latent_stride

    @property
    def num_acoustic_quantizers(self) -> int:
        return self.num_quantizers - self.num_semantic_quantizers

    # --- transformers-style dicts ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "MimiConfig":
        """Read a transformers MimiModel config dict (any version), or one written by `to_dict`."""
        if isinstance(d, MimiConfig):
            return d
        d = dict(d)
        get = d.get
        hidden = int(get("hidden_size", 512))
        heads = int(get("num_attention_heads", 8))
        head_dim = get("head_dim") or hidden // heads
        kv_heads = int(get("num_key_value_heads", heads) or heads)
        if kv_heads != heads:
            raise WeightsError(f"unsupported Mimi configuration: num_key_value_heads={kv_heads} != "
                               f"num_attention_heads={heads}")
        rope = get("rope_parameters") or get("rope_scaling") or {}
        theta = get("rope_theta") or (rope.get("rope_theta") if isinstance(rope, dict) else None) or 10000.0
        ratios = tuple(get("upsampling_ratios") or (8, 6, 5, 4))
        sample_rate = int(get("sampling_rate", SAMPLE_RATE))
        frame_rate = get("frame_rate", get("_frame_rate"))
        if frame_rate is None:  # transformers' own rule: the SEANet hop times the stride-2 resampler
            frame_rate = sample_rate / (math.prod(ratios) * 2)
        vq_dim = get("vector_quantization_hidden_dimension")
        codebook_dim = get("codebook_dim") or vq_dim or hidden
        if vq_dim is not None and int(vq_dim) != int(codebook_dim):
            raise WeightsError(f"unsupported Mimi configuration: vector_quantization_hidden_dimension={vq_dim} "
                               f"!= codebook_dim={codebook_dim}")
        for key, ok in (("use_causal_conv", True), ("use_conv_shortcut", False), ("trim_right_ratio", 1.0),
                        ("attention_bias", False)):
            if key in d and d[key] != ok:
                raise WeightsError(f"unsupported Mimi configuration: {key}={d[key]!r} (only {ok!r})")
        act = get("hidden_act", "gelu")
        if act not in ("gelu",):
            raise WeightsError(f"unsupported Mimi configuration: hidden_act={act!r} (only exact 'gelu')")
        known = {"sampling_rate", "audio_channels", "hidden_size", "num_filters", "num_residual_layers",
                 "upsampling_ratios", "kernel_size", "last_kernel_size", "residual_kernel_size",
                 "dilation_growth_rate", "compress", "pad_mode", "codebook_size", "codebook_dim",
                 "num_quantizers", "num_semantic_quantizers", "num_hidden_layers", "num_attention_heads",
                 "head_dim", "intermediate_size", "norm_eps", "rope_theta", "rope_parameters", "sliding_window",
                 "frame_rate", "_frame_rate", "upsample_groups", "vector_quantization_hidden_dimension",
                 "num_key_value_heads"}
        return cls(
            sample_rate=sample_rate,
            channels=int(get("audio_channels", 1)),
            hidden_size=hidden,
            num_filters=int(get("num_filters", 64)),
            num_residual_layers=int(get("num_residual_layers", 1)),
            ratios=ratios,
            kernel_size=int(get("kernel_size", 7)),
            last_kernel_size=int(get("last_kernel_size", 3)),
            residual_kernel_size=int(get("residual_kernel_size", 3)),
            dilation_growth_rate=int(get("dilation_growth_rate", 2)),
            compress=int(get("compress", 2)),
            pad_mode=str(get("pad_mode", "constant")),
            codebook_size=int(get("codebook_size", 2048)),
            codebook_dim=int(codebook_dim),
            num_quantizers=int(get("num_quantizers", NUM_CODEBOOKS)),
            num_semantic_quantizers=int(get("num_semantic_quantizers", 1)),
            num_layers=int(get("num_hidden_layers", 8)),
            num_heads=heads,
            head_dim=int(head_dim),
            intermediate_size=int(get("intermediate_size", 2048)),
            norm_eps=float(get("norm_eps", 1e-5)),
            rope_theta=float(theta),
            sliding_window=int(get("sliding_window", 250) or 250),
            frame_rate=float(frame_rate),
            upsample_groups=int(get("upsample_groups", hidden)),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict:
        """A transformers MimiModel config dict (loadable by `transformers.MimiConfig(**d)`)."""
        return {
            "model_type": "mimi",
            "sampling_rate": self.sample_rate,
            "audio_channels": self.channels,
            "hidden_size": self.hidden_size,
            "num_filters": self.num_filters,
            "num_residual_layers": self.num_residual_layers,
            "upsampling_ratios": list(self.ratios),
            "kernel_size": self.kernel_size,
            "last_kernel_size": self.last_kernel_size,
            "residual_kernel_size": self.residual_kernel_size,
            "dilation_growth_rate": self.dilation_growth_rate,
            "use_causal_conv": True,
            "pad_mode": self.pad_mode,
            "compress": self.compress,
            "trim_right_ratio": 1.0,
            "codebook_size": self.codebook_size,
            "codebook_dim": self.codebook_dim,
            "vector_quantization_hidden_dimension": self.codebook_dim,
            "num_quantizers": self.num_quantizers,
            "num_semantic_quantizers": self.num_semantic_quantizers,
            "use_conv_shortcut": False,
            "upsample_groups": self.upsample_groups,
            "num_hidden_layers": self.num_layers,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "head_dim": self.head_dim,
            "hidden_act": "gelu",
            "norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "frame_rate": self.frame_rate,
        }

    def replace(self, **changes) -> "MimiConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return MimiConfig(**values)

    def as_dict(self) -> dict:
        return asdict(self)
