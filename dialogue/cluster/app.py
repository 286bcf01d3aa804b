"""The Ray Serve application: one Ingress and N ModelReplicas, and how `csm serve --replicas N`
starts it (a local Ray instance, or an existing cluster with `ray_address`)."""

from __future__ import annotations

import os

from .settings import ClusterSettings

APP_NAME = "csm"
HEALTH_CHECK_PERIOD_S = 2.0  # how soon a dead replica is noticed and replaced
HEALTH_CHECK_TIMEOUT_S = 30.0
GRACEFUL_SHUTDOWN_S = 5.0


def build_app(settings: ClusterSettings):
    """The Serve application (bound deployments), ready for serve.run."""
    from ray import serve

    from .ingress import Ingress
    from .replica import ModelReplica

    replica = serve.deployment(
        ModelReplica, name="ModelReplica", num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.replica_cpus},
        # what one replica takes on at once: a batch running plus its queue; Serve's router holds
        # the rest back and counts these when it picks the least-loaded replica
        max_ongoing_requests=settings.max_batch + settings.max_queue,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    )
    ingress = serve.deployment(
        Ingress, name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,
    )
    return ingress.bind(replica.bind(settings), settings)


def start(settings: ClusterSettings, *, host: str = "127.0.0.1", port: int = 8000,
          ray_address: str | None = None):
    """Start (or join) Ray, then Serve on host:port, then the app; returns its handle once every
    replica has loaded the model."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            needed = settings.replicas * settings.replica_cpus
            ray.init(num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)),
                     include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(settings), name=APP_NAME, route_prefix="/")


def stop() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
