"""Facts shared across the engine, each defined once: the audio format, the frame layout, the default
model names and where the engine keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

# Audio: Mimi works on 24 kHz mono and makes one frame of 32 codes per 1920 samples (80 ms).
SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 1920
FRAME_RATE = SAMPLE_RATE / SAMPLES_PER_FRAME  # 12.5 frames per second
MS_PER_FRAME = 1000 * SAMPLES_PER_FRAME // SAMPLE_RATE  # 80

# A backbone row: 32 audio codes and one text token.
NUM_CODEBOOKS = 32
ROW_WIDTH = NUM_CODEBOOKS + 1

# Models.
DEFAULT_MODEL = "sesame/csm-1b"
TINY_MODEL = "tiny-random"
TOKENIZER_FALLBACK_REPO = "unsloth/Llama-3.2-1B"
CODEC_FALLBACK_REPO = "kyutai/moshiko-pytorch-bf16"
CODEC_FALLBACK_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"

# Quantization (MLX affine): the bit widths and group sizes load_model(quantize=) and `csm convert` take.
QUANTIZE_BITS = (8, 6, 5, 4, 3, 2)
QUANTIZE_GROUP_SIZES = (32, 64, 128)


def csm_home() -> Path:
    """$CSM_HOME, default ~/.cache/csm-mlx: where built models, compiled kernels and user voices live."""
    return Path(os.environ.get("CSM_HOME") or "~/.cache/csm-mlx").expanduser()
