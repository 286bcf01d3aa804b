"""Request body size limits, enforced while the body arrives (413 before reading it all).

A declared Content-Length over the limit is refused at once; a body without one (chunked) is
counted as it is received and refused when it passes the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError


class BodyTooLarge(HTTPException):
    """An HTTPException, so body parsers (FastAPI's JSON, Starlette's forms) let it through."""

    def __init__(self, limit: int) -> None:
        mib = limit / (1024 * 1024)
        size = f"{mib:.1f} MiB" if mib >= 1 else f"{limit // 1024} KiB"
        super().__init__(413, f"request body too large: the limit is {size}")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, default_limit: int, limits: dict[str, int],
                 upload_suffixes: dict[str, int] | None = None) -> None:
        """`limits`: by exact path; `upload_suffixes`: by how a path ends; else default_limit."""
        self.app = app
        self.default_limit = default_limit
        self.limits = limits
        self.upload_suffixes = upload_suffixes or {}

    def limit_for(self, path: str) -> int:
        path = path.rstrip("/")
        if path in self.limits:
            return self.limits[path]
        for suffix, limit in self.upload_suffixes.items():
            if path.endswith(suffix):
                return limit
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # Read (and drop) what the client is sending before answering: most clients send the
            # whole body before they read, and closing on unread data resets the connection,
            # which would lose the 413. Past DRAIN_FACTOR x limit we stop reading and close.
            await _drain(receive, DRAIN_FACTOR * limit)
            too_large = BodyTooLarge(limit)
            await _send_error(APIError(413, too_large.detail, code="request_too_large"), send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


DRAIN_FACTOR = 8


async def _drain(receive: Receive, budget: int) -> None:
    seen = 0
    while seen <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(error: APIError, send: Send) -> None:
    response = error.response()
    response.headers["Connection"] = "close"
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
