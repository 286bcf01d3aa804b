"""Compact encodings for what a segment carries: Mimi codes and (optionally) audio.

Codes are (frames, 32) integers in 0..2050, stored as little-endian int16, row-major: 64 bytes per
frame (80 ms of audio). Audio is stored as FLAC (24-bit PCM) bytes: lossless for 16-bit sources and
far below the float32 size.
"""

import io

import numpy as np
import soundfile as sf

from .errors import StorageError

CODE_DTYPE = np.dtype("<i2")
MAX_CODE = 2050  # 2048 codebook entries and the few special ids CSM may emit


def codes_to_blob(codes) -> tuple[bytes, int, int]:
    """(frames, codebooks) integer codes -> (blob, frames, codebooks)."""
    array = np.asarray(codes)
    if array.ndim != 2:
        raise StorageError(f"codes must be a (frames, codebooks) array, got shape {array.shape}")
    if array.size and (array.min() < np.iinfo(CODE_DTYPE).min or array.max() > np.iinfo(CODE_DTYPE).max):
        raise StorageError("codes do not fit in int16; they must be Mimi codes (0..2050)")
    frames, codebooks = array.shape
    return np.ascontiguousarray(array, dtype=CODE_DTYPE).tobytes(), frames, codebooks


def blob_to_codes(blob: bytes, frames: int, codebooks: int) -> np.ndarray:
    """Inverse of codes_to_blob: a fresh (frames, codebooks) np.int32 array."""
    flat = np.frombuffer(blob or b"", dtype=CODE_DTYPE)
    if flat.size != frames * codebooks:
        raise StorageError(f"codes blob holds {flat.size} values, expected {frames} x {codebooks}")
    if flat.size and (flat.min() < 0 or flat.max() > MAX_CODE):
        raise StorageError(f"codes blob holds values outside 0..{MAX_CODE}")
    return flat.reshape(frames, codebooks).astype(np.int32)


def audio_to_flac(audio, sample_rate: int) -> bytes:
    """1-D float audio in [-1, 1] -> FLAC bytes (values outside are clipped)."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), int(sample_rate), format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def flac_to_audio(blob: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (1-D float32 audio, sample rate)."""
    samples, sample_rate = sf.read(io.BytesIO(blob), dtype="float32", always_2d=False)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return samples.astype(np.float32, copy=False), int(sample_rate)
