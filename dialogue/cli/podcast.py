"""`csm podcast show.yaml -o show.wav`: validate a YAML script, render it (resumably), write the WAV."""

from __future__ import annotations

from pathlib import Path

import click

from engine.errors import CSMError

from .option_types import load_for_command, model_option, precision_options

# `csm --help` imports this module: numpy, MLX, storage and the optional extras are imported
# inside the commands that use them.


@click.command("podcast")
@click.argument("script", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The WAV to write (default: the script's name with .wav). Chapters go beside it.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file holding the rendered lines (default: beside the output, show.db).")
@click.option("--session", help="Session name in the database (default: the output's name).")
@model_option()
@precision_options
@click.option("--restart", is_flag=True, help="Forget what was rendered before and render every line.")
@click.option("--check", is_flag=True, help="Only validate the script; load no model, generate nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def podcast(script: Path, output: Path | None, db: Path | None, session: str | None, model: str,
            dtype: str | None, quantize: int | None, restart: bool, check: bool, quiet: bool) -> None:
    """Render the two-speaker show in SCRIPT (YAML) into one WAV.

    The whole script is checked first; every problem is listed with its line and nothing is
    generated. Lines are rendered one by one into a conversation stored in SQLite, so if the run
    stops, the same command continues from the first line not yet rendered; an edited line is
    rendered again together with the lines after it.
    """
    from dialogue.podcast import load_script, render
    from dialogue.podcast.preflight import script_problems

    notes: list[str] = []

    def preflight(parsed) -> list:  # all a render would refuse: voices, clips, room in the context
        problems, found = script_problems(parsed, model_name=model)
        notes.extend(found)
        return problems

    try:
        parsed = load_script(script, check=preflight if check else None)
    except CSMError as error:
        raise click.ClickException(str(error)) from None
    if check:
        for note in notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"{script}: OK - '{parsed.title}', {len(parsed.speakers)} speakers, {len(parsed.lines)} lines")
        return

    output = output or script.with_suffix(".wav")
    if output.suffix.lower() != ".wav":
        raise click.UsageError(f"--output must end in .wav, got {output.name}")
    try:  # before the model loads: an output that cannot be written fails now
        from engine.audio import check_output_path

        check_output_path(output)
    except CSMError as error:
        raise click.ClickException(str(error)) from None
    done: list[int] = []
    try:
        result = render(parsed, load_for_command(model, dtype, quantize), db=db, output=output, session=session,
                        restart=restart, progress=not quiet,
                        on_line=lambda line, segment: done.append(line.number))
    except KeyboardInterrupt:
        where = db or output.with_suffix(".db")
        count = len(done)
        click.echo(f"\nStopped. {count} line{'s' if count != 1 else ''} rendered in this run "
                   f"{'are' if count != 1 else 'is'} saved in {where}; run the same command again "
                   "to continue.", err=True)
        raise SystemExit(130) from None
    except CSMError as error:
        raise click.ClickException(str(error)) from None

    click.echo(
        f"{result.output}: {result.duration:.1f} s, {len(parsed.lines)} lines "
        f"({len(result.rendered)} rendered now, {result.reused} kept from {result.db}); "
        f"chapters in {result.chapters_path}"
    )


def register(group: click.Group) -> None:
    group.add_command(podcast)
