"""The `csm` command: one click group; each module in this package adds its own commands.

A module here defines `register(group)`, which adds its commands to the group. Heavy imports (MLX,
the model) happen inside the commands, so `csm --help` stays fast.
"""

import importlib
import pkgutil

import click

from .notices import install


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="csm-mlx-engine")
def main() -> None:
    """Sesame CSM-1B speech on MLX: speak, clone, stream, converse, script podcasts."""
    install()  # one warning format for every command


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(main)


_register_commands()
