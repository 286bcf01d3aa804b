"""Errors as OpenAI sends them: {"error": {"message", "type", "param", "code"}} and a status code.

400 bad input (and every engine InputError), 404 unknown voice / session / route, 413 upload too
large, 503 queue full (with Retry-After), 500 anything unexpected (logged, message kept short).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dialogue.conversation import SessionBusyError
from engine.errors import (AudioError, ContextTooLongError, CSMError, InputError, VoiceError,
                           WeightsError)
from engine.voices import default_user_dir
from storage import SessionNotFoundError, StorageError

from .audio_formats import UnsupportedFormat
from .worker import JobCancelled, QueueFull, WorkerStopped

log = logging.getLogger("csm.server")

_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
          409: "invalid_request_error", 413: "invalid_request_error", 503: "server_busy",
          500: "server_error"}


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class APIError(Exception):
    """An error to send to the client as-is."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _server_paths() -> list[tuple[str, str]]:
    """Folders of this machine that replies must not show, and what to say instead."""
    paths = [(tempfile.gettempdir(), "<temporary file>")]
    try:
        paths.append((str(default_user_dir()), "<voices>"))
    except Exception:  # pragma: no cover - engine is part of this distribution
        pass
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        paths.append((home, "~"))
    return paths


def scrub_paths(message: str) -> str:
    """`message` with the server's own file paths (temporary uploads, the voices folder, the
    home folder) replaced by placeholders: an error reply must not reveal them."""
    for folder, placeholder in _server_paths():
        if folder and len(folder) > 1:
            message = re.sub(re.escape(folder.rstrip("/")) + r"(/[^\s'\"),;]*)?", placeholder,
                             message)
    return message


def as_api_error(error: BaseException) -> APIError:
    """Map any exception (engine, storage, worker, ours) onto the status and code to send, its
    message with the server's own paths left out."""
    mapped = _as_api_error(error)
    mapped.message = scrub_paths(mapped.message)
    return mapped


def _as_api_error(error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFull):
        return APIError(503, str(error), code="queue_full",
                        headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, JobCancelled):
        return APIError(503, str(error), code="cancelled", headers={"Retry-After": "1"})
    if isinstance(error, WorkerStopped):
        return APIError(503, str(error), code="shutting_down", headers={"Retry-After": "5"})
    if isinstance(error, UnsupportedFormat):
        return APIError(400, str(error), param="response_format", code="unsupported_format")
    if isinstance(error, ContextTooLongError):
        return APIError(400, str(error), code="context_too_long")
    if isinstance(error, AudioError):
        return APIError(400, str(error), code="invalid_audio")
    if isinstance(error, VoiceError):
        return APIError(400, str(error), param="voice", code="invalid_voice")
    if isinstance(error, SessionBusyError):  # one writer per session
        return APIError(409, str(error), param="session_id", code="session_busy")
    if isinstance(error, InputError):
        return APIError(400, str(error), code="invalid_input")
    if isinstance(error, SessionNotFoundError):
        return APIError(404, str(error), param="session_id", code="session_not_found")
    if isinstance(error, WeightsError):
        log.error("model files problem: %s", error)
        return APIError(500, f"the model cannot run: {error}", code="weights_error")
    if isinstance(error, StorageError):
        log.error("storage problem: %s", error)
        return APIError(500, f"the conversation database cannot be used: {error}",
                        code="storage_error")
    if isinstance(error, CSMError):
        return APIError(500, str(error), code="engine_error")
    log.error("unexpected error", exc_info=error)
    return APIError(500, f"internal server error ({type(error).__name__}); see the server log",
                    code="internal_error")


def error_response(error: BaseException) -> JSONResponse:
    return as_api_error(error).response()


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path",
                                                                      "form")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "value_error" and message.startswith("Value error, "):
        message = message[len("Value error, "):]  # our own checks' messages, as they are
    if first.get("type") == "json_invalid":
        message = "the request body is not valid JSON"
        param = None
    elif param:
        message = f"{param}: {message}"
    return APIError(400, message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the server in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        code = _HTTP_CODES.get(exc.status_code)
        return APIError(exc.status_code, message, code=code,
                        headers=dict(exc.headers or {})).response()

    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Unexpected exceptions become a logged 500 in OpenAI's shape, and the connection lives on.

    (Starlette's own last-resort handler re-raises after answering, which makes the server drop
    the keep-alive connection.) Once a response has started there is nothing left to send: the
    exception propagates and the server cuts the response short, which is what a client of a
    failed stream should see.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await error_response(exc)(scope, receive, send)
