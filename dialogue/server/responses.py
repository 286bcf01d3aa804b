"""From a queued generation job to an HTTP response: streamed, server-sent events, or whole.

The status line waits for the job's first chunk: errors found before any audio exists (unknown
voice, context too long, bad options) still get their own status code, and once audio flows the
response is 200. While a request waits (in the queue, or for a whole file) the client's
connection is watched; a client that goes away cancels its job. During a stream, Starlette
cancels the body iterator when the client disconnects, which cancels the job too; the worker
notices between chunks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, AsyncIterator, Callable

import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from engine.constants import SAMPLE_RATE

from .audio_formats import MEDIA_TYPES, StreamEncoder, encode_audio
from .backend import AudioChunk
from .errors import APIError, as_api_error
from .worker import Job

log = logging.getLogger("csm.server")

POLL_S = 0.2  # how often a waiting request checks that its client is still there


class ClientGone(Exception):
    """The client disconnected while its request waited."""


async def _next_watching(items: AsyncIterator, request: Request) -> Any:
    """The next item of `items`, giving up (ClientGone) if the client disconnects meanwhile."""
    task = asyncio.ensure_future(items.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass


def _headers(first: AudioChunk | None, extra: dict[str, str] | None) -> dict[str, str]:
    headers = dict(extra or {})
    if first is not None and first.seed is not None:
        headers["X-CSM-Seed"] = str(first.seed)
    if first is not None and "turn_index" in first.info:
        headers["X-CSM-Turn-Index"] = str(first.info["turn_index"])
    return headers


async def audio_response(request: Request, job: Job, response_format: str, *, streaming: bool,
                         sse: bool = False, headers: dict[str, str] | None = None,
                         sample_rate: int = SAMPLE_RATE) -> Response:
    items = job.items()
    try:
        try:
            first = await _next_watching(items, request)
        except StopAsyncIteration:
            first = None
        if not streaming:
            chunks = [first] if first is not None else []
            while first is not None:
                try:
                    chunks.append(await _next_watching(items, request))
                except StopAsyncIteration:
                    break
            audio = [c.audio for c in chunks]
            joined = np.concatenate(audio) if audio else np.zeros(0, np.float32)
            body = encode_audio(joined, response_format, sample_rate)
            return Response(body, media_type=MEDIA_TYPES[response_format],
                            headers=_headers(first, headers))
    except ClientGone:
        job.cancel()
        await items.aclose()
        return Response(status_code=499)  # nobody reads it; logged like nginx's "client closed"
    except BaseException:
        job.cancel()
        await items.aclose()
        raise
    if sse:
        body_iter = _sse_body(first, items, response_format)
        media_type = "text/event-stream"
    else:
        body_iter = _audio_body(first, items, response_format)
        media_type = MEDIA_TYPES[response_format]
    extra = _headers(first, headers)
    extra.setdefault("Cache-Control", "no-store")
    extra["X-Accel-Buffering"] = "no"  # proxies: pass chunks through as they come
    return StreamingResponse(body_iter, media_type=media_type, headers=extra)


async def _audio_body(first: AudioChunk | None, items: AsyncIterator,
                      response_format: str) -> AsyncIterator[bytes]:
    encoder = StreamEncoder(response_format)
    try:
        if first is not None:
            data = encoder.encode(first.audio)
            if data:
                yield data
        async for chunk in items:
            data = encoder.encode(chunk.audio)
            if data:
                yield data
        tail = encoder.finish()
        if tail:
            yield tail
    except asyncio.CancelledError:
        log.info("client disconnected mid-stream; generation cancelled")
        raise
    except Exception:
        log.exception("generation failed mid-stream; the response is cut short")
        raise
    finally:
        await items.aclose()


def _sse_event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _sse_body(first: AudioChunk | None, items: AsyncIterator,
                    response_format: str) -> AsyncIterator[bytes]:
    """OpenAI's speech events: speech.audio.delta (base64 audio bytes) then speech.audio.done."""
    encoder = StreamEncoder(response_format)
    prompt_tokens = first.prompt_tokens if first is not None else 0
    frames = 0

    def delta(data: bytes) -> bytes:
        return _sse_event({"type": "speech.audio.delta",
                           "audio": base64.b64encode(data).decode("ascii")})

    try:
        pending = [first] if first is not None else []
        async for chunk in _chain(pending, items):
            frames += chunk.frames
            data = encoder.encode(chunk.audio)
            if data:
                yield delta(data)
        tail = encoder.finish()
        if tail:
            yield delta(tail)
        yield _sse_event({"type": "speech.audio.done",
                          "usage": {"input_tokens": prompt_tokens, "output_tokens": frames,
                                    "total_tokens": prompt_tokens + frames}})
    except asyncio.CancelledError:
        log.info("client disconnected mid-stream; generation cancelled")
        raise
    except Exception as error:
        log.exception("generation failed mid-stream")
        yield _sse_event({"type": "error", **as_api_error(error).body()})
    finally:
        await items.aclose()


async def _chain(first: list, rest: AsyncIterator) -> AsyncIterator:
    for item in first:
        yield item
    async for item in rest:
        yield item


async def run_job_result(request: Request, job: Job) -> list[Any]:
    """Every item of a non-audio job, cancelling it if the client goes away first."""
    items = job.items()
    out = []
    try:
        while True:
            try:
                out.append(await _next_watching(items, request))
            except StopAsyncIteration:
                return out
    except ClientGone:
        raise APIError(499, "client closed the request") from None
    finally:
        await items.aclose()


def submit(request: Request, fn: Callable[[Job], Any], label: str) -> Job:
    return request.app.state.csm.worker.submit(fn, label=label)
