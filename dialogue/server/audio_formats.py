"""Audio bytes in the formats OpenAI's speech endpoint speaks: whole files and streams.

Every format starts from the same 16-bit samples (`to_pcm16`), so a streamed response carries
exactly the samples of the whole one; only container headers that need the final length differ:

- pcm:  raw signed 16-bit little-endian mono at 24 kHz, no header (what OpenAI sends).
- wav:  16-bit PCM WAV. Streamed, the RIFF and data sizes are unknown and set to 0xFFFFFFFF,
        which readers (libsndfile, ffmpeg, browsers) take as "until the end of the stream".
- opus (Ogg Opus), mp3 (constant bit rate): encoded by libsndfile through `soundfile`. Streamed,
        the bytes go out as the encoder writes them. An Ogg stream needs no final patch; a streamed
        MP3 keeps the encoder's blank first frame where a whole file gets its "Info" tag, so
        decoders play about 70 ms of lead-in silence, as with any MP3 stream.
- flac: libsndfile cannot read back a FLAC stream whose length is unknown, so a streamed FLAC is
        encoded when the audio is complete and sent in one piece (the same bytes as the whole file).
- aac:  not supported (libsndfile has no AAC encoder); requests for it get a clear 400.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from engine.constants import SAMPLE_RATE

MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}
# soundfile (format, subtype) for the formats libsndfile encodes.
_SOUNDFILE_FORMATS = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}
# MP3 at a constant 80 kbit/s, so a streamed MP3 (no final "Info" tag) still has a known length
# per byte. (bitrate_mode needs soundfile >= 0.13; older ones fall back to the encoder default.)
_SOUNDFILE_OPTIONS = {"mp3": {"bitrate_mode": "CONSTANT", "compression_level": 0.5}}
# Formats whose streamed bytes can only be written once the whole audio is known.
_WHOLE_ONLY = {"flac"}
ALL_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # OpenAI's list, in its order


class UnsupportedFormat(ValueError):
    """A response_format this server cannot produce (message says which ones it can)."""


def supported_formats() -> list[str]:
    """The formats this installation can encode (mp3/opus depend on the bundled libsndfile)."""
    available = sf.available_formats()
    formats = ["wav", "pcm"]
    for name, (container, subtype) in _SOUNDFILE_FORMATS.items():
        if container in available and subtype in sf.available_subtypes(container):
            formats.append(name)
    return formats


def check_format(response_format: str) -> str:
    """Return the format if this server can produce it, else raise UnsupportedFormat."""
    fmt = response_format.lower()
    if fmt not in supported_formats():
        hint = ""
        if fmt == "aac":
            hint = " (no AAC encoder is available to this server)"
        elif fmt in _SOUNDFILE_FORMATS:
            hint = " (the installed libsndfile cannot write it; upgrade the soundfile package)"
        raise UnsupportedFormat(
            f"response_format {response_format!r} is not supported{hint}; "
            f"use one of: {', '.join(sorted(supported_formats()))}"
        )
    return fmt


def to_pcm16(audio) -> np.ndarray:
    """Float audio in [-1, 1] (any array-like, 1-D) -> int16 samples, clipped and rounded."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    samples = np.clip(samples, -1.0, 1.0) * 32767.0
    return np.round(samples).astype("<i2")


def wav_header(num_samples: int | None, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte PCM-16 mono WAV header; num_samples=None writes 'unknown' (streaming) sizes."""
    if num_samples is None:
        data_size = riff_size = 0xFFFFFFFF
    else:
        data_size = 2 * num_samples
        riff_size = 36 + data_size
    byte_rate = sample_rate * 2
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, 2, 16)
        + b"data" + struct.pack("<I", data_size)
    )


def encode_audio(audio, response_format: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Whole audio -> the bytes of one complete file in `response_format`."""
    fmt = check_format(response_format)
    pcm = to_pcm16(audio)
    if fmt == "pcm":
        return pcm.tobytes()
    if fmt == "wav":
        return wav_header(len(pcm), sample_rate) + pcm.tobytes()
    buffer = io.BytesIO()
    with _open_encoder(buffer, fmt, sample_rate) as f:
        f.write(pcm)
    return buffer.getvalue()


def _open_encoder(file, fmt: str, sample_rate: int) -> sf.SoundFile:
    container, subtype = _SOUNDFILE_FORMATS[fmt]
    options = _SOUNDFILE_OPTIONS.get(fmt, {})
    try:
        return sf.SoundFile(file, "w", samplerate=sample_rate, channels=1, format=container,
                            subtype=subtype, **options)
    except TypeError:  # soundfile < 0.13 has no bitrate options
        return sf.SoundFile(file, "w", samplerate=sample_rate, channels=1, format=container,
                            subtype=subtype)


class _AppendOnlySink(io.RawIOBase):
    """A seekable in-memory file for libsndfile that remembers how much was already handed out.

    Encoders write forwards and, when closed, seek back to patch their header. Bytes already
    handed out stay as they were: the patch only lands in the memory copy, never on the wire.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = io.BytesIO()
        self._sent = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._buffer.write(data)

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)

    def readinto(self, b) -> int:
        return self._buffer.readinto(b)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._buffer.seek(offset, whence)

    def tell(self) -> int:
        return self._buffer.tell()

    def take_new_bytes(self) -> bytes:
        data = self._buffer.getbuffer()[self._sent:].tobytes()
        self._sent += len(data)
        return data


class StreamEncoder:
    """Encodes audio chunk by chunk into one stream of bytes in `response_format`.

    `encode(chunk)` returns the bytes ready to send now (possibly b"" while an encoder buffers);
    `finish()` returns the rest. The concatenation is one valid file or raw stream.
    `incremental` is False for formats sent in one piece at the end (flac).
    """

    def __init__(self, response_format: str, sample_rate: int = SAMPLE_RATE) -> None:
        self.format = check_format(response_format)
        self.sample_rate = sample_rate
        self.incremental = self.format not in _WHOLE_ONLY
        self._started = False
        self._file: sf.SoundFile | None = None
        self._sink: _AppendOnlySink | None = None
        self._held: list[np.ndarray] = []  # float chunks kept for whole-only formats

    def encode(self, audio) -> bytes:
        if not self.incremental:
            self._held.append(np.asarray(audio, dtype=np.float32).reshape(-1))
            return b""
        pcm = to_pcm16(audio)
        if self.format in ("pcm", "wav"):
            head = b""
            if self.format == "wav" and not self._started:
                head = wav_header(None, self.sample_rate)
            self._started = True
            return head + pcm.tobytes()
        if self._file is None:
            self._sink = _AppendOnlySink()
            self._file = _open_encoder(self._sink, self.format, self.sample_rate)
        self._started = True
        if len(pcm):
            self._file.write(pcm)
        return self._sink.take_new_bytes()

    def finish(self) -> bytes:
        """Bytes still owed after the last chunk (header for an empty WAV, encoder tails)."""
        if not self.incremental:
            held = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            self._held = []
            return encode_audio(held, self.format, self.sample_rate)
        if not self._started:
            return self.encode(np.zeros(0, np.float32)) + self.finish()
        if self._file is None:
            return b""
        self._file.close()
        return self._sink.take_new_bytes()
