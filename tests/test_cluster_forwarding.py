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


# -- the ingress when a replica dies (a scripted stand-in for Ray Serve's handle) -----------------

class _Stream:
    def __init__(self, script: str, calls: list):
        self.script, self.calls, self.sent = script, calls, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        import ray.exceptions

        if self.script == "die" or (self.script == "die-after-headers" and self.sent):
            raise ray.exceptions.ActorDiedError()
        whole = self.script in ("whole", "die-after-headers")
        if self.sent:
            if self.script == "whole" and self.sent == 1:
                self.sent = 2
                return b"0123456789"
            raise StopAsyncIteration
        self.sent = 1
        return ResponseStart(200, [(b"x-csm-replica", b"live")] + ([(b"content-length", b"10")] if whole else []))

    def cancel(self):
        pass


class _Handle:
    """Answers `.options(...).remote(request)` with the next scripted stream ("die" or "ok")."""

    def __init__(self, scripts: list[str], on_call=None):
        self.scripts, self.calls, self.on_call = list(scripts), [], on_call

    def options(self, **_):
        return self

    def remote(self, request):
        self.calls.append(request)
        if self.on_call is not None:
            self.on_call(len(self.calls))
        return _Stream(self.scripts.pop(0), self.calls)


def _ingress_call(ingress, method, path, body=b""):
    from starlette.requests import Request

    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "scheme": "http",
             "root_path": "", "http_version": "1.1"}
    return asyncio.run(ingress(Request(scope, receive)))


def test_ingress_retries_only_what_stored_nothing(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the ingress needs ray[serve]: pip install -e '.[cluster]'")
    import dialogue.cluster.ingress as ingress_module
    from dialogue.cluster import ClusterSettings
    from dialogue.cluster.ingress import Ingress
    from storage import Store

    monkeypatch.setattr(ingress_module, "RETRY_PAUSE_S", 0.0)
    db = tmp_path / "talk.db"
    with Store(db) as store:
        store.open_session("demo")
    settings = ClusterSettings(model="tiny-random", db=str(db), retries=3, retry_after_s=4)

    # one-off speech stores nothing: sent again to a live replica, the client never knows
    handle = _Handle(["die", "ok"])
    reply = _ingress_call(Ingress(handle, settings), "POST", "/v1/audio/speech", b"{}")
    assert reply.status_code == 200 and len(handle.calls) == 2

    # a turn whose replica died before storing it (the revision did not move): sent again
    handle = _Handle(["die", "ok"])
    reply = _ingress_call(Ingress(handle, settings), "POST", "/v1/sessions/demo/turns", b"{}")
    assert reply.status_code == 200 and len(handle.calls) == 2

    # a turn stored just before its replica died: not sent again (it would be stored twice), and
    # the client is told it was stored, so that it does not send it again either
    def store_it(call):
        if call == 1:
            with Store(db) as store:
                store.append_turn("demo", speaker=0, text="stored", codes=np.zeros((1, 32), np.int32))

    handle = _Handle(["die", "ok"], on_call=store_it)
    reply = _ingress_call(Ingress(handle, settings), "POST", "/v1/sessions/demo/turns", b"{}")
    assert reply.status_code == 502 and "Retry-After" not in reply.headers
    error = json.loads(reply.body)["error"]
    assert error["code"] == "turn_stored_reply_lost" and "do not send it again" in error["message"]
    assert len(handle.calls) == 1

    # a whole-file turn whose replica dies after its headers, before its body: the ingress reads
    # whole files to their end, so it can still say what happened (and a whole one gets through)
    handle = _Handle(["die-after-headers", "whole"])
    reply = _ingress_call(Ingress(handle, settings), "POST", "/v1/sessions/demo/turns", b"{}")
    assert reply.status_code == 200 and reply.body == b"0123456789" and len(handle.calls) == 2
    handle = _Handle(["die-after-headers", "whole"], on_call=store_it)
    reply = _ingress_call(Ingress(handle, settings), "POST", "/v1/sessions/demo/turns", b"{}")
    assert reply.status_code == 502 and len(handle.calls) == 1
    assert json.loads(reply.body)["error"]["code"] == "turn_stored_reply_lost"

    # an upload may have been stored: 503 at once; and the retries run out: 503
    handle = _Handle(["die"])
    assert _ingress_call(Ingress(handle, settings), "POST", "/v1/voices").status_code == 503
    handle = _Handle(["die", "die", "die"])
    assert _ingress_call(Ingress(handle, settings), "GET", "/v1/voices").status_code == 503
    assert len(handle.calls) == 3

    # a body past the largest upload is refused at the ingress, in the API's shape
    small = ClusterSettings(model="tiny-random", db=str(db), max_upload_bytes=10)
    handle = _Handle(["ok"])
    reply = _ingress_call(Ingress(handle, small), "POST", "/v1/voices", b"x" * (1024 * 1024 + 11))
    assert reply.status_code == 413 and not handle.calls
