"""`csm serve`: the HTTP API (OpenAI's /v1/audio/speech, voices, stored conversations).

    csm serve --model sesame/csm-1b --db talk.db --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click
from engine.constants import DEFAULT_MODEL

from .database import Database


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Model: a Hugging Face id, a local folder, or tiny-random.")
@click.option("--db", type=Database(), default=None,
              help="SQLite file for sessions (created if missing), or a postgresql:// URL "
                   "(which also keeps uploaded voices). Without it, the session endpoints "
                   "answer 404.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the server to the "
                   "network: set --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-queue", "--max_queue", "max_queue", type=click.IntRange(min=1), default=8,
              show_default=True,
              help="Generation requests that may wait; more get 503 with Retry-After.")
@click.option("--max-batch", "--max_batch", "max_batch", type=click.IntRange(min=1), default=8,
              show_default=True,
              help="Generation requests computed together, frame by frame (1: one at a time). "
                   "More wait in the queue.")
@click.option("--kv-cache-gb", "--kv_cache_gb", "kv_cache_gb", type=click.FloatRange(min=0),
              default=None,
              help="Memory for the sessions' KV caches (least recently used go first; a "
                   "full-size session is ~64 MB). Default: 1/8 of the machine's memory.")
@click.option("--max-audio-ms", "--max_audio_ms", "max_audio_ms", type=click.FloatRange(min=80),
              default=None,
              help="The most audio one request may ask for (max_audio_length_ms above it: 400).")
@click.option("--max-upload-mb", "--max_upload_mb", "max_upload_mb", type=click.FloatRange(0.01),
              default=16.0, show_default=True, help="Largest voice clip upload (413 above).")
@click.option("--api-key", "--api_key", "api_key", envvar="CSM_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (env CSM_API_KEY).")
@click.option("--log-level", "--log_level", "log_level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(model: str, db: Path | None, host: str, port: int, max_queue: int, max_batch: int,
          kv_cache_gb: float | None, max_audio_ms: float | None,
          max_upload_mb: float, api_key: str | None, log_level: str) -> None:
    """Serve speech over HTTP: OpenAI-compatible /v1/audio/speech plus sessions.

    One model is loaded; up to --max-batch generation requests run together (their frames computed
    in one batched step), more wait in arrival order.
    """
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
    from engine.errors import CSMError
    from storage import StorageError

    app = create_app(model, db, max_queue=max_queue,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), api_key=api_key,
                     max_batch=max_batch, kv_cache_gb=kv_cache_gb, max_audio_ms=max_audio_ms)
    click.echo(f"loading {model} ...", err=True)
    try:
        app.state.csm.start()  # on the model's own thread; a bad model or db fails here, cleanly
    except (CSMError, StorageError) as error:
        app.state.csm.worker.stop()
        raise click.ClickException(str(error)) from None
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def register(group: click.Group) -> None:
    group.add_command(serve)
