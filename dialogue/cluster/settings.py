"""What every part of the cluster app is started with (one frozen, picklable object)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterSettings:
    model: str = "sesame/csm-1b"
    db: str | None = None  # a postgresql:// URL (or, on one machine only, an SQLite file)
    replicas: int = 2
    replica_cpus: float = 1.0  # Ray CPUs reserved per model replica
    max_queue: int = 8  # per replica, as `csm serve --max-queue`
    max_batch: int = 8  # per replica, as `csm serve --max-batch`
    kv_cache_gb: float | None = None  # per replica, as `csm serve --kv-cache-gb`
    max_audio_ms: float | None = None  # as `csm serve --max-audio-ms`
    dtype: str | None = None  # as `csm serve --dtype` (load_model's dtype=)
    quantize: int | None = None  # as `csm serve --quantize` (load_model's quantize=)
    max_upload_bytes: int = 16 * 1024 * 1024
    api_key: str | None = None
    retries: int = 8  # attempts for a request whose replica died before answering
    retry_after_s: int = 2  # what a 503 after a replica died tells the client
