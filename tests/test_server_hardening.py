"""The HTTP surface of the hardening (issue classes 1, 2, 6 and 7), through FastAPI's test client:
the shared option checks answer 400 naming the field, a failed request stores nothing, uploads are
bounded by their decoded length, voices can be deleted, error replies show no server paths, and an
empty API key is refused."""

from __future__ import annotations

import io
import tempfile

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dialogue.server import create_app  # noqa: E402
from engine.errors import InputError  # noqa: E402

SR = 24_000


def _wav(seconds: float, rate: int = SR) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("server-hardening") / "talk.db"
    with TestClient(create_app("tiny-random", db), raise_server_exceptions=False) as client:
        client.db = db
        yield client


def _error(reply, status, param=None):
    assert reply.status_code == status, reply.text
    body = reply.json()["error"]
    if param is not None:
        assert body["param"] == param, body
    return body["message"]


@pytest.mark.parametrize("field,value,words", [
    ("temperature", "0.5", "temperature must be a finite number from 0 to 5"),
    ("temperature", 1e308 * 10, None),  # JSON has no inf: the client sends a huge number
    ("seed", 99999999999999999999, "seed must be a whole number from 0 to 4294967295"),
    ("seed", -1, "seed must be a whole number"),
    ("seed", 1.5, "seed must be a whole number"),
    ("top_k", True, "top_k must be a whole number"),
    ("max_audio_length_ms", 1e9, "max_audio_length_ms must be a finite number from 80 to 163840"),
    ("streaming_interval", 0, "streaming_interval must be a finite number above 0"),
    ("speaker", 99999999999999999999, "speaker must be a whole number from 0 to 1023"),
    ("speaker", "1", "speaker must be a whole number"),
])
def test_speech_options_are_checked_as_everywhere_else(client, field, value, words):
    body = {"model": "csm-1b", "input": "Hello.", field: value}
    if value == float("inf"):
        reply = client.post("/v1/audio/speech", content=f'{{"model": "x", "input": "Hi", "{field}": 1e999}}',
                            headers={"Content-Type": "application/json"})
    else:
        reply = client.post("/v1/audio/speech", json=body)
    message = _error(reply, 400, param=field)
    if words:
        assert words in message
    assert "Value error" not in message


def test_a_session_with_a_bad_speaker_id_or_voice_is_not_created(client):
    reply = client.post("/v1/sessions", json={"id": "bad-speaker",
                                              "voices": {"99999999999999999999": "conversational_a"}})
    assert "speaker id" in _error(reply, 400, param="voices")
    reply = client.post("/v1/sessions", json={"id": "bad-voice",
                                              "voices": {"0": "conversational_a", "1": "nobody"}})
    _error(reply, 404, param="voices.1")
    names = [s["id"] for s in client.get("/v1/sessions").json()["data"]]
    assert "bad-speaker" not in names and "bad-voice" not in names
    assert client.post("/v1/sessions", json={"id": "good", "voices": {"0": "conversational_a"}}
                       ).status_code == 201


def test_session_audio_pause_uses_the_shared_check(client):
    client.post("/v1/sessions", json={"id": "pauses"})
    message = _error(client.get("/v1/sessions/pauses/audio", params={"pause_s": "nan"}), 400,
                     param="pause_s")
    assert "pause_s must be a finite number from 0 to 60" in message
    _error(client.get("/v1/sessions/pauses/audio", params={"pause_s": "1e7"}), 400, param="pause_s")


def test_an_upload_is_bounded_by_its_decoded_length_before_it_is_decoded(client):
    long_clip = _wav(45.0, rate=8000)  # small in bytes, too long as a voice
    reply = client.post("/v1/voices", data={"name": "longvoice", "transcript": "Words."},
                        files={"audio": ("long.wav", long_clip, "audio/wav")})
    assert "45.0 s long; a voice may be at most 30 s" in _error(reply, 400)
    assert "longvoice" not in [v["id"] for v in client.get("/v1/voices").json()["data"]]
    client.post("/v1/sessions", json={"id": "recorded"})
    hour = _wav(200.0, rate=8000)
    reply = client.post("/v1/sessions/recorded/recordings", data={"speaker": "0", "transcript": "x"},
                        files={"audio": ("long.wav", hour, "audio/wav")})
    assert "200.0 s long; at most 163.84 s" in _error(reply, 400)
    assert client.get("/v1/sessions/recorded").json()["turn_count"] == 0


def test_error_replies_do_not_show_server_paths(client):
    reply = client.post("/v1/voices", data={"name": "junk", "transcript": "Words."},
                        files={"audio": ("junk.wav", b"RIFF not really a wav file", "audio/wav")})
    message = _error(reply, 400)
    assert tempfile.gettempdir() not in message and "csm-upload" not in message
    assert "the uploaded clip" in message


def test_voices_can_be_deleted(client):
    reply = client.post("/v1/voices", data={"name": "tobedeleted", "transcript": "Some words."},
                        files={"audio": ("v.wav", _wav(3.0), "audio/wav")})
    assert reply.status_code == 201, reply.text
    assert client.delete("/v1/voices/tobedeleted").status_code == 204
    assert "tobedeleted" not in [v["id"] for v in client.get("/v1/voices").json()["data"]]
    _error(client.delete("/v1/voices/tobedeleted"), 404)
    _error(client.delete("/v1/voices/..%2Fetc"), 404)
    _error(client.delete("/v1/voices/conversational_a"), 409)


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_refused_by_the_app(key):
    with pytest.raises(InputError, match="API key is empty"):
        create_app("tiny-random", None, api_key=key)


def test_serve_refuses_empty_keys_and_reads_a_key_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dialogue.cli import main
    from dialogue.cli.serve import _api_key

    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "--model", "tiny-random", "--api-key", ""])
    assert refused.exit_code == 2 and "empty" in refused.output
    monkeypatch.setenv("CSM_API_KEY", "")
    refused = runner.invoke(main, ["serve", "--model", "tiny-random"])
    assert refused.exit_code == 2 and "$CSM_API_KEY is empty" in refused.output
    monkeypatch.delenv("CSM_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    assert _api_key(None, key_file) == "s3cret-key"
    monkeypatch.setenv("CSM_API_KEY", "other")
    with pytest.raises(Exception, match="more than once"):
        _api_key(None, key_file)
    monkeypatch.setenv("CSM_API_KEY", "from-env")
    assert _api_key(None, None) == "from-env"
