"""The parts of the cluster app that need no Ray: which session a request belongs to, and a
request carried to a replica and run through the server's own FastAPI app (dialogue/cluster/)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")

from dialogue.cli import main  # noqa: E402
from dialogue.cluster.asgi import HTTPRequest, ResponseStart, run_asgi  # noqa: E402
from dialogue.cluster.routing import session_of, stores_nothing, writes_a_turn  # noqa: E402


def test_session_of_a_request():
    assert session_of(HTTPRequest("POST", "/v1/sessions/demo/turns")) == "demo"
    assert session_of(HTTPRequest("GET", "/v1/sessions/demo")) == "demo"
    assert session_of(HTTPRequest("GET", "/v1/sessions/demo/audio")) == "demo"
    body = json.dumps({"id": "new-one", "voices": {}}).encode()
    assert session_of(HTTPRequest("POST", "/v1/sessions", body=body)) == "new-one"
    assert session_of(HTTPRequest("POST", "/v1/sessions", body=b"{not json")) is None
    assert session_of(HTTPRequest("GET", "/v1/sessions")) is None
    assert session_of(HTTPRequest("POST", "/v1/audio/speech")) is None
    assert session_of(HTTPRequest("GET", "/v1/sessions/..%2F..")) is None  # not a safe name
    assert writes_a_turn(HTTPRequest("POST", "/v1/sessions/demo/turns"))
    assert writes_a_turn(HTTPRequest("POST", "/v1/sessions/demo/recordings"))
    assert not writes_a_turn(HTTPRequest("GET", "/v1/sessions/demo"))
    assert stores_nothing(HTTPRequest("POST", "/v1/audio/speech"))
    assert stores_nothing(HTTPRequest("GET", "/v1/sessions/demo"))
    assert not stores_nothing(HTTPRequest("POST", "/v1/voices"))


async def _collect(app, request):
    parts = [part async for part in run_asgi(app, request, [(b"x-csm-replica", b"r1")])]
    start, body = parts[0], b"".join(parts[1:])
    assert isinstance(start, ResponseStart)
    return start, body, len(parts) - 1


def test_a_forwarded_request_gets_the_apps_own_answer(tiny_model_path, tmp_path):
    from dialogue.server import create_app

    app = create_app(str(tiny_model_path), tmp_path / "talk.db")
    state = app.state.csm
    state.start()
    try:
        start, body, _ = asyncio.run(_collect(app, HTTPRequest("GET", "/v1/sessions/nobody")))
        assert start.status == 404 and (b"x-csm-replica", b"r1") in start.headers
        assert json.loads(body)["error"]["code"] == "session_not_found"
        created = HTTPRequest("POST", "/v1/sessions", headers=((b"content-type", b"application/json"),),
                              body=json.dumps({"id": "demo"}).encode())
        assert asyncio.run(_collect(app, created))[0].status == 201
        turn = {"speaker": 0, "input": "Hello.", "seed": 3, "max_audio_length_ms": 400.0,
                "response_format": "pcm", "streaming_interval": 0.08}
        request = HTTPRequest("POST", "/v1/sessions/demo/turns",
                              headers=((b"content-type", b"application/json"),),
                              body=json.dumps(turn).encode())
        start, body, chunks = asyncio.run(_collect(app, request))
        assert start.status == 200 and chunks > 1  # streamed as the app streams it
        headers = dict(start.headers)
        assert headers[b"x-csm-turn-index"] == b"0" and headers[b"x-csm-seed"] == b"3"
        stored = state.backend.store.turns("demo")
        assert len(stored) == 1 and np.frombuffer(body, "<i2").size == stored[0].frames * 1920
    finally:
        state.worker.stop()
        state.backend.close()


def test_serve_replicas_refuses_sqlite_on_a_ray_cluster(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--replicas", "2", "--ray-address", "auto",
                                       "--db", str(tmp_path / "talk.db"), "--model", "tiny-random"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        assert "pip install 'csm-mlx-engine[cluster]'" in result.output
    else:
        assert "postgresql://" in result.output
