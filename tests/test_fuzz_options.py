"""Property-based fuzzing of the command line and the HTTP API with hypothesis.

Option values are drawn from everything a user (or an attacker) might send: floats including nan
and inf, huge and negative ints, bools, None, odd strings, lists and objects. Whatever is drawn,
the answer is a clear error (exit code 2 naming the option / a 4xx in OpenAI's error shape) or a
success, never a traceback or a 500, and a request that fails stores nothing.

Bounded for CI: few examples, derandomized (the same cases every run), and each success generates
at most two frames (the text-length frame cap is patched down for the module).
"""

from __future__ import annotations

import json
import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import engine.generator as generator_module  # noqa: E402
from dialogue.cli import main  # noqa: E402
from engine.errors import InputError  # noqa: E402
from engine.option_checks import OPTIONS  # noqa: E402
from storage import Store  # noqa: E402

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 2**64, 1e308, -0.0, 0.5, 80, 163840, 1023]),
)
ODD_TEXT = st.one_of(
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "0x10", "1_000", "½", "٣", "NaN",
                     "None", "true", "12abc", "\x00", "9" * 40, "--help"]),
    st.text(max_size=12),
)
ANY_JSON = st.one_of(NUMBERS, ODD_TEXT, st.booleans(), st.none(),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                          st.integers(), max_size=1))
CLI_OPTIONS = ["temperature", "top_k", "seed", "max_audio_length_ms", "speaker"]


@pytest.fixture(scope="module", autouse=True)
def two_frames_at_most():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generator_module, "text_frame_cap", lambda text, frame_rate=12.5: 2)
        yield


@pytest.fixture(scope="module")
def shared_model(tiny_model):
    """`csm` loads this one model instead of loading it again for every example."""
    import engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "load_model", lambda *args, **kwargs: tiny_model)
        yield tiny_model


def _cli_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _accepted(name: str, text: str) -> bool:
    try:
        OPTIONS[name].parse(text)
        return True
    except InputError:
        return False


@FUZZ
@given(name=st.sampled_from(CLI_OPTIONS), value=st.one_of(NUMBERS, ODD_TEXT))
def test_cli_say_gives_a_clear_error_or_a_turn_and_stores_nothing_that_failed(
        shared_model, tmp_path_factory, name, value):
    db = tmp_path_factory.mktemp("fuzz") / "t.db"
    text = _cli_value(value)
    args = ["say", "--db", str(db), "--session", "s", "--seed", "1"]
    if name != "seed":
        args += [f"--{name}", text]
    else:
        args = ["say", "--db", str(db), "--session", "s", "--seed", text]
    result = CliRunner().invoke(main, [*args, "--", "Hello."])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    event(f"exit {result.exit_code}")
    if result.exit_code == 0:
        assert _accepted(name, text)
        with Store(db) as store:
            assert len(store.turns("s")) == 1
        return
    assert result.exit_code in (1, 2), result.output
    if not _accepted(name, text):
        assert result.exit_code == 2 and name in result.output
    assert not db.exists() or Store(db).sessions() == []


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz-http") / "talk.db"
    with TestClient(__import__("dialogue.server", fromlist=["create_app"]).create_app(
            "tiny-random", db), raise_server_exceptions=False) as client:
        assert client.post("/v1/sessions", json={"id": "base"}).status_code == 201
        yield client


def _post_json(client, path: str, body: dict):
    content = json.dumps(body, allow_nan=True)  # NaN / Infinity literals, as sloppy clients send
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


def _check_reply(reply) -> None:
    event(f"HTTP {reply.status_code}")
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert error["message"] and error["type"]
        assert "Traceback" not in error["message"]


SPEECH_FIELDS = ["temperature", "top_k", "seed", "max_audio_length_ms", "streaming_interval",
                 "speaker", "voice", "input", "response_format", "stream", "speed", "model"]


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(SPEECH_FIELDS), ANY_JSON, min_size=1, max_size=3))
def test_http_speech_never_answers_500(client, fields):
    body = {"model": "csm-1b", "input": "Hi.", "response_format": "pcm", "stream": False,
            **fields}
    _check_reply(_post_json(client, "/v1/audio/speech", body))


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["temperature", "top_k", "seed", "speaker",
                                               "max_audio_length_ms", "input"]),
                              ANY_JSON, min_size=1, max_size=2))
def test_http_turns_store_nothing_when_they_fail(client, fields):
    before = client.get("/v1/sessions/base").json()["turn_count"]
    body = {"speaker": 0, "input": "Hi.", "response_format": "pcm", "stream": False, **fields}
    reply = _post_json(client, "/v1/sessions/base/turns", body)
    _check_reply(reply)
    after = client.get("/v1/sessions/base").json()["turn_count"]
    assert after == before + (1 if reply.status_code == 200 else 0)


@FUZZ
@given(speaker=st.one_of(st.sampled_from(["0", "1", "1023", "1024"]), NUMBERS.map(_cli_value),
                         ODD_TEXT),
       voice=st.one_of(st.sampled_from(["conversational_a", "conversational_b", "nobody"]),
                       ANY_JSON),
       meta=st.one_of(st.none(), st.just({"a": 1}), ANY_JSON))
def test_http_session_creation_is_all_or_nothing(client, speaker, voice, meta):
    name = f"fz-{abs(hash((str(speaker), str(voice), str(meta)))) % 10**9}"
    body = {"id": name, "voices": {speaker: voice}}
    if meta is not None:
        body["meta"] = meta
    reply = _post_json(client, "/v1/sessions", body)
    _check_reply(reply)
    listed = [s["id"] for s in client.get("/v1/sessions").json()["data"]]
    assert (name in listed) == (reply.status_code == 201)
    if reply.status_code == 201:
        client.delete(f"/v1/sessions/{name}")
