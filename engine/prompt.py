"""Segments -> prompt rows: what the CSM backbone reads.

A row ("frame") has 33 columns: 0..31 one Mimi code per codebook, 32 a text token. The mask says
which columns count; a row's embedding is the sum of its masked columns' embeddings.

    text row   tokens [0, ..., 0, tok]      mask [F, ..., F, T]
    audio row  tokens [c0, ..., c31, 0]     mask [T, ..., T, F]
    EOS row    tokens [0, ..., 0, 0]        mask [T, ..., T, F]   (the all-zero frame)

Reference prompt (Sesame's generator):

    for each context segment:  text rows of BOS "[speaker]text" EOS
                               audio rows of its codes
                               one EOS row
    then the new line:         text rows of BOS "[speaker]text" EOS

Voice-match prompt (issue 4, `voice_match=True`): the model *continues* a reference clip.

    for each context segment:  as above (text rows, audio rows, EOS row)
    then one text segment:     text rows of BOS "[speaker]{ref_text} {text}" EOS
    then the reference audio:  audio rows of its codes, WITHOUT the EOS row

so the frames generated next are the continuation of the reference speech, i.e. the new text in
the reference voice. The speaker tag is the new line's speaker (by default the reference's).

Every segment's rows depend on that segment alone, and a prompt is the plain concatenation of its
parts, so the prompt of a longer conversation starts with the rows of a shorter one (the generator's
KV-cache reuse relies on this). Rows of a generated frame fed back to the backbone equal
`audio_rows(codes, eos=False)` of those frames, so a stored turn re-enters a later prompt with the
same rows that sit in the cache (provided its text is the text that was spoken).

Arrays: tokens np.int32 (T, 33), mask np.bool_ (T, 33).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from engine.constants import ROW_WIDTH, SAMPLES_PER_FRAME
from engine.errors import InputError
from engine.option_checks import check_option
from engine.segment import NUM_CODEBOOKS, Segment

TEXT_COLUMN = NUM_CODEBOOKS  # 32

Rows = tuple[np.ndarray, np.ndarray]  # tokens (T, 33) int32, mask (T, 33) bool


def empty_rows() -> Rows:
    """No rows: tokens (0, 33) int32, mask (0, 33) bool."""
    return np.zeros((0, ROW_WIDTH), np.int32), np.zeros((0, ROW_WIDTH), np.bool_)


def text_rows(tokens: Sequence[int]) -> Rows:
    """One row per text token: the token in column 32, masked on there only."""
    ids = np.asarray(list(tokens), dtype=np.int64).reshape(-1)
    if ids.size and ids.min() < 0:
        raise InputError(f"text token ids must be non-negative, got {int(ids.min())}")
    rows = np.zeros((ids.size, ROW_WIDTH), np.int32)  # (T, 33)
    mask = np.zeros((ids.size, ROW_WIDTH), np.bool_)
    rows[:, TEXT_COLUMN] = ids
    mask[:, TEXT_COLUMN] = True
    return rows, mask


def audio_rows(codes, eos: bool = True) -> Rows:
    """One row per Mimi frame of `codes` (frames, 32), plus the all-zero EOS row when `eos`."""
    codes = Segment(0, "", codes=codes).codes  # validates shape (F, 32) and range, as int32
    frames = codes.shape[0] + (1 if eos else 0)
    rows = np.zeros((frames, ROW_WIDTH), np.int32)  # (F[+1], 33)
    mask = np.zeros((frames, ROW_WIDTH), np.bool_)
    rows[: codes.shape[0], :NUM_CODEBOOKS] = codes
    mask[:, :NUM_CODEBOOKS] = True  # the EOS row is masked on too: it embeds the zero codes
    return rows, mask


def concat_rows(parts: Iterable[Rows]) -> Rows:
    """Concatenate (tokens, mask) pairs in order."""
    parts = list(parts)
    if not parts:
        return empty_rows()
    tokens = np.concatenate([p[0] for p in parts], axis=0).astype(np.int32, copy=False)
    mask = np.concatenate([p[1] for p in parts], axis=0).astype(np.bool_, copy=False)
    return tokens, mask


def _require_codes(segment: Segment, role: str) -> None:
    if segment.codes is None and segment.audio is not None:
        raise InputError(
            f"The {role} {segment!r} has audio but no Mimi codes. Encode it first "
            "(codes = model.encode_audio(segment.audio); segment = segment.with_codes(codes)); "
            "prompts are built from codes, not samples."
        )


def _check_segment(segment) -> Segment:
    if not isinstance(segment, Segment):
        raise InputError(f"context entries must be engine Segment objects, got {type(segment).__name__}")
    return segment


def segment_rows(segment: Segment, tokenizer) -> Rows:
    """Rows of one context segment: its text rows, then its audio rows and EOS row.

    A segment with neither audio nor codes contributes its text rows only. A segment with audio
    but no codes is an error (the model layer encodes audio; see `Segment.with_codes`).
    """
    _check_segment(segment)
    _require_codes(segment, "context segment")
    text = text_rows(tokenizer.encode_segment(segment.speaker, segment.text))
    if segment.codes is None:
        return text
    return concat_rows([text, audio_rows(segment.codes, eos=True)])


def count_rows(segment: Segment, tokenizer) -> int:
    """Backbone positions `segment_rows(segment)` takes.

    Works before encoding too: a segment with audio but no codes is counted as
    ceil(samples / 1920) frames (what Mimi makes of it) plus the EOS row.
    """
    _check_segment(segment)
    n = len(tokenizer.encode_segment(segment.speaker, segment.text))
    if segment.codes is not None:
        return n + segment.codes.shape[0] + 1
    if segment.audio is not None:
        return n + math.ceil(segment.audio.shape[0] / SAMPLES_PER_FRAME) + 1
    return n


def _check_new_text(speaker, text) -> None:
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InputError("The text to speak is empty; give at least one word.")
    check_option("speaker", speaker)


def build_prompt(context: Sequence[Segment], speaker, text=None, tokenizer=None) -> Rows:
    """The reference prompt: every context segment (text, audio, EOS), then the new line's text.

    Call as `build_prompt(context, speaker, text, tokenizer)`, or with a text-only segment for the
    new line: `build_prompt(context, Segment(speaker, text), tokenizer)`.
    """
    if isinstance(speaker, Segment):  # build_prompt(context, new_segment, tokenizer)
        new, tokenizer = speaker, text
        speaker, text = new.speaker, new.text
    if tokenizer is None:
        raise InputError("build_prompt needs a tokenizer")
    _check_new_text(speaker, text)
    parts = [segment_rows(seg, tokenizer) for seg in context]
    parts.append(text_rows(tokenizer.encode_segment(int(speaker), text)))
    return concat_rows(parts)


def voice_match_text(ref_text: str, text: str) -> str:
    """The one text segment of a voice-match prompt: reference transcript, a space, new text."""
    return f"{ref_text.strip()} {text.strip()}".strip()


def build_voice_match_prompt(
    context: Sequence[Segment],
    reference: Segment,
    text: str,
    tokenizer,
    speaker: int | None = None,
) -> Rows:
    """The voice-match prompt: context segments as usual, then ONE text segment
    "[speaker]{reference.text} {text}", then the reference's audio rows WITHOUT the EOS row.

    `reference` must carry codes (and a transcript); `speaker` defaults to `reference.speaker`.
    Generation continues the reference clip, speaking `text` in its voice.
    """
    _check_segment(reference)
    speaker = reference.speaker if speaker is None else speaker
    _check_new_text(speaker, text)
    _require_codes(reference, "voice reference")
    if reference.codes is None:
        raise InputError(
            "The voice reference has no audio; voice matching continues a reference clip, "
            "so it needs the clip's codes (or use the reference prompt instead)."
        )
    if not reference.text.strip():
        raise InputError(
            "The voice reference has no transcript (ref_text). Voice matching reads the "
            "transcript and the new text as one line; give the words spoken in the clip."
        )
    parts = [segment_rows(seg, tokenizer) for seg in context]
    joined = voice_match_text(reference.text, text)
    parts.append(text_rows(tokenizer.encode_segment(int(speaker), joined)))
    parts.append(audio_rows(reference.codes, eos=False))
    return concat_rows(parts)
