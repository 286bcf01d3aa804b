"""Everything a render would refuse, checked before anything is generated: `check_script`.

`csm podcast --check` and `render` both call it, so the check passes exactly the scripts the
render accepts (for the parts a script decides: its voices, its clips and the room its lines
need). It looks at:

- voices: every `voice:` is a preset or a registered voice;
- clips: every `ref_audio:` decodes, is at most a voice's length, and its transcript is bounded;
- room: each line fits the model's context beside all the pinned voices: its text rows plus the
  frames it may generate (its `max_audio_length_ms`, or the estimate from its text) plus the voice
  prompts' rows must stay within the backbone's positions.

With a loaded model, the room is counted with its tokenizer and its voices. Without one (`--check`
loads no model), the tokenizer and the presets are read from the model's folder when it is on this
machine (nothing is downloaded), else text is counted as one row per UTF-8 byte, an upper bound:
a line that fails that bound is reported as "may not fit".
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from engine.audio import load_audio
from engine.checkpoints import resolve_model
from engine.constants import SAMPLES_PER_FRAME, TINY_MODEL, TOKENIZER_FALLBACK_REPO
from engine.errors import CSMError, InputError
from engine.generator import frame_cap
from engine.model import CSMModel
from engine.text import TextTokenizer
from engine.voices import PRESET_TRANSCRIPTS, VoiceLibrary, check_voice_clip, check_voice_file

from .script import Script, ScriptError

DEFAULT_POSITIONS = 2048
DEFAULT_MAX_AUDIO_LENGTH_MS = 90_000


class _Counter:
    """Rows of text and of voices: exact with a tokenizer, an upper bound without one."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def text_rows(self, speaker: int, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode_segment(speaker, text))
        return len(f"[{speaker}]{text}".encode()) + 2  # BPE never makes more tokens than bytes

    def voice_rows(self, speaker: int, text: str, samples: int) -> int:
        return self.text_rows(speaker, text) + math.ceil(samples / SAMPLES_PER_FRAME) + 1


def check_script(script: Script, model=None, *, model_name: str | None = None) -> list[str]:
    """Raise ScriptError listing every problem a render of `script` would meet (before it
    generates anything). `model`: a loaded model; else `model_name` is looked up on this machine
    only (its tokenizer and presets), or nothing is (an upper-bound count).

    Returns notes on what could not be checked exactly (lines that may not fit by the upper
    bound, presets whose length is not known here); they are not errors."""
    problems, notes = script_problems(script, model, model_name=model_name)
    if problems:
        raise ScriptError(script.source, problems)
    return notes


def script_problems(script: Script, model=None, *, model_name: str | None = None):
    """(problems as (line, message), notes) of check_script, without raising."""
    problems: list[tuple[int | None, str]] = []
    tokenizer, library, positions = None, None, DEFAULT_POSITIONS
    if model is not None:
        tokenizer, library, positions = model.tokenizer, model.voices, model.max_positions
    else:
        folder = _local_folder(model_name)
        tokenizer = _local_tokenizer(folder)
        library = VoiceLibrary(folder)
    counter = _Counter(tokenizer)
    notes: list[str] = []

    voice_rows: dict[int, int] = {}
    for speaker in script.speakers:
        rows = _speaker_voice(speaker, library, counter, problems)
        if rows is not None:
            voice_rows[speaker.id] = rows
        elif speaker.voice is not None and not any(p[0] == speaker.voice_line for p in problems):
            notes.append(f"line {speaker.voice_line}: the preset '{speaker.voice}' is fetched on "
                         "first use; its length is not counted here")
    pinned = sum(voice_rows.values())
    for line in script.lines:
        for where, message in _line_room(script, line, pinned, positions, counter):
            if counter.exact:
                problems.append((where, message))
            else:
                notes.append(f"line {where}: {message}")
    return problems, notes


def _speaker_voice(speaker, library, counter: _Counter, problems) -> int | None:
    """The rows of the speaker's voice prompt (None when unknown or it has none), reporting a
    voice that does not exist or a clip that cannot be used."""
    if speaker.voice is not None:
        known = set(library.names()) if library is not None else set()
        if speaker.voice not in known and speaker.voice not in PRESET_TRANSCRIPTS:
            listing = ", ".join(sorted(known | set(PRESET_TRANSCRIPTS))) or "none"
            problems.append((speaker.voice_line, f"unknown voice '{speaker.voice}' for "
                                                 f"'{speaker.name}'; known voices: {listing}"))
            return None
        if speaker.voice not in known:
            return None  # a preset fetched on first use: its length is not known here
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                voice = library.get(speaker.voice)
        except CSMError as error:
            problems.append((speaker.voice_line, f"voice '{speaker.voice}' of '{speaker.name}': "
                                                 f"{error}"))
            return None
        return counter.voice_rows(speaker.id, voice.text, len(voice.audio))
    if speaker.ref_audio is None:
        return None
    what = f"The clip of '{speaker.name}'"
    try:
        check_voice_file(speaker.ref_audio, what=what)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quality notes come when it renders
            audio = load_audio(speaker.ref_audio)
        check_voice_clip(audio, speaker.ref_text, what=what)
    except CSMError as error:
        problems.append((speaker.voice_line, str(error)))
        return None
    return counter.voice_rows(speaker.id, speaker.ref_text or "", len(audio))


def _line_room(script: Script, line, pinned: int, positions: int, counter: _Counter) -> list:
    speaker = script.speaker(line.speaker)
    try:  # the model's own rule for what is spoken (a Conversation stores and counts that)
        spoken = " ".join(CSMModel._prepare_text(line.text, True).split())
    except InputError as error:
        return [(line.yaml_line, str(error))]
    length_ms = line.max_audio_length_ms or DEFAULT_MAX_AUDIO_LENGTH_MS
    frames = frame_cap(spoken, length_ms)[0]
    text = counter.text_rows(speaker.id, spoken)
    need = pinned + text + frames
    if need <= positions:
        return []
    how = "" if counter.exact else " at most (counted without the model's tokenizer)"
    verdict = "does not fit" if counter.exact else "may not fit"
    return [(line.yaml_line,
             f"the line of '{line.speaker}' {verdict} the model's context: the pinned voices take "
             f"{pinned} positions, its text {text}{how} and the audio it may generate up to "
             f"{frames} frames: {need} > {positions}. Shorten the line, lower its "
             "max_audio_length_ms, or use shorter voice clips")]


def _local_folder(model_name: str | None) -> Path | None:
    """The model's folder if it is on this machine (tiny-random is built; nothing downloads)."""
    if not model_name:
        return None
    if model_name == TINY_MODEL:
        try:
            return resolve_model(model_name)
        except CSMError:
            return None
    path = Path(model_name).expanduser()
    if path.is_dir():
        return path
    try:
        hit = try_to_load_from_cache(model_name, "config.json")
    except Exception:
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def _local_tokenizer(folder: Path | None):
    """The model's tokenizer when it is on this machine, else None."""
    candidates = []
    if folder is not None:
        candidates.append(folder / "tokenizer.json")
    try:
        hit = try_to_load_from_cache(TOKENIZER_FALLBACK_REPO, "tokenizer.json")
        if isinstance(hit, str):
            candidates.append(Path(hit))
    except Exception:
        pass
    for path in candidates:
        if path.is_file():
            try:
                return TextTokenizer.from_file(path)
            except CSMError:
                continue
    return None
