"""The learnt resampling between the SEANet rate (25 Hz) and the codec frame rate (12.5 Hz).

Down: a causal conv, kernel 2*stride, stride `stride`, no bias, left padding in "replicate" mode
(copies of the first step) and, at the very end, replicate padding to complete the last window.
Up: a causal transposed conv, kernel 2*stride, no bias, depthwise (one filter per channel: the
`upsample_groups = hidden_size` of the released codec), the last `stride` outputs trimmed.
"""

from __future__ import annotations

from .config import MimiConfig
from .conv import CausalConv1d, CausalConvTranspose1d


def make_downsample(cfg: MimiConfig) -> CausalConv1d:
    s = cfg.latent_stride
    return CausalConv1d(cfg.hidden_size, cfg.hidden_size, 2 * s, stride=s, bias=False, pad_mode="replicate")


def make_upsample(cfg: MimiConfig) -> CausalConvTranspose1d:
    s = cfg.latent_stride
    return CausalConvTranspose1d(cfg.hidden_size, cfg.hidden_size, 2 * s, s, groups=cfg.upsample_groups, bias=False)
