"""Ingress: the HTTP entry of the cluster app. It forwards every request, unchanged, to a model
replica chosen by Ray Serve, and streams the replica's response back.

Routing is Ray Serve's own: a request of a session carries the session id as the multiplexed
model id (routing.py), so Serve sends it to the replica already holding that session, or, when
none does (a new session, or its replica died), to a lightly loaded one, which then holds it.
Requests of no session go to the least-loaded replica (Serve's power-of-two-choices router).

A replica that dies before its response starts:
- a request that stores nothing (GET, one-off speech) is sent again, to a live replica;
- a turn is sent again only when the session's revision in the database shows that nothing was
  stored (a turn is stored in one transaction when complete, so the revision tells); when the
  revision moved, the turn was stored and only its reply was lost: that answers 502
  `turn_stored_reply_lost`, which says not to send it again but to read it back;
- anything else answers 503 with Retry-After, in the API's error shape.
A whole-file turn's answer is read to its end before the client gets it, so a replica that dies
after its headers is handled as one that died before answering. A replica that dies while
streaming cuts that response short (the client sees an incomplete body); the turn is stored in one
transaction once complete, so it was stored whole or not at all (GET /v1/sessions/{id} tells).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dialogue.server.errors import APIError

from .asgi import HTTPRequest, ResponseStart
from .routing import SESSIONS, session_of, stores_nothing, writes_a_turn
from .settings import ClusterSettings

log = logging.getLogger("csm.cluster")
BODY_SLACK = 1024 * 1024  # form fields around an upload
RETRY_PAUSE_S = 0.5
NEW_SESSION_SETTLE_S = 0.5  # after creating a session, before answering (see __call__)


def _replica_gone_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rx

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
             "NodeDiedError", "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(rx, n) for n in names if hasattr(rx, n))


def _has_length(start: ResponseStart) -> bool:
    """A response of known length (a whole file), not a stream."""
    return any(k.lower() == b"content-length" for k, _ in start.headers)


class Ingress:
    def __init__(self, replicas, settings: ClusterSettings) -> None:
        self.replicas = replicas.options(method_name="handle", stream=True)
        self.settings = settings
        self.store = None
        if settings.db is not None:
            from storage import open_store

            self.store = open_store(settings.db)  # only to read revisions before a retry
        self.gone = _replica_gone_errors()

    async def __call__(self, request: Request) -> Response:
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        forwarded = HTTPRequest(method=request.method, path=request.url.path,
                                query_string=request.url.query.encode(),
                                headers=tuple(request.headers.raw), body=body,
                                client=(request.client.host, request.client.port)
                                if request.client else None)
        session = session_of(forwarded)
        before = await self._revision(session) if writes_a_turn(forwarded) else None
        for attempt in range(self.settings.retries):
            stream = self.replicas.options(multiplexed_model_id=session or "").remote(forwarded)
            try:
                start = await stream.__anext__()
                if not isinstance(start, ResponseStart):
                    return APIError(502, "the replica answered out of order", code="bad_gateway").response()
                # a whole-file turn: the replica stored it before answering, so a replica that dies
                # between its headers and the end of its body must not leave the client with a cut
                # body and no word on the turn: read it all here, then answer
                whole = writes_a_turn(forwarded) and _has_length(start)
                body = b"".join([chunk async for chunk in stream]) if whole else None
            except StopAsyncIteration:
                return APIError(502, "the replica sent no response", code="bad_gateway").response()
            except self.gone as error:
                log.warning("replica gone before its answer to %s %s was complete (attempt %d): %s",
                            forwarded.method, forwarded.path, attempt + 1, type(error).__name__)
                if await self._turn_was_stored(forwarded, session, before):
                    return self._reply_lost(session)
                if attempt + 1 < self.settings.retries and await self._may_retry(forwarded, session, before):
                    await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
                    continue
                return self._unavailable()
            if start.status == 201 and forwarded.method == "POST" and forwarded.path.rstrip("/") == SESSIONS:
                # Ray Serve learns which replica now holds the new session from that replica's
                # reports (every 0.1 s); a turn sent before the router hears it may go to another
                # replica, and then both hold the session. A moment's wait keeps it on one.
                await asyncio.sleep(NEW_SESSION_SETTLE_S)
            response = (Response(body, status_code=start.status) if body is not None
                        else StreamingResponse(self._body(stream, forwarded), status_code=start.status))
            response.raw_headers = [(k, v) for k, v in start.headers]
            return response
        return self._unavailable()

    async def _read_body(self, request: Request) -> bytes | Response:
        """The whole body, refused (413, as the app would) past the largest upload allowed."""
        limit = self.settings.max_upload_bytes + BODY_SLACK
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return APIError(413, f"the request body is larger than {limit} bytes",
                                code="payload_too_large").response()
            parts.append(chunk)
        return b"".join(parts)

    async def _body(self, stream, forwarded: HTTPRequest):
        try:
            async for chunk in stream:
                yield chunk
        except self.gone as error:  # nothing to do but end the response early
            log.warning("replica died while streaming %s %s: %s", forwarded.method,
                        forwarded.path, type(error).__name__)
            raise
        finally:
            stream.cancel()

    async def _revision(self, session: str | None) -> int | None:
        if session is None or self.store is None:
            return None
        try:
            return await asyncio.to_thread(self.store.revision, session)
        except Exception:  # no such session: the replica will say so
            return None

    async def _may_retry(self, forwarded: HTTPRequest, session: str | None, before) -> bool:
        if stores_nothing(forwarded):
            return True
        if writes_a_turn(forwarded) and before is not None:
            return await self._revision(session) == before  # nothing was stored: safe to resend
        return False

    async def _turn_was_stored(self, forwarded: HTTPRequest, session: str | None, before) -> bool:
        """The session's revision moved while its turn was being made: the dying replica stored
        it before it could answer (one writer per session: no other turn can have moved it)."""
        if not writes_a_turn(forwarded) or before is None:
            return False
        now = await self._revision(session)
        return now is not None and now != before

    @staticmethod
    def _reply_lost(session: str) -> Response:
        return APIError(502, f"the model replica stored this turn but stopped before sending its "
                        f"reply; do not send it again: GET /v1/sessions/{session} lists it, and "
                        f"GET /v1/sessions/{session}/turns/{{index}}/audio gives its audio",
                        code="turn_stored_reply_lost").response()

    def _unavailable(self) -> Response:
        return APIError(503, "the model replica serving this request stopped before it answered; "
                        "try again (a turn is stored only once complete: GET /v1/sessions/{id} "
                        "shows whether it was)",
                        code="replica_unavailable",
                        headers={"Retry-After": str(self.settings.retry_after_s)}).response()
