"""`csm serve`: the HTTP API (OpenAI's /v1/audio/speech, voices, stored conversations).

    csm serve --model sesame/csm-1b --db talk.db --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from engine.errors import CSMError, InputError

from .database import Database
from .option_types import model_option, precision_options
from .serve_cluster import serve_replicas

# `csm --help` imports this module: numpy, MLX, storage and the optional extras are imported
# inside the commands that use them.


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


API_KEY_ENV = "CSM_API_KEY"


def _api_key(given: str | None, key_file: Path | None) -> str | None:
    """The one API key from --api-key, --api-key-file or $CSM_API_KEY (None: no authentication).
    An empty key is refused: it would silently turn authentication off."""
    sources = []
    if given is not None:
        sources.append(("--api-key", given))
    if key_file is not None:
        try:
            lines = key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise click.UsageError(f"--api-key-file: cannot read {key_file}: {error}") from None
        sources.append((f"--api-key-file {key_file}", lines[0] if lines else ""))
    if API_KEY_ENV in os.environ:
        sources.append((f"${API_KEY_ENV}", os.environ[API_KEY_ENV]))
    if not sources:
        return None
    if len(sources) > 1 and len({value.strip() for _, value in sources}) > 1:
        raise click.UsageError("the API key is given more than once, with different values ("
                               + ", ".join(name for name, _ in sources) + "); give one")
    name, key = sources[0]
    key = key.strip()
    if not key:
        raise click.UsageError(f"the API key from {name} is empty, which would turn "
                               "authentication off; give a key, or unset it for none")
    if not key.isascii() or not key.isprintable() or " " in key:
        raise click.UsageError(f"the API key from {name} must be printable ASCII without spaces "
                               "(it travels in an HTTP header)")
    return key


def _finite(ctx, param, value):
    """click's FloatRange lets nan through (it compares false with both bounds)."""
    if value is not None and value != value:
        raise click.BadParameter("must be a number, not nan")
    return value


@click.command("serve")
@model_option()
@precision_options
@click.option("--db", type=Database(), default=None,
              help="SQLite file for sessions (created if missing), or a postgresql:// URL "
                   "(which also keeps uploaded voices). Without it, the session endpoints "
                   "answer 404.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the server to the "
                   "network: set --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-queue", "--max_queue", "max_queue", type=click.IntRange(1, 10_000), default=8,
              show_default=True,
              help="Generation requests that may wait; more get 503 with Retry-After.")
@click.option("--max-batch", "--max_batch", "max_batch", type=click.IntRange(1, 256), default=8,
              show_default=True,
              help="Generation requests computed together, frame by frame (1: one at a time). "
                   "More wait in the queue.")
@click.option("--kv-cache-gb", "--kv_cache_gb", "kv_cache_gb", type=click.FloatRange(0, 4096),
              default=None, callback=_finite,
              help="Memory for the sessions' KV caches (least recently used go first; a "
                   "full-size session is ~64 MB). Default: 1/8 of the machine's memory.")
@click.option("--max-audio-ms", "--max_audio_ms", "max_audio_ms", type=click.FloatRange(80, 163_840),
              default=None, callback=_finite,
              help="The most audio one request may ask for (max_audio_length_ms above it: 400).")
@click.option("--max-upload-mb", "--max_upload_mb", "max_upload_mb", type=click.FloatRange(0.01, 1024),
              default=16.0, show_default=True, help="Largest voice clip upload (413 above).")
@click.option("--api-key", "--api_key", "api_key", default=None,
              help="Require 'Authorization: Bearer KEY'. A key given here shows in `ps`: prefer "
                   "--api-key-file or the environment variable CSM_API_KEY.")
@click.option("--api-key-file", "--api_key_file", "api_key_file",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the API key from this file (its first line).")
@click.option("--log-level", "--log_level", "log_level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--replicas", type=click.IntRange(1, 1024), default=None,
              help="Serve with N model replicas behind Ray Serve (needs the 'cluster' extra); "
                   "each session's turns go to the replica holding its context.")
@click.option("--ray-address", "--ray_address", "ray_address", default=None,
              help="Join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting a "
                   "local one; replicas may then run on several machines (needs a "
                   "postgresql:// --db).")
@click.option("--replica-cpus", "--replica_cpus", "replica_cpus", type=click.FloatRange(0.01, 1024),
              default=1.0, show_default=True, help="Ray CPUs reserved for each model replica.")
def serve(model: str, dtype: str | None, quantize: int | None, db: Path | None, host: str, port: int,
          max_queue: int, max_batch: int, kv_cache_gb: float | None, max_audio_ms: float | None,
          max_upload_mb: float,
          api_key: str | None, api_key_file: Path | None, log_level: str, replicas: int | None,
          ray_address: str | None, replica_cpus: float) -> None:
    """Serve speech over HTTP: OpenAI-compatible /v1/audio/speech plus sessions.

    One model is loaded; up to --max-batch generation requests run together (their frames computed
    in one batched step), more wait in arrival order. With --replicas N, the same API runs on N
    model replicas behind Ray Serve.
    """
    api_key = _api_key(api_key, api_key_file)
    try:
        import uvicorn

        from dialogue.server import create_app
    except ImportError as error:
        raise click.ClickException(
            f"the server needs its extra packages ({error.name} is missing): "
            "pip install 'csm-mlx-engine[server]'") from None
    if not _is_loopback(host) and not api_key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach this "
                   "address can use the server", err=True)
    if replicas is not None or ray_address is not None:
        serve_replicas(model=model, db=db, host=host, port=port, max_queue=max_queue,
                       max_upload_bytes=int(max_upload_mb * 1024 * 1024), api_key=api_key,
                       replicas=replicas or 1, ray_address=ray_address, replica_cpus=replica_cpus,
                       max_batch=max_batch, kv_cache_gb=kv_cache_gb, max_audio_ms=max_audio_ms,
                       dtype=dtype, quantize=quantize)
        return
    from storage import StorageError

    app = create_app(model, db, dtype=dtype, quantize=quantize, max_queue=max_queue,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), api_key=api_key,
                     max_batch=max_batch, kv_cache_gb=kv_cache_gb, max_audio_ms=max_audio_ms)
    click.echo(f"loading {model} ...", err=True)
    try:
        app.state.csm.start()  # on the model's own thread; a bad model or db fails here, cleanly
    except InputError as error:  # an option the model refuses (--quantize on a quantized model)
        app.state.csm.worker.stop()
        raise click.UsageError(str(error)) from None
    except (CSMError, StorageError) as error:
        app.state.csm.worker.stop()
        raise click.ClickException(str(error)) from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"the web page: http://{shown}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def register(group: click.Group) -> None:
    group.add_command(serve)
