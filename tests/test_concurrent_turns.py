"""One writer per session: a second turn asked while one is generated is refused clearly (409
through the server), another writer's turn stored meanwhile is noticed, and nothing is ever stored
as if spoken after a turn it did not hear."""

from __future__ import annotations

import threading

import pytest

from dialogue.conversation import Conversation, SessionBusyError
from storage import ConcurrentWriteError, Store

SHORT = 320


def test_a_second_turn_while_one_is_generated_is_refused(tmp_path, tiny_model):
    conv = Conversation.open(tmp_path / "talk.db", session="s", model=tiny_model)
    stream = conv.say_stream(0, "First line.", seed=1, max_audio_length_ms=SHORT,
                             streaming_interval=0.08)
    next(stream)
    with pytest.raises(SessionBusyError, match="generating a turn now"):
        conv.say(1, "Second line.", seed=2, max_audio_length_ms=SHORT)
    for _ in stream:
        pass
    conv.say(1, "Second line.", seed=2, max_audio_length_ms=SHORT)  # now it hears the first
    assert [t.segment.text for t in conv.turns] == ["First line.", "Second line."]


def test_a_turn_another_writer_overtook_is_not_stored(tmp_path, tiny_model, tiny_model_path):
    from engine import load_model

    db = tmp_path / "talk.db"
    mine = Conversation.open(db, session="s", model=tiny_model)
    # another process, in effect: its own model and its own handle on the database
    other = Conversation.open(db, session="s", model=load_model(str(tiny_model_path)))
    stream = mine.say_stream(0, "Mine.", seed=1, max_audio_length_ms=SHORT, streaming_interval=0.08)
    next(stream)
    other.say(1, "Theirs came first.", seed=2, max_audio_length_ms=SHORT)
    with pytest.raises(SessionBusyError, match="changed while this turn was generated"):
        for _ in stream:
            pass
    assert [t.segment.text for t in Conversation.open(db, session="s", model=tiny_model).turns] == \
        ["Theirs came first."]


def test_the_store_checks_the_revision(tmp_path):
    store = Store(tmp_path / "t.db")
    store.open_session("s")
    rev = store.revision("s")
    store.append_turn("s", speaker=0, text="a", codes=[[1] * 32], expected_revision=rev)
    with pytest.raises(ConcurrentWriteError):
        store.append_turn("s", speaker=0, text="b", codes=[[1] * 32], expected_revision=rev)
    assert [t.text for t in store.turns("s")] == ["a"]


def test_concurrent_turns_on_one_session_through_the_server(csm_home, tmp_path):
    from test_server import RunningServer

    server = RunningServer(tmp_path / "talk.db")
    try:
        session = server.http.post("/v1/sessions", json={"voices": {"0": "conversational_a"}}).json()["id"]
        replies = [None] * 4

        def turn(i):
            replies[i] = server.http.post(f"/v1/sessions/{session}/turns", json={
                "speaker": i % 2, "input": f"Line number {i}.", "seed": i,
                "max_audio_length_ms": 640, "stream": False})

        threads = [threading.Thread(target=turn, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        codes = [r.status_code for r in replies]
        assert all(c in (200, 409) for c in codes) and 200 in codes, codes
        for r in replies:
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "session_busy"
        stored = server.http.get(f"/v1/sessions/{session}").json()["turns"]
        # every accepted turn is stored, in order, each one generated after the ones before it
        assert len(stored) == codes.count(200)
        assert [t["index"] for t in stored] == list(range(len(stored)))
    finally:
        server.stop()
