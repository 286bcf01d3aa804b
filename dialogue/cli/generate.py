"""`csm generate` (speak one line, clone a voice, stream, play) and `csm voices` (list / add voices)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine.constants import SAMPLE_RATE
from engine.errors import CSMError

from .option_types import OptionType, load_for_command, model_option, precision_options

# `csm --help` imports this module: numpy, MLX, storage and the optional extras are imported
# inside the commands that use them.


NO_VOICE = "none"


class _FrameBar:
    """A tqdm bar per utterance, fed by generate(on_frame=...): frames so far out of the frame cap
    (the cap is an upper bound; the bar completes early when speech ends)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.piece = 0

    def __call__(self, frames: int, cap: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if self.bar is None or frames < self.bar.n:
            self.close()
            self.piece += 1
            self.bar = tqdm(total=cap, unit="frame", desc=f"generating #{self.piece}", leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(frames - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Player:
    """Plays audio chunks as they arrive through sounddevice. Opened before any work is done.
    Without a sound device: when the audio is also written to a file (-o), a warning and no
    playing; when playing was the only output, a clear error at once, rather than generating
    audio nobody hears."""

    def __init__(self, sample_rate: int, only_output: bool):
        self.stream = None
        try:
            import sounddevice
        except Exception as error:  # ImportError, or OSError when PortAudio is missing
            self._unavailable(f"--play needs the `sounddevice` package and PortAudio ({error}): "
                              "pip install 'csm-mlx-engine[play]'", only_output)
            return
        try:
            self.stream = sounddevice.OutputStream(samplerate=sample_rate, channels=1, dtype="float32")
            self.stream.start()
        except Exception as error:
            self.stream = None
            self._unavailable(f"--play: cannot open a sound device ({error})", only_output)

    @staticmethod
    def _unavailable(reason: str, only_output: bool) -> None:
        if only_output:
            raise click.ClickException(f"{reason}. Nothing was generated; write the audio to a "
                                       "file with -o out.wav instead.")
        click.echo(f"warning: {reason}. Not playing; the audio is still written.", err=True)

    def play(self, audio) -> None:
        if self.stream is not None and len(audio):
            self.stream.write(audio.reshape(-1, 1))

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()  # waits for what is queued to finish playing
            self.stream.close()


def _read_text(text: str | None) -> str:
    if text is not None:
        return text
    if sys.stdin is None or sys.stdin.isatty():
        raise click.UsageError("give the text with --text \"...\" or on standard input")
    return sys.stdin.read()


@click.command("generate")
@model_option("Model: a Hugging Face id, a local folder, or tiny-random (offline, noise).")
@precision_options
@click.option("--text", help="What to say (default: read from standard input).")
@click.option("--voice", default="conversational_a", show_default=True,
              help="Voice preset or registered voice ('csm voices' lists them); 'none' for no voice prompt.")
@click.option("--ref_audio", "--ref-audio", "ref_audio", type=click.Path(dir_okay=False),
              help="Clip of the voice to clone (WAV/FLAC/...; 8-12 s works best). Needs --ref_text.")
@click.option("--ref_text", "--ref-text", "ref_text", help="Transcript of --ref_audio.")
@click.option("--speaker", default=0, show_default=True, type=OptionType("speaker"), help="Speaker id of the line.")
@click.option("--max_audio_length_ms", "--max-audio-length-ms", "max_audio_length_ms", default=90_000.0,
              show_default=True, type=OptionType("max_audio_length_ms"), help="Longest audio per utterance.")
@click.option("--temperature", default=0.9, show_default=True, type=OptionType("temperature"),
              help="Sampling temperature (0: greedy).")
@click.option("--top_k", "--top-k", "top_k", default=50, show_default=True, type=OptionType("top_k"),
              help="Sample among the k most likely codes (0: all).")
@click.option("--seed", type=OptionType("seed"), help="Random seed (default: drawn and printed).")
@click.option("--stream", is_flag=True, help="Generate in chunks (played / written as they come).")
@click.option("--streaming_interval", "--streaming-interval", "streaming_interval", default=0.5,
              show_default=True, type=OptionType("streaming_interval"), help="Seconds of audio per streamed chunk.")
@click.option("--voice_match/--no-voice_match", "--voice-match/--no-voice-match", default=True,
              show_default=True, help="Continue the voice clip (on) or give it as a context turn (off).")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Read numbers, money, times and abbreviations aloud.")
@click.option("--play", is_flag=True, help="Play through the sound card (needs sounddevice).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Audio file to write, WAV or FLAC by extension (default: output.wav unless --play).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(model, dtype, quantize, text, voice, ref_audio, ref_text, speaker, max_audio_length_ms, temperature, top_k,
             seed, stream, streaming_interval, voice_match, normalize, play, output, quiet) -> None:
    """Speak a line of text with CSM and write it to a WAV/FLAC file (and/or play it)."""
    text = _read_text(text)
    if output is None and not play:
        output = Path("output.wav")
    if output is not None and output.suffix.lower() not in (".wav", ".flac"):
        raise click.UsageError(f"--output must end in .wav or .flac, got {output.name}")
    if ref_text is not None and ref_audio is None:
        raise click.UsageError("--ref_text needs --ref_audio, the clip whose words it gives")
    voice = None if voice is not None and voice.lower() == NO_VOICE else voice

    import numpy as np

    if output is not None:  # before any work: a place that cannot be written fails now
        from engine.audio import check_output_path

        try:
            check_output_path(output)
        except CSMError as error:
            raise click.ClickException(str(error)) from None
    bar = _FrameBar(enabled=not quiet)
    player = _Player(SAMPLE_RATE, only_output=output is None) if play else None  # before any work
    pieces: list[np.ndarray] = []
    results = []
    try:
        csm = load_for_command(model, dtype, quantize)
        for result in csm.generate(
            text=text, voice=voice, speaker=speaker, ref_audio=ref_audio, ref_text=ref_text,
            stream=stream, streaming_interval=streaming_interval,
            max_audio_length_ms=max_audio_length_ms, voice_match=voice_match,
            temperature=temperature, top_k=top_k, seed=seed, normalize=normalize, on_frame=bar,
        ):
            audio = np.array(result.audio, dtype=np.float32)
            pieces.append(audio)
            if player is not None:
                player.play(audio)
            results.append(result)
            if result.is_final:
                bar.close()
    except KeyboardInterrupt:
        bar.close()
        click.echo("\nStopped.", err=True)
        raise SystemExit(130) from None
    except CSMError as error:
        bar.close()
        raise click.ClickException(str(error)) from None
    finally:
        if player is not None:
            player.close()

    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    sample_rate = results[0].sample_rate if results else SAMPLE_RATE
    if output is not None:
        from engine.audio import save_audio

        try:
            save_audio(output, audio, sample_rate)
        except CSMError as error:
            raise click.ClickException(str(error)) from None
    click.echo(_summary(results, audio, sample_rate, output))


def _summary(results, audio, sample_rate: int, output: Path | None) -> str:
    finals = [r for r in results if r.is_final]
    duration = len(audio) / sample_rate
    compute = sum(r.compute_seconds for r in finals)
    frames = sum(len(r.frames) for r in finals)
    rtf = compute / duration if duration else 0.0
    fps = frames / compute if compute else 0.0
    where = f"{output}: " if output is not None else ""
    pieces = f" in {len(finals)} pieces" if len(finals) > 1 else ""
    seed = f", seed {results[0].seed}" if results else ""
    ttfa = f", first audio after {results[0].time_to_first_audio:.2f} s" if results else ""
    return (f"{where}{duration:.2f} s of audio{pieces}, real-time factor {rtf:.2f}, "
            f"{fps:.1f} frames/s{ttfa}{seed}")


# ------------------------------------------------------------------------------------------------
# csm voices


def _library(model: str | None):
    """(VoiceLibrary, note): the model's presets and the registered voices; when the model cannot
    be found (not downloaded, offline), the registered voices alone and a note saying why."""
    from engine.voices import VoiceLibrary

    if model is None:
        return VoiceLibrary(None), None
    from engine.checkpoints import resolve_model

    try:
        return VoiceLibrary(resolve_model(model)), None
    except CSMError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return VoiceLibrary(None), f"(the presets of {model} are not listed: {first})"
    except Exception as error:  # the hub client's own errors (offline, gated, ...)
        return VoiceLibrary(None), (f"(the presets of {model} are not listed: "
                                    f"{type(error).__name__}: {error})")


@click.group("voices", invoke_without_command=True)
@model_option("Model whose presets to list (its prompts/ folder).")
@click.pass_context
def voices(ctx: click.Context, model: str) -> None:
    """List voice presets and registered voices; 'csm voices add' registers one."""
    if ctx.invoked_subcommand is not None:
        return
    library, note = _library(model)
    rows = []
    for name in library.names():
        try:
            voice = library.get(name)
        except CSMError as error:  # one broken voice does not hide the others
            rows.append((name, "broken", "", str(error).splitlines()[0][:60]))
            continue
        seconds = len(voice.audio) / SAMPLE_RATE
        kind = voice.source
        text = voice.text if len(voice.text) <= 60 else voice.text[:59] + "…"
        rows.append((name, kind, f"{seconds:.1f} s", text))
    if not rows:
        click.echo("No voices. Register one with: csm voices add NAME --audio clip.wav --text \"...\"")
    else:
        width = max(len(r[0]) for r in rows)
        kind_width = max(len(r[1]) for r in rows)
        for name, kind, seconds, text in rows:
            click.echo(f"{name:<{width}}  {kind:<{kind_width}}  {seconds:>6}  {text}")
    if note:
        click.echo(note, err=True)


@voices.command("add")
@click.argument("name")
@click.option("--audio", required=True, type=click.Path(dir_okay=False), help="Clip of the voice (8-12 s is best, 30 s at most).")
@click.option("--text", required=True, help="Transcript of the clip.")
@click.option("--speaker", type=OptionType("speaker"), default=None, help="Speaker id to store with it.")
@click.option("--overwrite", is_flag=True, help="Replace a registered voice of the same name.")
def voices_add(name: str, audio: str, text: str, speaker: int | None, overwrite: bool) -> None:
    """Register a voice NAME from a clip and its transcript (usable as --voice NAME)."""
    try:
        library, _ = _library(None)
        voice = library.register(name, audio, text, speaker=speaker, overwrite=overwrite)
    except CSMError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Registered voice {name!r} ({voice.duration:.1f} s). Use it with --voice {name}.")


@voices.command("remove")
@click.argument("name")
def voices_remove(name: str) -> None:
    """Delete the registered voice NAME (presets cannot be removed)."""
    try:
        library, _ = _library(None)
        library.remove(name)
    except CSMError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Removed voice {name!r}.")


def register(group: click.Group) -> None:
    group.add_command(generate)
    group.add_command(voices)
