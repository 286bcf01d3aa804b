"""Audio in and out: read any common file or array as 24 kHz mono float32, write WAV / FLAC.

`load_audio(source, sample_rate=None)`
    source: a path (str / Path), raw file bytes, a binary file object, or an array.
    Files are read with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...).
    Arrays (numpy or mlx) may be
        1-D (samples,)                                  mono
        2-D (channels, samples) or (samples, channels)  the short axis (at most 8) is channels
    float arrays are taken as samples in [-1, 1]; int16 / int32 / int8 / uint8 PCM is scaled.
    `sample_rate` is the rate of an ARRAY source (default 24000); files carry their own rate.
    Channels are averaged to mono and the result resampled to 24 kHz with soxr (HQ).
    Problems that make cloning worse but still work (a source rate below 16 kHz, samples beyond
    [-1, 1], a silent clip) are reported with `warnings.warn(..., AudioQualityWarning)`.
    Anything unreadable is an `AudioError` that names the source and what works.

`save_audio(path, audio, sample_rate=24000)`
    `.wav` or `.flac` by extension; 16-bit PCM by default (the most widely playable; float input
    is clipped to [-1, 1] first). `subtype="FLOAT"` writes 32-bit float WAV (lossless round trip).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from engine.arrays import to_numpy
from engine.constants import SAMPLE_RATE
from engine.errors import AudioError

MIN_GOOD_RATE = 16_000
READABLE = "WAV, FLAC, OGG (Vorbis/Opus), MP3, AIFF and the other formats libsndfile reads"
WRITABLE = {".wav": "WAV", ".flac": "FLAC"}
_MAX_CHANNELS = 8


class AudioQualityWarning(UserWarning):
    """The audio was usable but something about it will make the result worse."""


def _warn(message: str) -> None:
    warnings.warn(message, AudioQualityWarning, stacklevel=4)  # the caller of load_audio


# ------------------------------------------------------------------------------------ arrays

def _as_numpy(audio) -> np.ndarray:
    try:
        return to_numpy(audio)
    except Exception as exc:
        raise AudioError(f"Cannot use a {type(audio).__name__} as audio samples") from exc


def _to_float(samples: np.ndarray, what: str) -> np.ndarray:
    dtype = samples.dtype
    if np.issubdtype(dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    scales = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}
    if dtype in scales:
        return (samples.astype(np.float64) / scales[dtype]).astype(np.float32)
    if dtype == np.uint8:
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise AudioError(
        f"{what} has samples of type {dtype}; give float samples in [-1, 1] or int16/int32 PCM"
    )


def _channels_last(samples: np.ndarray, what: str) -> np.ndarray:
    """(samples,) / (channels, samples) / (samples, channels) -> (samples, channels)."""
    if samples.ndim > 2:
        squeezed = np.squeeze(samples)
        if squeezed.ndim > 2 or squeezed.ndim == 0:
            raise AudioError(f"{what} has shape {samples.shape}; give (samples,) or (channels, samples)")
        samples = squeezed
    if samples.ndim == 1:
        return samples[:, None]
    if samples.ndim == 0:
        raise AudioError(f"{what} is a single number, not audio samples")
    rows, cols = samples.shape
    if rows <= _MAX_CHANNELS and cols > rows:
        return samples.T
    if cols <= _MAX_CHANNELS:
        return samples
    raise AudioError(
        f"{what} has shape {samples.shape}: cannot tell channels from samples; give (samples,) "
        f"mono or (channels, samples) with at most {_MAX_CHANNELS} channels"
    )


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(samples, channels) -> (samples,) by averaging the channels."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample 1-D float audio with soxr at high quality (no-op when the rates match)."""
    audio = np.asarray(audio, dtype=np.float32)
    if int(from_rate) == int(to_rate):
        return audio
    return np.ascontiguousarray(soxr.resample(audio, int(from_rate), int(to_rate), quality="HQ"), np.float32)


def _finish(samples: np.ndarray, rate: int, target_rate: int, what: str) -> np.ndarray:
    """(samples, channels) float at `rate` -> checked 1-D float32 at `target_rate`."""
    if samples.shape[0] == 0:
        raise AudioError(f"{what} holds no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{what} contains NaN or infinite samples")
    mono = to_mono(samples)
    peak = float(np.max(np.abs(mono)))
    if peak > 1.0:
        _warn(
            f"{what} has samples up to {peak:.2f}, beyond [-1, 1]; scaled down to fit "
            "(float audio should lie in [-1, 1])"
        )
        mono = mono / peak
    elif peak < 1e-4:
        _warn(f"{what} is silent (peak {peak:.1e}); a voice cannot be learnt from silence")
    if rate < MIN_GOOD_RATE:
        _warn(
            f"{what} is sampled at {rate} Hz, below {MIN_GOOD_RATE // 1000} kHz: it is upsampled "
            f"to {target_rate // 1000} kHz, but the high frequencies it lacks stay missing, so "
            "speech cloned from it sounds muffled. Use a 24 kHz (or 16 kHz+) recording if you can."
        )
    return np.ascontiguousarray(resample(mono, rate, target_rate), dtype=np.float32)


# ------------------------------------------------------------------------------------- files

def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"audio file {os.fspath(source)!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"audio data ({len(source)} bytes)"
    return "audio stream"


def _existing_file(source, name: str | None) -> str:
    """The path of an audio file that exists and is not a folder (AudioError otherwise)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise AudioError(f"Audio file not found: {name or os.fspath(source)!r}")
    if path.is_dir():
        raise AudioError(f"{name or os.fspath(source)!r} is a folder, not an audio file")
    return str(path)


def _read_file(source, name: str | None = None):
    what = name or _describe(source)
    if isinstance(source, (str, os.PathLike)):
        target = _existing_file(source, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    else:
        target = source
    try:
        samples, rate = sf.read(target, dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as exc:
        raise AudioError(
            f"Could not read {what}: {_without_path(exc, target)}. Readable formats: {READABLE}."
        ) from exc
    return samples, int(rate), what


def _wav_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV header's data chunk promises, bytes the file holds after it), when the file
    is a RIFF WAV that holds fewer than promised (a truncated download or copy); else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if name == b"data":
                    held = size - handle.tell()
                    if length in (0, 0xFFFFFFFF) or held >= length:  # streamed: size unknown
                        return None
                    return length, held
                handle.seek(length + (length & 1), 1)
    except OSError:
        return None


def probe_audio(source, *, name: str | None = None):
    """What a file holds, from its header only (nothing is decoded): soundfile's info object
    with `.duration` (seconds), `.frames`, `.samplerate`, `.channels`. AudioError when it is not
    readable audio. `name` replaces the path in messages (e.g. "the uploaded clip")."""
    what = name or _describe(source)
    if isinstance(source, (str, os.PathLike)):
        source = _existing_file(source, name)
    try:
        info = sf.info(source)
    except Exception as exc:
        raise AudioError(f"Could not read {what}: {_without_path(exc, source)}. "
                         f"Readable formats: {READABLE}.") from None
    if not info.samplerate or info.samplerate <= 0:
        raise AudioError(f"{what} has no valid sample rate in its header")
    return info


def check_duration(source, max_seconds: float, *, what: str = "The clip", name: str | None = None,
                   hint: str = "") -> float:
    """Refuse a file longer than `max_seconds` from its header, before decoding any of it
    (a small compressed file can hold hours). Returns its duration in seconds."""
    info = probe_audio(source, name=name)
    seconds = float(info.frames) / float(info.samplerate)
    if seconds > max_seconds:
        raise AudioError(f"{what} is {seconds:.1f} s long; at most {max_seconds:g} s is accepted"
                         f"{hint}")
    return seconds


def _without_path(error: Exception, source) -> str:
    """An error's message with the file's path left out (server replies must not show them)."""
    text = str(error)
    if isinstance(source, str) and source:
        text = text.replace(source, "the file")
    return text


def check_output_path(path) -> Path:
    """Check, before any work is done, that audio can be written to `path`: a .wav or .flac name,
    not a folder, and a folder that exists (or can be made) and takes new files. AudioError
    otherwise. Nothing is left behind."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in WRITABLE:
        raise AudioError(f"Cannot write {str(path)!r}: use a .wav or .flac file name "
                         f"(got {path.suffix or 'no extension'!r})")
    if path.is_dir():
        raise AudioError(f"Cannot write {str(path)!r}: it is a folder")
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AudioError(f"Cannot write {str(path)!r}: {str(existing)!r} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".csm-write-check-"):
            pass
    except OSError as error:
        raise AudioError(f"Cannot write {str(path)!r}: {error.strerror or error} in "
                         f"{str(existing)!r}; choose another place for the output") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise AudioError(f"Cannot write {str(path)!r}: the file exists and is read-only")
    return path


def load_audio(source, sample_rate: int | None = None, *, target_rate: int = SAMPLE_RATE,
               name: str | None = None) -> np.ndarray:
    """Audio from a file path, bytes, file object or array -> 1-D float32 at `target_rate` (24 kHz).

    See the module docstring for the accepted shapes, the warnings, and the errors. `name`
    replaces the file's path in warnings and errors (e.g. "the uploaded clip").
    """
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0
    ):
        raise AudioError(f"sample_rate must be a positive int (Hz), got {sample_rate!r}")
    if source is None:
        raise AudioError("No audio given (got None)")
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        samples, rate, what = _read_file(source, name)
        if isinstance(source, (str, os.PathLike)):
            shortfall = _wav_data_shortfall(Path(source).expanduser())
            if shortfall is not None:
                promised, held = shortfall
                _warn(f"{what} is cut short: its header promises {promised} bytes of samples but "
                      f"the file holds {held} ({100 * held / promised:.0f}%); only what is there "
                      "was read. The file may be a partial copy or download.")
        if sample_rate is not None and int(sample_rate) != rate:
            raise AudioError(
                f"{what} is sampled at {rate} Hz but sample_rate={sample_rate} was given; "
                "sample_rate describes arrays only (files carry their own rate)"
            )
        return _finish(samples, rate, target_rate, what)
    what = "audio array"
    samples = _to_float(_channels_last(_as_numpy(source), what), what)
    return _finish(samples, int(sample_rate or SAMPLE_RATE), target_rate, what)


def _pcm_ready(audio, what: str) -> np.ndarray:
    samples = _as_numpy(audio)
    if samples.ndim != 1:
        samples = np.squeeze(samples)
    if samples.ndim != 1:
        raise AudioError(f"{what}: expected 1-D mono samples, got shape {samples.shape}")
    samples = _to_float(samples, what)
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{what} contains NaN or infinite samples")
    return samples


def save_audio(path, audio, sample_rate: int = SAMPLE_RATE, *, subtype: str | None = None) -> Path:
    """Write 1-D audio to `path` as WAV or FLAC (by extension); returns the path.

    16-bit PCM by default, float input clipped to [-1, 1]. `subtype="FLOAT"` keeps 32-bit floats
    (WAV only). Parent folders are created.
    """
    path = Path(path).expanduser()
    fmt = WRITABLE.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(
            f"Cannot write {str(path)!r}: use a .wav or .flac file name "
            f"(got {path.suffix or 'no extension'!r})"
        )
    subtype = (subtype or "PCM_16").upper()
    if fmt == "FLAC" and subtype not in ("PCM_16", "PCM_24"):
        raise AudioError(f"FLAC stores 16- or 24-bit PCM, not {subtype}; write a .wav for float")
    samples = _pcm_ready(audio, f"audio for {path.name}")
    if subtype.startswith("PCM"):
        samples = np.clip(samples, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, int(sample_rate), format=fmt, subtype=subtype)
    return path
