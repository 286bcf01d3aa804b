"""One HTTP request, carried between processes, and run through an ASGI app where it lands.

The ingress captures a request (method, path, headers, body) as a picklable `HTTPRequest`; a
model replica runs it through its own FastAPI app with `run_asgi` and streams the response back
as a `ResponseStart` followed by body chunks. The app sees an ordinary HTTP request: its routes,
validation, limits and error replies are exactly those of `csm serve` on one machine. When the
consumer of the stream goes away (the client disconnected), the app is told `http.disconnect`,
so a turn in progress is dropped, not stored, as on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    client: tuple[str, int] | None = None

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _scope(request: HTTPRequest) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query_string,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers],
        "client": request.client,
        "server": ("127.0.0.1", 80),
    }


async def run_asgi(app, request: HTTPRequest,
                   extra_headers: list[tuple[bytes, bytes]] = ()) -> AsyncIterator[ResponseStart | bytes]:
    """Run `request` through `app`; yield its ResponseStart (plus `extra_headers`), then the body
    in the chunks the app sends."""
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()  # the app may poll for a disconnect; it comes only when the client leaves
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(_scope(request), receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while True:
            message = await messages.get()
            if message is None:  # the app returned (or raised) without finishing a response
                task.result()
                return
            if message["type"] == "http.response.start":
                yield ResponseStart(int(message["status"]),
                                    list(message.get("headers", [])) + list(extra_headers))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=10)
