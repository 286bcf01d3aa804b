"""The reference's audio watermark, when the `silentcipher` package is installed.

Sesame's reference marks every generated clip with SilentCipher (Sony's psychoacoustic audio
watermark) and a key it publishes in its repository — public, so it identifies the output as made
with CSM-1B but proves nothing. As there: resample to 44.1 kHz, encode with message SDR 36 dB,
resample back to the model's 24 kHz. We resample with soxr instead of torchaudio.

Without silentcipher (it needs PyTorch, which this package does not depend on) the audio is left
as it is and a warning says so once per process.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import soxr

# The reference's public key (Sesame csm, watermarking.py). It is not a secret: an application
# that wants a private mark should use its own key and keep it private.
CSM_1B_GH_WATERMARK = (212, 211, 146, 56, 201)
WATERMARK_SAMPLE_RATE = 44_100
MESSAGE_SDR_DB = 36

_NOT_INSTALLED = ("Output is not watermarked: install `silentcipher` (it needs PyTorch) to add the "
                  "reference's CSM-1B audio watermark.")
_lock = threading.Lock()
_model = None
_warned = False


def watermark_available() -> bool:
    """True when silentcipher can be imported."""
    try:
        import silentcipher  # noqa: F401
    except Exception:
        return False
    return True


def _warn_once(message: str) -> None:
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(message, stacklevel=3)


def _load():
    global _model
    with _lock:
        if _model is None:
            import silentcipher

            _model = silentcipher.get_model(model_type="44.1k", device="cpu")
        return _model


def apply_watermark(audio, sample_rate: int, key=CSM_1B_GH_WATERMARK) -> np.ndarray:
    """Mark `audio` (1-D float32) as the reference does; unchanged (and one warning) without
    silentcipher. Returns float32 numpy at `sample_rate`."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return audio
    if not watermark_available():
        _warn_once(_NOT_INSTALLED)
        return audio
    model = _load()
    up = soxr.resample(audio, sample_rate, WATERMARK_SAMPLE_RATE)
    encoded, _ = model.encode_wav(up, WATERMARK_SAMPLE_RATE, list(key), calc_sdr=False,
                                  message_sdr=MESSAGE_SDR_DB)
    encoded = np.asarray(encoded, dtype=np.float32).reshape(-1)
    out_rate = min(WATERMARK_SAMPLE_RATE, sample_rate)
    down = soxr.resample(encoded, WATERMARK_SAMPLE_RATE, out_rate).astype(np.float32)
    # keep the length exactly (resampling twice can be off by a sample)
    if down.shape[0] >= audio.shape[0]:
        return down[: audio.shape[0]]
    return np.pad(down, (0, audio.shape[0] - down.shape[0]))


def warn_streaming_unmarked() -> None:
    """Streamed chunks are not marked (SilentCipher marks whole clips); say so once."""
    if watermark_available():
        _warn_once(
            "Streamed audio is not watermarked (SilentCipher marks whole clips); generate "
            "without stream=True for watermarked output."
        )
    else:
        _warn_once(_NOT_INSTALLED)
