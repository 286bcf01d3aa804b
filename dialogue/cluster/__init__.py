"""Scale-out: the HTTP API served by N model replicas behind Ray Serve (`csm serve --replicas N`).

    ingress (Ingress)  ->  ModelReplica x N  ->  PostgreSQL (sessions, turns, uploaded voices)

Files: app.py (the Serve application and how it starts), ingress.py (forwarding, retries, 503),
replica.py (a model and the same FastAPI app as `csm serve`), asgi.py (a request carried between
processes and run through an ASGI app), routing.py (which session a request belongs to),
settings.py, bench.py (turns per second with 1 and 2 replicas).
Needs the `cluster` extra (`pip install 'csm-mlx-engine[cluster]'`).
"""

from .settings import ClusterSettings

__all__ = ["ClusterSettings"]
