"""`csm serve --replicas N [--ray-address ADDR]`: the HTTP API on N model replicas behind Ray
Serve (dialogue/cluster/), started from the command line and stopped with Ctrl-C."""

from __future__ import annotations

import signal
import time

import click


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the app as Ctrl-C does, so Ray is shut down too


def serve_replicas(*, model: str, db, host: str, port: int, max_queue: int,
                   max_upload_bytes: int, api_key: str | None, replicas: int,
                   ray_address: str | None, replica_cpus: float, max_batch: int = 8,
                   kv_cache_gb: float | None = None, max_audio_ms: float | None = None,
                   dtype: str | None = None, quantize: int | None = None) -> None:
    from storage import is_postgres_url

    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "--replicas needs Ray Serve: pip install 'csm-mlx-engine[cluster]'") from None
    if db is not None and not is_postgres_url(str(db)):
        if ray_address is not None:
            raise click.UsageError(
                "replicas on a Ray cluster need a database every machine reaches: "
                "--db postgresql://user@host:5432/csm (an SQLite file lives on one machine)")
        db = str(db.resolve())  # replicas are other processes, maybe with another working folder
    if db is None:
        click.echo("note: without --db the session endpoints answer 404", err=True)
    else:
        from storage import StorageError, open_store

        try:  # a wrong URL or a foreign file fails here, at once, not in N replicas
            open_store(str(db)).close()
        except StorageError as error:
            raise click.ClickException(str(error)) from None
    from dialogue.cluster import ClusterSettings
    from dialogue.cluster.app import start, stop

    settings = ClusterSettings(model=model, db=None if db is None else str(db), replicas=replicas,
                               replica_cpus=replica_cpus, max_queue=max_queue,
                               max_upload_bytes=max_upload_bytes, api_key=api_key,
                               max_batch=max_batch, kv_cache_gb=kv_cache_gb,
                               max_audio_ms=max_audio_ms, dtype=dtype, quantize=quantize)
    where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray instance"
    click.echo(f"starting {replicas} replica(s) of {model} on {where} ...", err=True)
    try:
        start(settings, host=host, port=port, ray_address=ray_address)
    except Exception as error:  # a replica that cannot load the model fails the deployment
        stop()
        raise click.ClickException(f"the replicas did not start: {error}") from None
    click.echo(f"serving on http://{host}:{port} (Ctrl-C stops)", err=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping ...", err=True)
    finally:
        stop()
