"""`csm convert`: write a quantized copy of a model folder.

    csm convert --model sesame/csm-1b --quantize 4 -o csm-1b-4bit
    csm generate --model csm-1b-4bit --text "Hello." -o hello.wav
"""

from __future__ import annotations

from pathlib import Path

import click

from engine.constants import QUANTIZE_BITS, QUANTIZE_GROUP_SIZES
from engine.errors import CSMError

from .option_types import model_option

# `csm --help` imports this module: numpy, MLX, storage and the optional extras are imported
# inside the commands that use them.


@click.command("convert")
@model_option("Model name or folder to convert.", "--model", "-m")
@click.option("--quantize", "-q", "bits", type=click.Choice([str(bits) for bits in QUANTIZE_BITS]), required=True,
              help="Bits per weight (MLX affine quantization; 8 and 4 are the usual choices).")
@click.option("--group-size", type=click.Choice([str(size) for size in QUANTIZE_GROUP_SIZES]), default="64", show_default=True,
              help="Weights sharing one scale and bias.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New folder to write (must not exist or be empty).")
def convert(model: str, bits: str, group_size: str, output: Path) -> None:
    """Quantize a model's weights and write a model folder that every command can load (--model OUT)."""
    from engine.checkpoints.convert import write_quantized_model

    try:
        out = write_quantized_model(model, output, int(bits), int(group_size), progress=click.echo)
    except CSMError as error:
        raise click.ClickException(str(error)) from None
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    click.echo(f"{out}: {size:.1f} MB")


def register(group: click.Group) -> None:
    group.add_command(convert)
