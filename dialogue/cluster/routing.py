"""Which session a request belongs to: the key that routes it to the replica holding that
session's context (Ray Serve's multiplexed model id). Requests of no session (speech, voices,
health) get no key, so Ray Serve sends them to the least-loaded replica."""

from __future__ import annotations

import json

from dialogue.server.names import is_safe_name

from .asgi import HTTPRequest

SESSIONS = "/v1/sessions"


def session_of(request: HTTPRequest) -> str | None:
    """`/v1/sessions/{id}` and everything under it; a new session's id from its JSON body."""
    path = request.path.rstrip("/")
    if path.startswith(SESSIONS + "/"):
        name = path[len(SESSIONS) + 1:].split("/", 1)[0]
        return name if is_safe_name(name) else None
    if path == SESSIONS and request.method == "POST" and request.body:
        try:
            name = json.loads(request.body).get("id")
        except (ValueError, AttributeError):
            return None
        return name if isinstance(name, str) and is_safe_name(name) else None
    return None


def writes_a_turn(request: HTTPRequest) -> bool:
    """Requests that may store a turn: retried after a replica died only when the session's
    revision shows that nothing was stored."""
    return request.method == "POST" and request.path.rstrip("/").endswith(("/turns", "/recordings"))


def stores_nothing(request: HTTPRequest) -> bool:
    """Requests that can be sent again as they are: reads, and one-off speech."""
    return request.method in ("GET", "HEAD") or (
        request.method == "POST" and request.path.rstrip("/") == "/v1/audio/speech")
