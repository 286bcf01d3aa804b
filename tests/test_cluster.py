"""`csm serve --replicas N` behind Ray Serve, for real: a local Ray instance on 127.0.0.1, two
tiny-random model replicas, sessions in a throwaway PostgreSQL.

One Ray application is started for the module (it takes most of the time: Ray, then two replicas
loading the model); the tests take turns on it. Skipped, saying why, without ray[serve] or
PostgreSQL.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

serve = pytest.importorskip("ray.serve", reason="the cluster tests need ray[serve]: "
                            "pip install -e '.[cluster]'")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import ray  # noqa: E402

from dialogue.cluster import ClusterSettings  # noqa: E402
from dialogue.cluster.app import APP_NAME, start, stop  # noqa: E402
from dialogue.conversation import Conversation  # noqa: E402
from storage import open_store  # noqa: E402

SHORT = 400.0  # ms: 5 frames
OPTIONS = {"temperature": 0.9, "top_k": 50, "max_audio_length_ms": SHORT, "stream": False,
           "response_format": "wav"}
SESSIONS = ("alpha", "beta", "gamma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(postgres_cluster, tiny_model_path):
    url = postgres_cluster.new_url()
    port = _free_port()
    start(ClusterSettings(model=str(tiny_model_path), db=url, replicas=2, retry_after_s=1),
          host="127.0.0.1", port=port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        yield client, url
    finally:
        client.close()
        stop()


def _turn_text(session: str, index: int) -> str:
    return f"Turn {index} of {session}."


def _seed(session: str, index: int) -> int:
    return 100 * (SESSIONS + ("delta",)).index(session) + index


def take_turn(client, session: str, index: int, **extra) -> httpx.Response:
    """One turn, sent again after a 503 (as a client honouring Retry-After would)."""
    body = {"speaker": index % 2, "input": _turn_text(session, index),
            "seed": _seed(session, index), **OPTIONS, **extra}
    for _ in range(30):
        reply = client.post(f"/v1/sessions/{session}/turns", json=body)
        if reply.status_code != 503:
            return reply
        assert reply.json()["error"]["message"] and int(reply.headers["Retry-After"]) >= 1
        time.sleep(int(reply.headers["Retry-After"]))
    return reply


def _kill_replica(name: str) -> None:
    actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#ModelReplica#{name}", namespace="serve")
    ray.kill(actor, no_restart=True)  # the replica's process dies at once, like kill -9


def reference_turns(tiny_model, tmp_path, turns: int) -> dict[str, list]:
    """The same sessions, turns and seeds, undisturbed, in one process on SQLite: the Segments."""
    out = {}
    for session in SESSIONS:
        tiny_model.generator.reset()
        with Conversation.open(tmp_path / "reference.db", session, model=tiny_model) as conv:
            out[session] = [conv.say(i % 2, _turn_text(session, i), seed=_seed(session, i),
                                     temperature=0.9, top_k=50, max_audio_length_ms=SHORT)
                            for i in range(turns)]
    return out


def test_sessions_stick_to_replicas_and_survive_a_replica_kill(cluster, tiny_model, tmp_path):
    client, url = cluster
    for session in SESSIONS:
        assert client.post("/v1/sessions", json={"id": session}).status_code == 201
    # Ray Serve's routers hear where a session is held asynchronously (the ingress waits a moment
    # after creating one; on a loaded machine the reports can take longer): let them settle, so
    # that what is checked below is that sessions then stay where they are
    time.sleep(1.0)
    placed: dict[str, set[str]] = {s: set() for s in SESSIONS}
    for index in range(2):
        for session in SESSIONS:
            reply = take_turn(client, session, index)
            assert reply.status_code == 200, reply.text
            assert reply.headers["X-CSM-Turn-Index"] == str(index)
            placed[session].add(reply.headers["X-CSM-Replica"])
    assert all(len(names) == 1 for names in placed.values()), placed  # stable replicas
    holder = {s: next(iter(names)) for s, names in placed.items()}

    # the same errors as one server
    missing = client.get("/v1/sessions/nobody")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
    bad = client.post("/v1/sessions/alpha/turns", json={"speaker": -1, "input": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "speaker"
    speech = client.post("/v1/audio/speech", json={"model": "csm-1b", "input": "Anyone.",
                                                   "seed": 5, "max_audio_length_ms": SHORT})
    assert speech.status_code == 200 and speech.headers["X-CSM-Replica"]

    # kill the replica holding alpha, then every session goes on
    _kill_replica(holder["alpha"])
    for index in (2, 3):
        for session in SESSIONS:
            reply = take_turn(client, session, index)
            assert reply.status_code == 200, reply.text
            assert reply.headers["X-CSM-Turn-Index"] == str(index)
            if session == "alpha":
                assert reply.headers["X-CSM-Replica"] != holder["alpha"]

    expected = reference_turns(tiny_model, tmp_path, 4)
    with open_store(url, readonly=True) as store:
        for session in SESSIONS:
            turns = store.turns(session)
            assert [t.index for t in turns] == [0, 1, 2, 3]  # none lost, none twice
            assert [t.text for t in turns] == [seg.text for seg in expected[session]]
            for turn, segment in zip(turns, expected[session]):
                assert np.array_equal(turn.codes, segment.codes), (session, turn.index)


def test_a_replica_killed_mid_request_fails_it_cleanly(cluster, tiny_model, tmp_path):
    """Kill the replica while it streams a long turn: the response is cut or refused (503), the
    turn is stored whole or not at all, and sent again it gives the undisturbed codes."""
    client, url = cluster
    session = "delta"
    assert client.post("/v1/sessions", json={"id": session}).status_code == 201
    first = take_turn(client, session, 0)
    assert first.status_code == 200
    replica = first.headers["X-CSM-Replica"]
    long_turn = {"input": " ".join(["A long turn that keeps the replica busy for a while."] * 6),
                 "seed": 7, "speaker": 1, "temperature": 0.9, "top_k": 50,
                 "max_audio_length_ms": 4_000, "stream": True, "streaming_interval": 0.08,
                 "response_format": "pcm"}
    outcome = {}

    def stream_it():
        try:
            with client.stream("POST", f"/v1/sessions/{session}/turns", json=long_turn) as reply:
                outcome["status"] = reply.status_code
                outcome["replica"] = reply.headers.get("X-CSM-Replica")
                received = 0
                for chunk in reply.iter_bytes():
                    received += len(chunk)
                    outcome["received"] = received
                outcome["complete"] = True
        except httpx.HTTPError as error:
            outcome["error"] = type(error).__name__

    reader = threading.Thread(target=stream_it)
    reader.start()
    deadline = time.time() + 60
    while "received" not in outcome and "error" not in outcome and time.time() < deadline:
        time.sleep(0.01)
    _kill_replica(replica)
    reader.join(timeout=120)
    assert not reader.is_alive()
    with open_store(url, readonly=True) as store:
        stored = store.turns(session)
    assert [t.index for t in stored] in ([0], [0, 1])  # whole or nothing, never twice
    if outcome.get("complete"):
        assert outcome["status"] in (200, 503)
    if len(stored) == 1:  # not stored: the client sends the turn again, elsewhere
        again = client.post(f"/v1/sessions/{session}/turns", json={**long_turn, "stream": False,
                                                                   "response_format": "wav"})
        for _ in range(30):
            if again.status_code != 503:
                break
            time.sleep(int(again.headers["Retry-After"]))
            again = client.post(f"/v1/sessions/{session}/turns",
                                json={**long_turn, "stream": False, "response_format": "wav"})
        assert again.status_code == 200, again.text
        assert again.headers["X-CSM-Replica"] != replica
    with open_store(url, readonly=True) as store:
        stored = store.turns(session)
    assert [t.index for t in stored] == [0, 1]
    tiny_model.generator.reset()
    with Conversation.open(tmp_path / "reference.db", session, model=tiny_model) as conv:
        conv.say(0, _turn_text(session, 0), seed=_seed(session, 0), temperature=0.9, top_k=50,
                 max_audio_length_ms=SHORT)
        expected = conv.say(1, long_turn["input"], seed=7, temperature=0.9, top_k=50,
                            max_audio_length_ms=4_000)
    assert np.array_equal(stored[1].codes, expected.codes)

    # a whole-file turn whose replica dies before it answers: when nothing was stored (the
    # session's revision is unchanged) the ingress sends it to another replica and the client gets
    # 200 (or, had the retries run out, a 503 with Retry-After, and sends it again); when the dying
    # replica had already stored it, the client gets 502 turn_stored_reply_lost and must not send
    # it again. Either way the turn is stored once
    holder = client.get(f"/v1/sessions/{session}").headers["X-CSM-Replica"]
    whole = {**long_turn, "seed": 8, "stream": False, "response_format": "wav"}
    result = {}
    sender = threading.Thread(target=lambda: result.update(
        reply=client.post(f"/v1/sessions/{session}/turns", json=whole)))
    sender.start()
    time.sleep(0.5)
    _kill_replica(holder)
    sender.join(timeout=180)
    reply = result["reply"]
    assert reply.status_code in (200, 502, 503), reply.text
    if reply.status_code == 502:
        assert reply.json()["error"]["code"] == "turn_stored_reply_lost", reply.text
    elif reply.status_code == 503:
        assert int(reply.headers["Retry-After"]) >= 1
        reply = take_turn(client, session, 2, **{k: v for k, v in whole.items() if k != "speaker"})
        assert reply.status_code == 200
    with open_store(url, readonly=True) as store:
        assert [t.index for t in store.turns(session)] == [0, 1, 2]
    print("mid-request outcomes:", outcome, reply.status_code, reply.headers.get("X-CSM-Replica"),
          holder)
