"""The FastAPI application: OpenAI's speech endpoint, voices, and stored conversations.

    create_app(model="tiny-random", db="talk.db") -> FastAPI

One model, loaded at start-up on the single worker thread that then runs every generation in
turn (worker.py). Requests queue there; a full queue answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from engine.constants import FRAME_RATE
from engine.errors import InputError
from engine.option_checks import OPTIONS

from .audio_formats import MEDIA_TYPES, check_format, encode_audio
from .backend import Backend, spool_upload
from .errors import APIError, install_error_handlers
from .limits import BodyLimitMiddleware
from .names import NAME_PATTERN, check_name, is_safe_name
from .responses import audio_response, run_job_result, submit
from .schemas import SessionCreate, SpeechRequest, TurnRequest, VoicePin
from .web import add_web_page, is_public_path
from .worker import Worker

log = logging.getLogger("csm.server")

DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # a 30 s stereo 48 kHz WAV is ~6 MB
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # JSON bodies
DEFAULT_MAX_AUDIO_MS = 90_000  # what a request without max_audio_length_ms may generate


@dataclass
class ServerSettings:
    model: str = "sesame/csm-1b"
    db: str | Path | None = None
    max_queue: int = 8
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    api_key: str | None = None
    max_batch: int = 8  # generation requests whose frames are computed together
    kv_cache_gb: float | None = None  # KV caches kept for sessions (None: sized from the machine)
    max_audio_ms: float | None = None  # the most audio one request may ask for
    dtype: str | None = None  # load_model(dtype=): the float weights' dtype (None: the device's)
    quantize: int | None = None  # load_model(quantize=): bits to quantize to at load (None: as stored)


class ServerState:
    """What the routes share: settings, the worker thread and the backend living on it."""

    def __init__(self, settings: ServerSettings, model=None) -> None:
        self.settings = settings
        cache_bytes = None if settings.kv_cache_gb is None else int(settings.kv_cache_gb * 1024**3)
        self.backend = Backend(settings.model, settings.db, model=model, cache_bytes=cache_bytes,
                               dtype=settings.dtype, quantize=settings.quantize)
        self.worker = Worker(max_queue=settings.max_queue, on_exit=self.backend.release_thread,
                             max_batch=settings.max_batch)
        self.ready = False

    def start(self) -> None:
        """Start the worker thread and load the model on it; blocks. Errors (a missing model,
        bad weights) raise here, before any server runs. The app's start-up calls this too
        when it has not been called."""
        if self.ready:
            return
        self.worker.start()
        self.worker.call(self.backend.load, label="load model")
        if self.settings.max_batch > 1:  # requests share the frame loop
            self.worker.call(lambda: self.worker.attach(self.backend.batch(self.settings.max_batch)),
                             label="batch")
        self.ready = True
        log.info("model %s loaded", self.settings.model)


def create_app(model: str = "sesame/csm-1b", db: str | Path | None = None, *,
               max_queue: int = 8, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               api_key: str | None = None, loaded_model=None, max_batch: int = 8,
               kv_cache_gb: float | None = None, max_audio_ms: float | None = None,
               dtype: str | None = None, quantize: int | None = None) -> FastAPI:
    """The server application. `loaded_model` skips loading (it must not be used elsewhere);
    `dtype`, `quantize`: as load_model takes them, for the model loaded by name.
    `max_batch`: requests generated together (1: one at a time); `kv_cache_gb`: KV caches kept
    for sessions; `max_audio_ms`: the most audio one request may ask for."""
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise InputError("the API key is empty, which would leave the server open to anyone: "
                         "give a key, or pass api_key=None for no authentication")
    settings = ServerSettings(model=model, db=db, max_queue=max_queue,
                              max_upload_bytes=max_upload_bytes, api_key=api_key,
                              max_batch=max_batch, kv_cache_gb=kv_cache_gb,
                              max_audio_ms=max_audio_ms, dtype=dtype, quantize=quantize)
    state = ServerState(settings, model=loaded_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await asyncio.get_running_loop().run_in_executor(None, state.start)
            yield
        finally:
            state.ready = False
            await asyncio.get_running_loop().run_in_executor(None, state.worker.stop)
            state.backend.close()

    app = FastAPI(title="CSM speech server", version="1", lifespan=lifespan,
                  description="OpenAI-compatible text to speech with Sesame CSM on MLX, "
                              "plus conversations that persist.")
    app.state.csm = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, default_limit=DEFAULT_MAX_BODY_BYTES,
                       limits={"/v1/voices": max_upload_bytes,
                               "/v1/audio/voices": max_upload_bytes},
                       upload_suffixes={"/recordings": max_upload_bytes})
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    _add_routes(app, state)
    add_web_page(app)
    return app


class ApiKeyMiddleware:
    """Every request but /health, the docs and the web page's files needs
    'Authorization: Bearer <key>'.

    A plain ASGI middleware (not @app.middleware): it must not wrap `receive`, or requests could
    no longer notice a client that disconnects.
    """

    OPEN_PATHS = ("/health", "/docs", "/redoc", "/openapi.json")

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["path"] not in self.OPEN_PATHS
                and not is_public_path(scope["path"])):
            given = dict(scope.get("headers", ())).get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not secrets.compare_digest(token, self.key):
                error = APIError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                 code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _generation_options(body, max_audio_ms: float | None = None) -> dict[str, Any]:
    options = {"temperature": body.temperature, "top_k": body.top_k, "seed": body.seed,
               "streaming_interval": body.streaming_interval}
    if body.max_audio_length_ms is not None:
        if max_audio_ms is not None and body.max_audio_length_ms > max_audio_ms:
            raise APIError(400, f"max_audio_length_ms {body.max_audio_length_ms:g} is over this "
                           f"server's limit of {max_audio_ms:g} ms (--max-audio-ms); ask for less "
                           "audio or split the text", param="max_audio_length_ms",
                           code="over_limit")
        options["max_audio_length_ms"] = body.max_audio_length_ms
    elif max_audio_ms is not None:
        options["max_audio_length_ms"] = min(max_audio_ms, DEFAULT_MAX_AUDIO_MS)
    return options


def _check_output(body) -> str:
    return _audio_format(body.response_format)


def _audio_format(response_format: str) -> str:
    try:
        return check_format(response_format)
    except ValueError as error:
        raise APIError(400, str(error), param="response_format",
                       code="unsupported_format") from None


async def _read_clip_form(request: Request, required: tuple[str, ...]) -> tuple[dict, bytes, str]:
    """A multipart upload of one audio clip: (text fields, clip bytes, safe file suffix).

    The clip is the file field `audio` (also `file` or OpenAI's `audio_sample`); its words are
    `transcript` (also `text`). Every field named in `required` must be present.
    """
    async with request.form(max_files=1, max_fields=8) as form:
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        for key in required:
            if not fields.get(key, "").strip():
                raise APIError(400, f"the form field `{key}` is missing", param=key,
                               code="missing_field")
        transcript = (fields.get("transcript") or fields.get("text") or "").strip()
        if not transcript:
            raise APIError(400, "give the `transcript` of the clip (the words spoken in it)",
                           param="transcript", code="missing_field")
        fields["transcript"] = transcript
        upload = next((form.get(key) for key in ("audio", "file", "audio_sample")
                       if form.get(key) is not None and not isinstance(form.get(key), str)),
                      None)
        if upload is None:
            raise APIError(400, "attach the clip as the file field `audio`", param="audio",
                           code="missing_field")
        data = await upload.read()
        suffix = Path(upload.filename or "").suffix.lower()
    if not suffix.isascii() or len(suffix) > 8 or not suffix[1:].isalnum():
        suffix = ""
    if not data:
        raise APIError(400, "the uploaded clip is empty", param="audio", code="invalid_audio")
    return fields, data, suffix


def _add_routes(app: FastAPI, state: ServerState) -> None:  # noqa: C901 - a list of routes
    backend = state.backend

    # -- service -----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        worker = state.worker
        return {"status": "ok" if state.ready else "starting", "model": state.settings.model,
                "busy": worker.busy(), "queued": worker.queued(), "max_queue": worker.max_queue,
                "active_streams": worker.active(), "max_batch": worker.max_batch,
                "cached_sessions": backend.cached_sessions(), **worker.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": state.settings.model, "object": "model",
                                            "created": 0, "owned_by": "sesame"}]}

    # -- speech ------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request) -> Response:
        fmt = _check_output(body)
        if body.speed != 1.0:
            raise APIError(400, f"speed {body.speed} is not supported: CSM speaks at its own "
                           "pace; send 1.0 or leave it out", param="speed",
                           code="unsupported_value")
        if body.instructions:
            raise APIError(400, "instructions are not supported by CSM; pick the voice with "
                           "`voice` (a preset or an uploaded clip)", param="instructions",
                           code="unsupported_value")
        try:
            voice = body.voice_name()
        except ValueError as error:
            raise APIError(400, str(error), param="voice", code="invalid_value") from None
        if voice is not None and not is_safe_name(voice):
            raise APIError(404, f"unknown voice {voice!r}; GET /v1/voices lists them",
                           param="voice", code="voice_not_found")
        options = _generation_options(body, state.settings.max_audio_ms)
        streaming = body.streaming
        job = submit(request, lambda job: backend.speech(body.input, voice, body.speaker, options),
                     label="speech")
        return await audio_response(request, job, fmt, streaming=streaming,
                                    sse=body.stream_format == "sse")

    # -- voices ------------------------------------------------------------------------------
    @app.get("/v1/voices")
    def list_voices() -> dict:
        kinds = backend.voice_kinds()  # files only, no model work: answered even when busy
        return {"object": "list",
                "data": [{"id": name, "object": "audio.voice", "name": name, "type": kind}
                         for name, kind in kinds.items()]}

    async def create_voice(request: Request) -> JSONResponse:
        fields, data, suffix = await _read_clip_form(request, ("name",))
        name = check_name(fields["name"], "voice", "name")
        transcript = fields["transcript"]

        def register(job):
            if name in backend.voice_names():
                raise APIError(409, f"a voice named {name!r} already exists; pick another "
                               "name", param="name", code="voice_exists")
            yield backend.register_voice(name, path, transcript)

        path = spool_upload(data, suffix)
        try:
            info = (await run_job_result(request, submit(request, register,
                                                         "register voice")))[0]
        finally:
            path.unlink(missing_ok=True)
        return JSONResponse({"id": name, "object": "audio.voice", "name": name,
                             "type": "audio_sample", "transcript": transcript,
                             "duration_s": info["duration_s"], "warnings": info["warnings"]},
                            status_code=201)

    upload_form = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["name", "transcript", "audio"], "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN.pattern},
            "transcript": {"type": "string", "description": "the words spoken in the clip"},
            "audio": {"type": "string", "format": "binary",
                      "description": "the clip (wav, flac, mp3, ogg, ...)"}}}}}}}
    app.post("/v1/voices", status_code=201, openapi_extra=upload_form,
             summary="Upload a voice clip and its transcript")(create_voice)
    app.post("/v1/audio/voices", status_code=201, include_in_schema=False)(create_voice)

    @app.delete("/v1/voices/{name}", status_code=204, summary="Delete an uploaded voice")
    async def delete_voice(name: str, request: Request) -> Response:
        if not is_safe_name(name):
            raise APIError(404, f"no uploaded voice {name!r}; GET /v1/voices lists them",
                           param="name", code="voice_not_found")
        await run_job_result(request, submit(
            request, lambda job: [backend.remove_voice(name)], "delete voice"))
        return Response(status_code=204)

    # -- sessions ----------------------------------------------------------------------------
    def store():
        if backend.store is None:
            raise APIError(404, "this server keeps no sessions (start it with --db FILE)",
                           code="sessions_disabled")
        return backend.store

    def session_json(info) -> dict:
        return {"id": info.name, "object": "session", "created_at": info.created_at,
                "turn_count": info.turns, "duration_s": round(info.frames / FRAME_RATE, 2),
                "voice_count": info.voices, "meta": info.meta}

    def session_name(session_id: str) -> str:
        if not is_safe_name(session_id) or not store().has_session(session_id):
            raise APIError(404, f"no session {session_id!r}; create it with POST /v1/sessions",
                           param="session_id", code="session_not_found")
        return session_id

    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: SessionCreate, request: Request) -> dict:
        store()
        name = body.id if body.id is not None else f"session-{secrets.token_hex(4)}"
        check_name(name, "session", "id")
        await run_job_result(request, submit(
            request, lambda job: [backend.create_session(name, body.voices, body.meta)],
            "create session"))
        return session_json(store().session(name))

    @app.get("/v1/sessions")
    def list_sessions() -> dict:
        return {"object": "list", "data": [session_json(info) for info in store().sessions()]}

    @app.get("/v1/sessions/{session_id}")
    def show_session(session_id: str) -> dict:
        name = session_name(session_id)
        s = store()
        out = session_json(s.session(name))
        out["voices"] = [{"speaker": p.speaker, "text": p.text,
                                 "voice": (p.meta or {}).get("voice")}
                                for p in s.voice_prompts(name).values()]
        out["turns"] = [{"index": t.index, "speaker": t.speaker, "text": t.text,
                         "source": t.source, "duration_s": round(t.frames / FRAME_RATE, 2),
                         "seed": t.seed, "params": t.params, "created_at": t.created_at}
                        for t in s.turns(name)]
        return out

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> dict:
        name = session_name(session_id)
        await run_job_result(request, submit(
            request, lambda job: [backend.delete_session(name)], "delete session"))
        return {"id": name, "object": "session", "deleted": True}

    @app.post("/v1/sessions/{session_id}/voices")
    async def pin_voice(session_id: str, body: VoicePin, request: Request) -> dict:
        name = session_name(session_id)
        await run_job_result(request, submit(
            request, lambda job: [backend.pin_voice(name, body.speaker, body.voice)],
            "pin voice"))
        return show_session(name)

    @app.post("/v1/sessions/{session_id}/turns")
    async def add_turn(session_id: str, body: TurnRequest, request: Request) -> Response:
        name = session_name(session_id)
        fmt = _check_output(body)
        options = _generation_options(body, state.settings.max_audio_ms)
        streaming = body.streaming
        job = submit(request, lambda job: backend.turn(name, body.speaker, body.input, options),
                     "turn")
        return await audio_response(request, job, fmt, streaming=streaming,
                                    sse=body.stream_format == "sse",
                                    headers={"X-CSM-Session": name})

    @app.delete("/v1/sessions/{session_id}/turns/last")
    async def undo_turn(session_id: str, request: Request) -> dict:
        name = session_name(session_id)
        removed = (await run_job_result(request, submit(
            request, lambda job: [backend.undo(name)], "undo")))[0]
        if removed is None:
            raise APIError(404, f"session {name!r} has no turns to remove",
                           param="session_id", code="no_turns")
        return {"removed": removed, **session_json(store().session(name))}

    @app.post("/v1/sessions/{session_id}/recordings", status_code=201,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["speaker", "transcript", "audio"],
                      "properties": {
                          "speaker": {"type": "integer", "minimum": 0, "maximum": 1023},
                          "transcript": {"type": "string"},
                          "audio": {"type": "string", "format": "binary"}}}}}}},
              summary="Add a recorded turn (someone's real speech) to the session")
    async def add_recording(session_id: str, request: Request) -> dict:
        name = session_name(session_id)
        fields, data, suffix = await _read_clip_form(request, ("speaker",))
        try:
            speaker = OPTIONS["speaker"].parse(fields["speaker"])
        except InputError as error:
            raise APIError(400, str(error), param="speaker", code="invalid_value") from None
        path = spool_upload(data, suffix)
        try:
            (turn,) = await run_job_result(request, submit(
                request, lambda job: [backend.add_recording(name, speaker, fields["transcript"],
                                                            path)], "recorded turn"))
        finally:
            path.unlink(missing_ok=True)
        return turn

    @app.get("/v1/sessions/{session_id}/audio")
    async def session_audio(session_id: str, request: Request, response_format: str = "wav",
                            pause_s: float = 0.0) -> Response:
        name = session_name(session_id)
        fmt = _audio_format(response_format)
        try:
            pause_s = OPTIONS["pause"].check(pause_s, "pause_s")
        except InputError as error:
            raise APIError(400, str(error), param="pause_s", code="invalid_value") from None
        (audio,) = await run_job_result(request, submit(
            request, lambda job: [backend.session_audio(name, pause_s)], "session audio"))
        return Response(encode_audio(audio, fmt), media_type=MEDIA_TYPES[fmt],
                        headers={"X-CSM-Session": name})


    @app.get("/v1/sessions/{session_id}/turns/{index}/audio")
    async def turn_audio(session_id: str, index: int, request: Request,
                         response_format: str = "wav") -> Response:
        """One stored turn's audio (index from GET /v1/sessions/{id}); the web page's play button."""
        name = session_name(session_id)
        fmt = _audio_format(response_format)
        (audio,) = await run_job_result(request, submit(
            request, lambda job: [backend.turn_audio(name, index)], "turn audio"))
        return Response(encode_audio(audio, fmt), media_type=MEDIA_TYPES[fmt],
                        headers={"X-CSM-Session": name, "X-CSM-Turn-Index": str(index)})
