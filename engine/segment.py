"""`Segment`: one utterance of a conversation — who spoke, what they said, and how it sounded.

A segment carries its text and, once it has been heard or generated, its audio (1-D float32 at
24 kHz) and/or its Mimi codes (frames x 32, int32). The prompt builder needs the codes of every
context segment; a segment that has audio but no codes must be encoded by the model layer first
(`model.encode_audio`), then `segment.with_codes(codes)`.

Arrays are normalised on construction (numpy, the right dtype and shape); the object is frozen, so
a segment can be shared between turns, caches and threads without copies. Equality is identity
(arrays do not compare as booleans).
"""

from __future__ import annotations

import attrs
import numpy as np

from engine.arrays import to_numpy
from engine.constants import FRAME_RATE, NUM_CODEBOOKS, SAMPLE_RATE
from engine.errors import InputError
from engine.option_checks import check_option

AUDIO_VOCAB_SIZE = 2051  # ids 0..2050 exist in CSM's audio vocabulary (2048..2050 are not decodable)


def _to_numpy(value, what: str) -> np.ndarray:
    try:
        return to_numpy(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise InputError(f"Segment {what} must be an array, got {type(value).__name__}") from exc


def _check_speaker(instance, attribute, value) -> None:
    check_option("speaker", value, "Segment speaker")


def _speaker(value):
    # numpy ints become plain ints so `[{speaker}]` formats the same way everywhere
    return int(value) if isinstance(value, np.integer) else value


def _check_text(instance, attribute, value) -> None:
    if not isinstance(value, str):
        raise InputError(f"Segment text must be a str, got {type(value).__name__}")


def _audio(value) -> np.ndarray | None:
    """Any array-like -> 1-D float32 numpy (leading/trailing singleton axes are dropped)."""
    if value is None:
        return None
    audio = _to_numpy(value, "audio")
    if audio.ndim != 1:
        squeezed = np.squeeze(audio)
        if squeezed.ndim != 1:
            raise InputError(
                f"Segment audio must be mono 1-D samples at 24 kHz, got shape {audio.shape}; "
                "use engine.audio.load_audio() to downmix and resample"
            )
        audio = squeezed
    if not np.issubdtype(audio.dtype, np.floating):
        raise InputError(
            f"Segment audio must be float samples in [-1, 1], got dtype {audio.dtype}; "
            "use engine.audio.load_audio() to convert integer PCM"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def _codes(value) -> np.ndarray | None:
    """Any array-like -> int32 (frames, 32), values checked against the audio vocabulary."""
    if value is None:
        return None
    codes = _to_numpy(value, "codes")
    if codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS:
        hint = ""
        if codes.ndim == 2 and codes.shape[0] == NUM_CODEBOOKS:
            hint = " (this looks like Mimi's (codebooks, frames) layout: pass codes.T)"
        raise InputError(
            f"Segment codes must have shape (frames, {NUM_CODEBOOKS}), got {codes.shape}{hint}"
        )
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        if not np.all(np.equal(np.mod(codes, 1), 0)):
            raise InputError(f"Segment codes must be integers, got dtype {codes.dtype}")
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    if codes.size and (codes.min() < 0 or codes.max() >= AUDIO_VOCAB_SIZE):
        raise InputError(
            f"Segment codes must lie in 0..{AUDIO_VOCAB_SIZE - 1}, "
            f"got values in {int(codes.min())}..{int(codes.max())}"
        )
    return codes


def _preview(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.frozen(eq=False, repr=False)
class Segment:
    """One utterance: `speaker` id, `text`, optional `audio` (1-D float32, 24 kHz) and `codes`
    ((frames, 32) int32 Mimi codes)."""

    speaker: int = attrs.field(converter=_speaker, validator=_check_speaker)
    text: str = attrs.field(validator=_check_text)
    audio: np.ndarray | None = attrs.field(default=None, converter=_audio)
    codes: np.ndarray | None = attrs.field(default=None, converter=_codes)

    @property
    def num_frames(self) -> int | None:
        """Mimi frames of this segment's codes (None when it has none)."""
        return None if self.codes is None else int(self.codes.shape[0])

    @property
    def duration(self) -> float | None:
        """Seconds of speech: from the audio if present, else from the codes (80 ms a frame)."""
        if self.audio is not None:
            return self.audio.shape[0] / SAMPLE_RATE
        if self.codes is not None:
            return self.codes.shape[0] / FRAME_RATE
        return None

    @property
    def has_speech(self) -> bool:
        """True when the segment carries audio or codes (not just text)."""
        return self.audio is not None or self.codes is not None

    def with_codes(self, codes) -> "Segment":
        """A copy of this segment with `codes` ((frames, 32)) set — e.g. after Mimi encoding."""
        return attrs.evolve(self, codes=codes)

    def with_audio(self, audio) -> "Segment":
        """A copy of this segment with `audio` (1-D float32 at 24 kHz) set."""
        return attrs.evolve(self, audio=audio)

    def __repr__(self) -> str:
        parts = [f"speaker={self.speaker}", f"text={_preview(self.text)!r}"]
        if self.audio is not None:
            parts.append(f"audio={self.audio.shape[0] / SAMPLE_RATE:.2f}s")
        if self.codes is not None:
            parts.append(f"codes={self.codes.shape[0]} frames")
        return f"Segment({', '.join(parts)})"
