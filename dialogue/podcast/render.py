"""Rendering a script: line by line into a Conversation in SQLite, then one WAV and its chapters.

Each stored turn carries the identity of the line it renders (`meta["podcast"]`: the line's index
and a hash of everything that shapes its audio: speaker, text, options, seed, the voices). On the
next run the turns whose identity still matches the script are kept, the first that does not (and
every turn after it) is dropped, and rendering goes on from there. So a render that stopped
(Ctrl-C, a crash) continues where it stopped, and an edited line is rendered again with the lines
after it, which hear it as context.

Each line's seed comes from the show seed and the line's index, so a resumed render gives the same
audio as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from tqdm.auto import tqdm

from dialogue.conversation import Conversation
from engine import load_model
from engine.constants import SAMPLE_RATE
from engine.errors import ContextTooLongError, CSMError

from .mix import Chapter, chapters_path_for, mix, write_chapters
from .preflight import check_script
from .script import Line, Script, ScriptError, Speaker

__all__ = ["RenderResult", "line_seed", "render"]

META_KEY = "podcast"


@dataclass
class RenderResult:
    output: Path  # the WAV
    chapters_path: Path  # the chapters JSON beside it
    db: Path
    session: str
    seed: int  # the show seed used (each line's own seed is derived from it)
    audio: np.ndarray  # the whole show, float32 at `sample_rate`
    sample_rate: int
    chapters: list[Chapter]
    rendered: list[int] = field(default_factory=list)  # 1-based numbers of the lines generated now
    reused: int = 0  # lines taken as they were from the database

    @property
    def duration(self) -> float:
        return self.audio.shape[0] / self.sample_rate


def line_seed(show_seed: int, index: int) -> int:
    """The seed of line `index` (0-based): a hash of the show seed and the index, below 2**31."""
    digest = hashlib.sha256(f"csm-podcast:{show_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def render(
    script: Script,
    model,
    db: str | Path | None = None,
    output: str | Path = "show.wav",
    *,
    session: str | None = None,
    restart: bool = False,
    progress: bool = True,
    on_line: Callable[[Line, object], None] | None = None,
) -> RenderResult:
    """Render `script` with `model` (a loaded model, or a name for `engine.load_model`).

    db: the SQLite file of the conversation (default: beside the output, show.wav -> show.db);
    session: its session name (default: the output's stem). `restart=True` drops what is stored
    and renders every line. `on_line(line, segment)` is called after each line is generated and
    stored. Returns a RenderResult; the WAV and the chapters JSON are written beside each other.
    """
    output = Path(output)
    db = Path(db) if db is not None else output.with_suffix(".db")
    session = session or output.stem
    if isinstance(model, (str, Path)):
        model = load_model(str(model))
    check_script(script, model)  # what `csm podcast --check` checks, before anything is stored
    voices = _check_voices(script, model)

    with Conversation.open(db, session=session, model=model) as conv:
        show_seed = _show_seed(script, conv, restart)
        identities = [_line_identity(script, line, show_seed, voices, _model_identity(model))
                      for line in script.lines]
        keep = 0 if restart else _matching_turns(conv, identities)
        if len(conv.turns) > keep:
            conv.truncate(keep)
        _pin_voices(conv, script)
        _check_lines_fit(conv, script, keep)
        rendered = _render_lines(conv, script, identities, keep, show_seed, progress, on_line)

    # Mixed from what the database holds, so a render done in one go and one resumed in several
    # runs give the same file (lines generated in this run are read back like the earlier ones).
    with Conversation.open(db, session=session, model=model) as stored:
        clips = [_clip(segment, model) for segment in stored.segments]
    audio, chapters = mix(clips, list(script.lines), SAMPLE_RATE)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_wav(output, audio, SAMPLE_RATE)
    chapters_path = write_chapters(chapters_path_for(output), chapters)
    return RenderResult(
        output=output,
        chapters_path=chapters_path,
        db=db,
        session=session,
        seed=show_seed,
        audio=audio,
        sample_rate=SAMPLE_RATE,
        chapters=chapters,
        rendered=rendered,
        reused=keep,
    )


# --- before generating anything ----------------------------------------------------------------


def _check_voices(script: Script, model) -> list[dict]:
    """Every voice exists (ScriptError with their lines otherwise); returns each speaker's voice identity."""
    known = _voice_names(model)
    problems: list[tuple[int | None, str]] = []
    for speaker in script.speakers:
        if speaker.voice is not None and known is not None and speaker.voice not in known:
            problems.append((speaker.voice_line, f"unknown voice '{speaker.voice}' for '{speaker.name}'; "
                                                 f"known voices: {', '.join(sorted(known)) or 'none'}"))
        if speaker.ref_audio is not None and not speaker.ref_audio.is_file():
            problems.append((speaker.voice_line, f"voice file not found for '{speaker.name}': {speaker.ref_audio}"))
    if problems:
        raise ScriptError(script.source, problems)
    return [_voice_identity(speaker) for speaker in script.speakers]


def _voice_names(model) -> set[str] | None:
    return None if model.voices is None else set(model.voices.names())


def _voice_identity(speaker: Speaker) -> dict:
    identity = {"id": speaker.id, "voice": speaker.voice, "ref_text": speaker.ref_text}
    if speaker.ref_audio is not None:
        identity["ref_audio_sha256"] = hashlib.sha256(speaker.ref_audio.read_bytes()).hexdigest()
    return identity


def _show_seed(script: Script, conv, restart: bool) -> int:
    """The script's seed; else the one this session was rendered with; else a new random one."""
    if script.seed is not None:
        return script.seed
    if not restart:
        for turn in conv.turns[:1]:
            stored = (turn.meta or {}).get(META_KEY, {}).get("show_seed")
            if isinstance(stored, int):
                return stored
    return secrets.randbelow(2**31)


def _effective_seed(line: Line, show_seed: int) -> int:
    return line.seed if line.seed is not None else line_seed(show_seed, line.index)


def _model_identity(model) -> str | None:
    """Which model renders: its resolved folder (else its name), so a switch renders again."""
    if model.path is not None:
        return str(Path(model.path).resolve())
    return model.name or None


def _line_identity(script: Script, line: Line, show_seed: int, voices: list[dict], model: str | None) -> dict:
    """What is stored with the line's turn: its index and a hash of what shapes its audio.

    The pause is left out: changing it only changes the mix, not the speech.
    """
    shaping = {
        "model": model,
        "speaker": script.speaker(line.speaker).id,
        "text": line.text,
        "temperature": line.temperature,
        "top_k": line.top_k,
        "seed": _effective_seed(line, show_seed),
        "max_audio_length_ms": line.max_audio_length_ms,
        "voices": voices,
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    return {"index": line.index, "hash": digest, "show_seed": show_seed}


def _matching_turns(conv, identities: list[dict]) -> int:
    """How many stored turns, from the first, render the script's lines as they are now."""
    count = 0
    for turn, identity in zip(conv.turns, identities):
        stored = (turn.meta or {}).get(META_KEY) or {}
        if stored.get("index") != identity["index"] or stored.get("hash") != identity["hash"]:
            break
        count += 1
    return count


def _pin_voices(conv, script: Script) -> None:
    """The session's pinned voices become exactly the script's (same voice again: no change)."""
    for speaker in script.speakers:
        if speaker.voice is not None:
            conv.set_voice(speaker.id, voice=speaker.voice)
        elif speaker.ref_audio is not None:
            conv.set_voice(speaker.id, ref_audio=str(speaker.ref_audio), ref_text=speaker.ref_text)
    voiced = {s.id for s in script.speakers if s.voice is not None or s.ref_audio is not None}
    for speaker_id in set(conv.voices) - voiced:
        conv.set_voice(speaker_id)  # unpin: a speaker without a voice, or one no longer in the show


def _check_lines_fit(conv, script: Script, start: int) -> None:
    """Every line still to render fits the model's context (beside the pinned voices); else a
    ScriptError naming each line that does not, before any of them is generated."""
    problems: list[tuple[int | None, str]] = []
    for line in script.lines[start:]:
        try:
            conv.plan(script.speaker(line.speaker).id, line.text, line.max_audio_length_ms)
        except ContextTooLongError as error:
            problems.append((line.yaml_line, str(error)))
    if problems:
        raise ScriptError(script.source, problems)


# --- generating ----------------------------------------------------------------------------------


def _render_lines(conv, script: Script, identities, start: int, show_seed: int, progress: bool, on_line) -> list[int]:
    rendered: list[int] = []
    lines = script.lines
    with tqdm(total=len(lines), initial=start, unit="line", desc=script.title, disable=not progress) as bar:
        for line in lines[start:]:
            speaker = script.speaker(line.speaker)
            bar.set_postfix_str(f"{line.speaker}: {line.text[:30]}")
            try:
                segment = conv.say(
                    speaker.id,
                    line.text,
                    temperature=line.temperature,
                    top_k=line.top_k,
                    seed=_effective_seed(line, show_seed),
                    max_audio_length_ms=line.max_audio_length_ms,
                    meta={META_KEY: identities[line.index]},
                )
            except CSMError as error:
                located = _at_line(error, script, line)
                if located is error:
                    raise
                raise located from error
            rendered.append(line.number)
            bar.update(1)
            if on_line is not None:
                on_line(line, segment)
    return rendered


def _at_line(error: CSMError, script: Script, line: Line) -> CSMError:
    """The same kind of error, its message prefixed with the script line it came from."""
    try:
        return type(error)(f"{script.source} line {line.yaml_line} ({line.speaker}): {error}")
    except TypeError:  # an error type with its own constructor: keep it as it is
        return error


# --- writing -------------------------------------------------------------------------------------


def _clip(segment, model) -> np.ndarray:
    """A stored line's audio (decoded from its codes when the store kept only those)."""
    if segment.audio is not None:
        return np.asarray(segment.audio, dtype=np.float32)
    return np.asarray(model.decode(segment.codes), dtype=np.float32).reshape(-1)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Written beside the target, then renamed over it, so a crash never leaves half a file."""
    temporary = path.with_name(path.name + ".partial")
    soundfile.write(str(temporary), audio, sample_rate, format="WAV", subtype="PCM_16")
    os.replace(temporary, path)
