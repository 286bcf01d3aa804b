"""Click parameter types for the generation options, checked by engine.option_checks.

    @click.option("--temperature", type=OptionType("temperature"), default=0.9)

The command line parses the text, then the number is checked exactly as the Python API, YAML
scripts and the HTTP server check it, so `--temperature nan` or `--seed 99999999999999999999` is
a one-line usage error naming the option and its range.
"""

from __future__ import annotations

import click

from engine.constants import DEFAULT_MODEL, QUANTIZE_BITS
from engine.errors import InputError
from engine.option_checks import OPTIONS
from engine.options import DTYPE_NAMES

# `csm --help` imports this module: MLX (load_model) is imported inside load_for_command.


MODEL_ENV = "CSM_MODEL"  # the default model of every command (a hub id, a folder, tiny-random)


def model_option(help: str = "Model: a Hugging Face id, a local folder, or tiny-random.", *names):
    """The --model option every command shares: its default comes from $CSM_MODEL, else
    sesame/csm-1b."""
    return click.option(*(names or ("--model",)), "model", default=DEFAULT_MODEL, show_default=True,
                        envvar=MODEL_ENV, show_envvar=True, help=help)


def precision_options(command):
    """--dtype and --quantize for a command that loads a model to generate with: passed to
    engine.load_model(dtype=, quantize=) by load_for_command()."""
    command = click.option(
        "--quantize", type=click.Choice([str(bits) for bits in QUANTIZE_BITS]), default=None,
        callback=lambda ctx, param, value: None if value is None else int(value),
        help="Quantize the network to this many bits as it loads (MLX affine; 8 and 4 are the "
             "usual choices). Default: the weights as stored. 'csm convert' writes a quantized "
             "copy instead.")(command)
    return click.option(
        "--dtype", type=click.Choice(DTYPE_NAMES, case_sensitive=False), default=None,
        callback=lambda ctx, param, value: None if value is None else value.lower(),
        help="Float dtype of the weights. Default: $CSM_DTYPE, else what measures fastest on "
             "this device (bfloat16 on a GPU).")(command)


def load_for_command(model: str, dtype: str | None, quantize: int | None, **kwargs):
    """engine.load_model with a command's --dtype and --quantize. An option the model refuses
    (--quantize on a model that is already quantized) is a one-line usage error."""
    from engine import load_model
    try:
        return load_model(model, dtype=dtype, quantize=quantize, **kwargs)
    except InputError as error:
        raise click.UsageError(str(error)) from None


class OptionType(click.ParamType):
    def __init__(self, option: str):
        self.option = OPTIONS[option]
        self.name = "integer" if self.option.kind is int else "float"

    def convert(self, value, param, ctx):
        if value is None:
            return None
        try:
            return self.option.parse(value) if isinstance(value, str) else self.option.check(value)
        except InputError as error:
            self.fail(str(error), param, ctx)

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "INTEGER" if self.option.kind is int else "FLOAT"

    def __repr__(self) -> str:
        return f"OptionType({self.option.name!r})"
