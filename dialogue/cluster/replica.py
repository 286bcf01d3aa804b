"""ModelReplica: one model, the conversation database, and the same FastAPI app `csm serve` runs.

Each replica loads the model on its own worker thread (as `csm serve` does) and answers the
requests the ingress forwards by running them through its app (asgi.py), so every endpoint and
every error is the single-machine server's. A session's requests carry the session id as Ray
Serve's multiplexed model id: the first one a replica sees "loads" the session (marks it held
here, so Serve routes the session's next turns to this replica, where the generator's KV cache
already holds its prompt), and Serve forgets the least recently used ones beyond
SESSIONS_PER_REPLICA. Loading is cheap: the context is rebuilt from the database on the next
turn, with the same codes, which is also how another replica takes a session over when its
replica died.
"""

from __future__ import annotations

import logging
import os

from ray import serve

from .asgi import HTTPRequest, run_asgi
from .settings import ClusterSettings

log = logging.getLogger("csm.cluster")
REPLICA_HEADER = b"x-csm-replica"
SESSIONS_PER_REPLICA = 64  # sessions a replica keeps marked as held (least recently used go)


class HeldSession:
    """A session this replica holds; Ray Serve deletes it when it evicts the session."""

    def __init__(self, name: str, state) -> None:
        self.name = name
        self._state = state

    def __del__(self) -> None:
        state, self._state = self._state, None
        if state is None or not state.ready:
            return
        try:  # the open Conversation lives on the worker thread; drop it there
            state.worker.call(lambda: state.backend._conversations.pop(self.name, None),
                              label="forget session", timeout=30)
        except Exception:  # a replica shutting down has nothing left to forget
            pass


class ModelReplica:
    def __init__(self, settings: ClusterSettings) -> None:
        from dialogue.server import create_app

        self.settings = settings
        self.app = create_app(settings.model, settings.db, max_queue=settings.max_queue,
                              max_upload_bytes=settings.max_upload_bytes, api_key=settings.api_key,
                              max_batch=settings.max_batch, kv_cache_gb=settings.kv_cache_gb,
                              max_audio_ms=settings.max_audio_ms, dtype=settings.dtype,
                              quantize=settings.quantize)
        self.state = self.app.state.csm
        self.state.start()  # loads the model on the worker thread; errors fail the replica
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id
        self.pid = os.getpid()
        log.info("replica %s (pid %d) serving %s", self.name, self.pid, settings.model)

    @serve.multiplexed(max_num_models_per_replica=SESSIONS_PER_REPLICA)
    async def hold_session(self, session: str) -> HeldSession:
        return HeldSession(session, self.state)

    async def handle(self, request: HTTPRequest):
        session = serve.get_multiplexed_model_id()
        if session:
            await self.hold_session(session)
        async for part in run_asgi(self.app, request, [(REPLICA_HEADER, self.name.encode())]):
            yield part

    def identity(self) -> dict:
        return {"replica": self.name, "pid": self.pid}

    def check_health(self) -> None:
        if not self.state.worker.thread.is_alive():
            raise RuntimeError("the model worker thread has stopped")

    def __del__(self) -> None:
        state = getattr(self, "state", None)
        if state is not None:
            state.ready = False
            state.worker.stop()
            state.backend.close()
