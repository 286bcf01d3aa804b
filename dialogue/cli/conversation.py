"""Conversation commands: `csm say`, `csm replay`, `csm sessions list|show|export|delete|copy`.

A database is an SQLite file or a postgresql:// URL; the commands that only read (replay, sessions
list, show, export) open it read-only: they work on a read-only file and never wait for a writer.

    csm say --db talk.db --session demo --speaker 0 --voice conversational_a "Hi there!"
    csm say --db talk.db --session demo --speaker 1 "Hey! How are you?"
    csm replay talk.db --session demo -o demo.wav
    csm sessions list talk.db
    csm sessions copy talk.db postgresql://csm@db:5432/csm
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from engine.constants import FRAME_RATE
from engine.errors import CSMError

from .database import Database
from .option_types import OptionType, load_for_command, model_option, precision_options

# `csm --help` imports this module: numpy, MLX, storage and the optional extras are imported
# inside the commands that use them.


EXISTING_DB = Database(existing=True)


@contextlib.contextmanager
def _user_errors():
    """The package's own errors become one-line CLI errors (no traceback)."""
    from storage import StorageError

    try:
        yield
    except (CSMError, StorageError) as error:
        raise click.ClickException(str(error)) from None


def _open(db: Path, session: str, model=None, **options):
    from dialogue.conversation import Conversation

    return Conversation.open(db, session=session, model=model, **options)


def _read_only(db):
    """The store of DB opened for reading only (no migration, no write lock, no file created)."""
    from storage import open_store

    return open_store(db, readonly=True)


# -- csm say ------------------------------------------------------------------------------------


@click.command("say")
@click.argument("text", required=False)
@click.option("--db", type=Database(), required=True,
              help="SQLite file of the conversation (created if missing), or a postgresql:// URL.")
@click.option("--session", default="default", show_default=True, help="Session name in the database.")
@click.option("--speaker", type=OptionType("speaker"), default=0, show_default=True,
              help="Who speaks this turn (0, 1, ...).")
@model_option()
@precision_options
@click.option("--voice", help="Pin this preset/registered voice for the speaker (kept for later turns).")
@click.option("--ref_audio", "--ref-audio", "ref_audio", type=click.Path(exists=True, dir_okay=False),
              help="Pin a voice from this clip for the speaker (needs --ref_text).")
@click.option("--ref_text", "--ref-text", "ref_text", help="The words spoken in --ref_audio.")
@click.option("--temperature", type=OptionType("temperature"), default=0.9, show_default=True,
              help="Sampling temperature (0: greedy).")
@click.option("--top_k", "--top-k", "top_k", type=OptionType("top_k"), default=50, show_default=True,
              help="Sample among the k most likely codes (0: all).")
@click.option("--seed", type=OptionType("seed"), help="Sampling seed (default: a random one, stored with the turn).")
@click.option("--max_audio_length_ms", "--max-audio-length-ms", "max_audio_length_ms",
              type=OptionType("max_audio_length_ms"),
              default=90_000, show_default=True, help="Longest audio this turn may have.")
@click.option("--context_limit", "--context-limit", "context_limit", type=click.IntRange(1, 1 << 20), hidden=True,
              help="Backbone positions a prompt may use (default: the model's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write this turn's audio here (WAV or FLAC by extension).")
def say(text, db, session, speaker, model, dtype, quantize, voice, ref_audio, ref_text, temperature, top_k, seed,
        max_audio_length_ms, context_limit, output):
    """Generate SPEAKER saying TEXT as the next turn of a stored conversation.

    The turn hears the earlier turns (their text and audio tokens) and is stored in the database.
    TEXT may also come on stdin.
    """
    if text is None or text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise click.UsageError("give the text to say (an argument or on stdin)")
        text = sys.stdin.read()
    if not text.strip():
        raise click.UsageError("give the text to say (an argument or on stdin)")
    if ref_text is not None and ref_audio is None:
        raise click.UsageError("--ref_text needs --ref_audio, the clip whose words it gives")
    if ref_audio is not None and not (ref_text or "").strip():
        raise click.UsageError("--ref_audio needs --ref_text, the words spoken in the clip")
    if voice is not None and ref_audio is not None:
        raise click.UsageError("give either --voice or --ref_audio with --ref_text, not both")
    with _user_errors():
        # Everything that can be checked is checked before the model loads and before anything
        # is stored: the output, the clip, the voice.
        if output is not None:
            from engine.audio import check_output_path

            check_output_path(output)
        if ref_audio is not None:
            from engine.audio import load_audio
            from engine.voices import check_voice_clip, check_voice_file

            check_voice_file(ref_audio, what="The reference clip")
            check_voice_clip(load_audio(ref_audio), ref_text.strip(), what="The reference clip")
        csm = load_for_command(model, dtype, quantize)
        if voice is not None:
            if csm.voices is None:
                raise click.UsageError(f"this model has no voices, so --voice {voice} is unknown")
            csm.voices.get(voice)  # VoiceError listing the known voices
        conv = _open(db, session, csm, context_limit=context_limit)
        # A failed turn stores nothing: not the turn, not the voice pinned for it, not the session.
        with conv, conv.undo_on_error():
            if voice is not None or ref_audio is not None:
                conv.set_voice(speaker, voice=voice, ref_audio=ref_audio, ref_text=ref_text)
            segment = conv.say(speaker, text, temperature=temperature, top_k=top_k, seed=seed,
                               max_audio_length_ms=max_audio_length_ms)
            turn = conv.turns[-1]
            if output is not None:
                from engine.audio import save_audio

                save_audio(output, segment.audio)
    timing = turn.timing
    click.echo(
        f"{session} turn {turn.index} (speaker {speaker}): {segment.duration or 0:.2f} s audio, "
        f"first audio after {timing.get('time_to_first_audio') or 0:.2f} s, "
        f"prefilled {timing.get('prefill_tokens')} rows (cached {timing.get('cached_tokens')}), "
        f"seed {turn.seed}" + (f" -> {output}" if output is not None else "")
    )


# -- csm replay ---------------------------------------------------------------------------------


@click.command("replay")
@click.argument("db", type=EXISTING_DB)
@click.option("--session", default="default", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Audio file to write (WAV or FLAC by extension).")
@click.option("--pause", type=OptionType("pause"), default=0.0, show_default=True,
              help="Seconds of silence between turns.")
@model_option("Only loaded when a turn has no stored audio and must be decoded from its codes.")
def replay(db, session, output, pause, model):
    """Write every turn of a stored session, in order, to one audio file."""
    _export_audio(db, session, output, pause, model)


# -- csm sessions ... ---------------------------------------------------------------------------


@click.group("sessions")
def sessions():
    """List, inspect, export and delete stored conversations."""


@sessions.command("list")
@click.argument("db", type=EXISTING_DB)
def list_sessions(db):
    """The sessions in DB with their turn counts and lengths."""
    with _user_errors(), _read_only(db) as store:
        rows = store.sessions()
    if not rows:
        click.echo(f"{db}: no sessions")
        return
    width = max(len(r.name) for r in rows)
    for row in rows:
        click.echo(f"{row.name:<{width}}  {row.turns:4d} turns  {row.frames / FRAME_RATE:8.1f} s  "
                   f"{row.voices} voices  created {row.created_at[:19]}")


@sessions.command("show")
@click.argument("db", type=EXISTING_DB)
@click.argument("session", default="default")
def show_session(db, session):
    """The pinned voices and the turns of SESSION."""
    with _user_errors(), _read_only(db) as store:
        info = store.session(session)
        voices = store.voice_prompts(session)
        turns = store.turns(session)
    click.echo(f"session {info.name}: {info.turns} turns, {info.frames / FRAME_RATE:.1f} s, created {info.created_at[:19]}")
    for speaker, voice in voices.items():
        origin = voice.meta.get("voice") or voice.meta.get("ref_audio") or "clip"
        click.echo(f"  voice  speaker {speaker}: {origin} ({voice.frames / FRAME_RATE:.1f} s) {_short(voice.text)}")
    for turn in turns:
        t = turn.timing
        figures = ""
        if turn.source == "generated":
            figures = (f" seed {turn.seed}, ttfa {t.get('time_to_first_audio') or 0:.2f} s, "
                       f"prefill {t.get('prefill_tokens')}/{(t.get('prefill_tokens') or 0) + (t.get('cached_tokens') or 0)}")
        click.echo(f"  {turn.index:4d}  speaker {turn.speaker}  {turn.source:<9} {turn.frames / FRAME_RATE:5.1f} s"
                   f"{figures}  {_short(turn.text)}")


@sessions.command("export")
@click.argument("db", type=EXISTING_DB)
@click.argument("session", default="default")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help=".wav/.flac: the audio of every turn; .json: the transcript with each turn's "
                   "parameters, seed and timings.")
@click.option("--pause", type=OptionType("pause"), default=0.0, show_default=True,
              help="Seconds of silence between turns (audio only).")
@model_option("Only loaded when a turn has no stored audio and must be decoded from its codes.")
def export_session(db, session, output, pause, model):
    """Export SESSION as audio (WAV/FLAC) or as a JSON transcript."""
    if output.suffix.lower() == ".json":
        _export_json(db, session, output)
    else:
        _export_audio(db, session, output, pause, model)


@sessions.command("delete")
@click.argument("db", type=EXISTING_DB)
@click.argument("session")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_session(db, session, yes):
    """Delete SESSION and all its turns from DB."""
    from storage import Store

    with _user_errors(), Store(db) as store:
        info = store.session(session)
        if not yes and not _confirmed(f"Delete session {session!r} ({info.turns} turns)?"):
            raise click.ClickException(f"session {session!r} was not deleted")
        store.delete_session(session)
    click.echo(f"deleted session {session} ({info.turns} turns)")


@sessions.command("copy")
@click.argument("source", type=EXISTING_DB)
@click.argument("target", type=Database())
@click.argument("names", nargs=-1)
@click.option("--replace", is_flag=True, help="Overwrite sessions the target already has.")
@click.option("--skip-existing", "--skip_existing", "skip_existing", is_flag=True,
              help="Leave sessions the target already has as they are.")
@click.option("--voices/--no-voices", default=True, show_default=True,
              help="Also copy the registered voices kept in the database.")
def copy_sessions(source, target, names, replace, skip_existing, voices):
    """Copy sessions NAMES (default: all) from SOURCE to TARGET, exactly as stored.

    Either side may be an SQLite file or a postgresql:// URL (the target is created if needed).
    Each session is copied in one transaction: codes, audio, seeds and timings arrive unchanged.
    """
    from storage import copy_sessions as copy, open_store

    if replace and skip_existing:
        raise click.UsageError("give --replace or --skip-existing, not both")
    if str(source) == str(target):
        raise click.UsageError("SOURCE and TARGET are the same database")
    with _user_errors(), _read_only(source) as src, open_store(target) as dst:
        report = copy(src, dst, list(names) or None, replace=replace,
                      skip_existing=skip_existing, voices=voices)
    for name in report.sessions:
        click.echo(f"copied session {name}")
    for name in report.skipped:
        click.echo(f"skipped session {name} (already in {target})")
    if report.voices:
        click.echo(f"copied voices: {', '.join(report.voices)}")
    click.echo(f"{len(report.sessions)} sessions copied to {target}")


# -- helpers ------------------------------------------------------------------------------------


def _confirmed(question: str) -> bool:
    """Ask on the terminal; with no answer to read (no terminal, stdin closed) say to use --yes."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        raise click.UsageError("there is no answer to read (no terminal on stdin): add --yes to "
                               "confirm") from None


def _export_audio(db: Path, session: str, output: Path, pause: float, model: str) -> None:
    if output.suffix.lower() not in (".wav", ".flac"):
        raise click.UsageError(f"{output}: write .wav or .flac (or .json with `sessions export`)")
    with _user_errors(), _read_only(db) as store:
        store.session(session)  # SessionNotFoundError lists the sessions there are
        with _open(store, session, model) as conv:  # the model loads only if a turn lacks audio
            turns = len(conv)
            path = conv.export(output, pause_s=pause)
    import soundfile as sf

    seconds = sf.info(str(path)).duration
    click.echo(f"{path}: {turns} turns, {seconds:.1f} s")


def _export_json(db: Path, session: str, output: Path) -> None:
    with _user_errors(), _read_only(db) as store:
        info = store.session(session)
        voices = store.voice_prompts(session)
        turns = store.turns(session)
    document = {
        "session": info.name,
        "created_at": info.created_at,
        "meta": info.meta,
        "voices": [
            {"speaker": v.speaker, "text": v.text, "frames": v.frames, "meta": v.meta}
            for v in voices.values()
        ],
        "turns": [
            {
                "index": t.index, "speaker": t.speaker, "text": t.text, "source": t.source,
                "frames": t.frames, "duration_s": round(t.frames / FRAME_RATE, 3), "seed": t.seed,
                "params": t.params, "timing": t.timing, "meta": t.meta,
                "window_start": t.window_start, "created_at": t.created_at,
            }
            for t in turns
        ],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    click.echo(f"{output}: {len(turns)} turns")


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def register(group: click.Group) -> None:
    group.add_command(say)
    group.add_command(replay)
    group.add_command(sessions)
