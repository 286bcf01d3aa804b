"""The HTTP server, for real: uvicorn on a loopback port, the tiny-random model, and clients.

Servers run in background threads (uvicorn.Server), each with its own model worker thread.
Every request has a timeout, so a hang fails a test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402

from dialogue.server import create_app  # noqa: E402
from dialogue.server.audio_formats import (  # noqa: E402
    StreamEncoder, encode_audio, supported_formats, to_pcm16, wav_header)
from dialogue.server.names import is_safe_name  # noqa: E402

TIMEOUT = 60.0  # seconds, per request
SR = 24_000
FRAME = 1920  # samples per Mimi frame
SHORT = 400.0  # max_audio_length_ms for quick generations (5 frames)


# ---------------------------------------------------------------------------------------------
# Audio formats and names (no server)
# ---------------------------------------------------------------------------------------------


def _tone(seconds=1.5):
    t = np.arange(int(SR * seconds)) / SR
    return (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def encode_stream(chunks, response_format: str) -> list[bytes]:
    """The bytes a streamed response sends for these float chunks (as responses.py feeds them)."""
    encoder = StreamEncoder(response_format)
    return [encoder.encode(chunk) for chunk in chunks] + [encoder.finish()]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_every_format_encodes_whole_and_streamed_to_24k_audio(fmt):
    if fmt not in supported_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    audio = _tone()
    whole, _ = sf.read(io.BytesIO(encode_audio(audio, fmt)), dtype="int16")
    streamed = b"".join(encode_stream(np.array_split(audio, 7), fmt))
    again, sr = sf.read(io.BytesIO(streamed), dtype="int16")
    assert sr == SR and whole.ndim == again.ndim == 1
    if fmt in ("wav", "flac"):  # lossless: exactly the 16-bit samples
        assert np.array_equal(whole, to_pcm16(audio))
        assert np.array_equal(again, to_pcm16(audio))
    else:  # lossy: right length (mp3 streams carry a short lead-in), clearly the same signal
        assert abs(len(again) - len(audio)) <= 2 * 1152 + 576
        assert abs(len(whole) - len(audio)) <= 2 * 1152


def test_pcm_is_raw_little_endian_int16_and_streams_identically():
    audio = _tone(0.5)
    pcm = encode_audio(audio, "pcm")
    assert pcm == to_pcm16(audio).astype("<i2").tobytes()
    assert b"".join(encode_stream(np.array_split(audio, 5), "pcm")) == pcm
    streamed_wav = b"".join(encode_stream(np.array_split(audio, 5), "wav"))
    assert streamed_wav[44:] == pcm and streamed_wav[:44] == wav_header(None)
    assert encode_audio(audio, "wav") == wav_header(len(audio)) + pcm


def test_empty_stream_is_still_a_valid_wav():
    encoder = StreamEncoder("wav")
    data = encoder.finish()
    assert sf.read(io.BytesIO(data))[0].size == 0


@pytest.mark.parametrize("name,ok", [
    ("alice", True), ("conversational_a", True), ("Voice-2", True), ("a" * 64, True),
    ("", False), ("../etc", False), (".hidden", False), ("a/b", False), ("a b", False),
    ("-x", False), ("x" * 65, False), ("voice.wav", False), ("ünï", False), ("a\x00", False),
])
def test_safe_names(name, ok):
    assert is_safe_name(name) is ok


# ---------------------------------------------------------------------------------------------
# A real server in a background thread
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, db: Path | None, **options):
        self.app = create_app("tiny-random", db, **options)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 300
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.base_url, timeout=TIMEOUT)
        self.openai = openai.OpenAI(base_url=self.base_url + "/v1", api_key="not-needed",
                                    timeout=TIMEOUT, max_retries=0)

    @property
    def worker(self):
        return self.app.state.csm.worker

    def wait_idle(self, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.http.get("/health").json()
            if not health["busy"] and health["queued"] == 0:
                return health
            assert time.monotonic() < deadline, f"the worker stayed busy: {health}"
            time.sleep(0.05)

    def stop(self) -> None:
        self.http.close()
        self.openai.close()
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return tmp_path_factory.mktemp("server_db") / "talk.db"


@pytest.fixture(scope="module")
def server(csm_home, db_path):  # csm_home (conftest): uploaded voices land in a temp folder
    running = RunningServer(db_path, max_upload_bytes=256 * 1024)
    yield running
    running.stop()


def _speech(server, **fields):
    body = {"model": "csm-1b", "input": "Hello from the server.", "voice": "conversational_a",
            "seed": 7, "max_audio_length_ms": SHORT}
    body.update(fields)
    return server.http.post("/v1/audio/speech", json=body)


def _pcm(data: bytes) -> np.ndarray:
    assert len(data) % 2 == 0
    return np.frombuffer(data, dtype="<i2")


def _assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# ---------------------------------------------------------------------------------------------
# /v1/audio/speech
# ---------------------------------------------------------------------------------------------


def test_service_endpoints(server):
    health = server.http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-random"
    models = server.openai.models.list()
    assert [m.id for m in models.data] == ["tiny-random"]


@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm", "mp3", "opus"])
def test_openai_client_speech_in_each_format(server, fmt):
    if fmt not in supported_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    reply = server.openai.audio.speech.create(
        model="csm-1b", input="Hello from the server.", voice="conversational_a",
        response_format=fmt, extra_body={"seed": 7, "max_audio_length_ms": SHORT})
    data = reply.content
    if fmt == "pcm":
        samples, sr = _pcm(data), SR
    else:
        samples, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == SR and samples.ndim == 1 and samples.size > 0
    if fmt in ("wav", "flac", "pcm"):
        assert samples.size % FRAME == 0  # whole Mimi frames
        assert samples.size <= FRAME * SHORT / 80


def test_streamed_bytes_equal_whole_audio_for_the_same_seed(server):
    # Same seed and same streaming_interval (it sets the decoder's chunking): same bytes.
    text = "Streaming sends audio while it is being generated."
    whole = _speech(server, input=text, response_format="pcm", stream=False, seed=11,
                    max_audio_length_ms=1200, streaming_interval=0.16)
    assert whole.status_code == 200 and whole.headers["x-csm-seed"] == "11"
    assert int(whole.headers["content-length"]) == len(whole.content)
    body = {"model": "csm-1b", "input": text, "voice": "conversational_a", "seed": 11,
            "max_audio_length_ms": 1200, "response_format": "pcm", "streaming_interval": 0.16}
    pieces = []
    with server.http.stream("POST", "/v1/audio/speech", json=body) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers.get("transfer-encoding") == "chunked"  # sent as generated
        assert "content-length" not in streamed.headers
        pieces = list(streamed.iter_raw())
    assert b"".join(pieces) == whole.content
    assert _pcm(whole.content).size > 0

    # WAV: streamed with "unknown length" sizes, same samples as the whole file.
    whole_wav = _speech(server, input=text, response_format="wav", stream=False, seed=11,
                        max_audio_length_ms=1200, streaming_interval=0.16).content
    with server.openai.audio.speech.with_streaming_response.create(
            model="csm-1b", input=text, voice="conversational_a", response_format="wav",
            stream_format="audio",
            extra_body={"seed": 11, "max_audio_length_ms": 1200, "streaming_interval": 0.16},
    ) as reply:
        streamed_wav = b"".join(reply.iter_bytes())
    assert streamed_wav[44:] == whole_wav[44:] == whole.content
    a, sr = sf.read(io.BytesIO(streamed_wav), dtype="int16")
    assert sr == SR and np.array_equal(a, _pcm(whole.content))


def test_server_sent_events_carry_the_same_audio(server):
    text = "Events, too."
    whole = _speech(server, input=text, response_format="pcm", stream=False, seed=3).content
    reply = _speech(server, input=text, response_format="pcm", stream_format="sse", seed=3)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in reply.text.splitlines()
              if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == whole


def test_same_seed_same_audio_and_voice_object_form(server):
    first = _speech(server, response_format="pcm", stream=False, seed=5).content
    again = _speech(server, response_format="pcm", stream=False, seed=5,
                    voice={"id": "conversational_a"}).content
    assert first == again


def test_bad_speech_requests_get_openai_errors(server):
    _assert_error(_speech(server, input=""), 400, param="input")
    _assert_error(_speech(server, input="   "), 400, param="input")
    _assert_error(_speech(server, input="x" * 4097), 400, param="input")
    _assert_error(_speech(server, voice="nobody"), 404, param="voice", code="voice_not_found")
    _assert_error(_speech(server, voice="../../etc/passwd"), 404, param="voice")
    _assert_error(_speech(server, response_format="aac"), 400, param="response_format")
    _assert_error(_speech(server, response_format="ogg"), 400, param="response_format")
    _assert_error(_speech(server, speed=1.5), 400, param="speed")
    _assert_error(_speech(server, instructions="whisper"), 400, param="instructions")
    _assert_error(_speech(server, temperature=-1), 400, param="temperature")
    _assert_error(_speech(server, top_k=-1), 400, param="top_k")  # 0 = all codes, as in the CLI
    _assert_error(_speech(server, max_audio_length_ms=0), 400, param="max_audio_length_ms")
    _assert_error(_speech(server, temprature=0.5), 400, param="temprature")  # typo: not ignored
    _assert_error(_speech(server, stream=False, stream_format="audio"), 400)
    _assert_error(server.http.post("/v1/audio/speech", json={"input": "hi"}), 400, param="model")
    _assert_error(server.http.post("/v1/audio/speech", content=b"{not json",
                                   headers={"content-type": "application/json"}), 400)
    _assert_error(server.http.get("/v1/nothing-here"), 404)
    # speed 1.0 is accepted, as is `instructions` left empty
    assert _speech(server, speed=1.0, instructions="", response_format="pcm").status_code == 200

    with pytest.raises(openai.NotFoundError) as caught:
        server.openai.audio.speech.create(model="tts-1", input="Hi.", voice="alloy")
    assert "conversational_a" in str(caught.value)  # the message lists the known voices
    with pytest.raises(openai.BadRequestError):
        server.openai.audio.speech.create(model="tts-1", input="Hi.", voice="conversational_a",
                                          response_format="aac")


def test_model_work_runs_on_the_one_worker_thread(server):
    """Every generation runs on the worker thread, however many requests arrive at once (up to
    --max-batch of them side by side, their frames batched)."""
    backend = server.app.state.csm.backend
    threads, active, most = [], [0], [0]
    originals = backend.model.generate, backend.model.generate_turn

    def recording(original):
        def call(*args, **kwargs):
            threads.append(threading.current_thread())
            active[0] += 1
            most[0] = max(most[0], active[0])
            try:
                yield from original(*args, **kwargs)
            finally:
                active[0] -= 1

        return call

    backend.model.generate, backend.model.generate_turn = map(recording, originals)
    try:
        replies = [None] * 4

        def ask(i):
            replies[i] = _speech(server, response_format="pcm", seed=21, stream=i % 2 == 0)

        askers = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(TIMEOUT)
        assert all(r is not None and r.status_code == 200 for r in replies)
        assert len({r.content for r in replies}) == 1  # same seed, same bytes, in any order
        created = server.http.post("/v1/sessions", json={"voices": {"0": "conversational_a"}})
        assert _turn(server, created.json()["id"], 0, "On the worker.").status_code == 200
    finally:
        backend.model.generate, backend.model.generate_turn = originals
    assert len(threads) == 5 and all(t is server.worker.thread for t in threads)
    assert 1 <= most[0] <= server.worker.max_batch


# ---------------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------------


def _clip_bytes(seconds=2.5, fmt="WAV", sr=44_100) -> bytes:
    t = np.arange(int(sr * seconds)) / sr
    audio = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([audio, audio], 1).astype(np.float32), sr, format=fmt,
             subtype="PCM_16")
    return buffer.getvalue()


def _upload(server, name, data, transcript="This is my voice.", field="audio", filename="c.wav"):
    form = {"name": name} if name is not None else {}
    if transcript is not None:
        form["transcript"] = transcript
    return server.http.post("/v1/voices", data=form, files={field: (filename, data, "audio/wav")})


def test_uploaded_voice_is_listed_and_speaks(server):
    reply = _upload(server, "tester_voice", _clip_bytes(fmt="FLAC"), filename="clip.flac")
    assert reply.status_code == 201, reply.text
    assert reply.json()["id"] == "tester_voice"
    names = [v["id"] for v in server.http.get("/v1/voices").json()["data"]]
    assert {"conversational_a", "conversational_b", "tester_voice"} <= set(names)
    audio = server.openai.audio.speech.create(
        model="csm-1b", input="Now in my own voice.", voice="tester_voice", response_format="wav",
        extra_body={"seed": 1, "max_audio_length_ms": SHORT}).content
    samples, sr = sf.read(io.BytesIO(audio))
    assert sr == SR and samples.size > 0
    _assert_error(_upload(server, "tester_voice", _clip_bytes(seconds=1.0)), 409, param="name")


def test_bad_voice_uploads(server):
    clip = _clip_bytes(seconds=1.0)
    for name in ("../escape", "a/b", ".hidden", "with space", "x" * 65):
        _assert_error(_upload(server, name, clip), 400, param="name", code="invalid_name")
    _assert_error(_upload(server, None, clip), 400, param="name")
    _assert_error(_upload(server, "no_text", clip, transcript=None), 400, param="transcript")
    _assert_error(_upload(server, "no_text", clip, transcript="  "), 400, param="transcript")
    _assert_error(_upload(server, "empty", b""), 400)
    _assert_error(_upload(server, "not_audio", b"this is not audio at all" * 100), 400)
    _assert_error(_upload(server, "too_big", b"\0" * (300 * 1024)), 413, code="request_too_large")
    names = [v["id"] for v in server.http.get("/v1/voices").json()["data"]]
    assert not {"escape", "no_text", "empty", "not_audio", "too_big"} & set(names)
    assert not any(Path(os.environ["CSM_HOME"]).parent.glob("escape*"))
    # the server keeps serving after all that
    assert _speech(server, response_format="pcm").status_code == 200


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


def _turn(server, session, speaker, text, **fields):
    body = {"speaker": speaker, "input": text, "seed": 100 + speaker,
            "max_audio_length_ms": SHORT, "stream": False}
    body.update(fields)
    return server.http.post(f"/v1/sessions/{session}/turns", json=body)


def test_session_turns_persist_across_a_restart(csm_home, tmp_path):
    db = tmp_path / "restart.db"
    first = RunningServer(db)
    try:
        created = first.http.post("/v1/sessions", json={
            "id": "chat", "voices": {"0": "conversational_a", "1": "conversational_b"}})
        assert created.status_code == 201, created.text
        assert created.json()["voice_count"] == 2
        _assert_error(first.http.post("/v1/sessions", json={"id": "chat"}), 409)
        one = _turn(first, "chat", 0, "Hi, how are you?")
        assert one.status_code == 200 and one.headers["x-csm-turn-index"] == "0"
        two = _turn(first, "chat", 1, "Fine, thanks. And you?", stream=True, response_format="pcm")
        assert two.status_code == 200 and two.headers["x-csm-turn-index"] == "1"
        shown = first.http.get("/v1/sessions/chat").json()
        assert [(t["speaker"], t["text"]) for t in shown["turns"]] == [
            (0, "Hi, how are you?"), (1, "Fine, thanks. And you?")]
        assert shown["turns"][1]["seed"] == 101
        audio_before = first.http.get("/v1/sessions/chat/audio").content
        one_samples, _ = sf.read(io.BytesIO(one.content), dtype="int16")
        both, sr = sf.read(io.BytesIO(audio_before), dtype="int16")
        assert sr == SR and both.size == one_samples.size + _pcm(two.content).size
        assert np.array_equal(both[: one_samples.size], one_samples)
    finally:
        first.stop()

    second = RunningServer(db)
    try:
        listed = second.http.get("/v1/sessions").json()["data"]
        assert [(s["id"], s["turn_count"]) for s in listed] == [("chat", 2)]
        shown = second.http.get("/v1/sessions/chat").json()
        assert [t["text"] for t in shown["turns"]] == ["Hi, how are you?", "Fine, thanks. And you?"]
        assert [(v["speaker"], v["voice"]) for v in shown["voices"]] == [
            (0, "conversational_a"), (1, "conversational_b")]
        # Stored audio is 24-bit FLAC; the first server still had the generated floats in memory,
        # so 16-bit output may differ by one step on a few samples, no more.
        reread, _ = sf.read(io.BytesIO(second.http.get("/v1/sessions/chat/audio").content),
                            dtype="int16")
        assert reread.shape == both.shape
        assert np.abs(reread.astype(np.int32) - both).max() <= 1
        three = _turn(second, "chat", 0, "Great. Let's keep talking.")
        assert three.status_code == 200 and three.headers["x-csm-turn-index"] == "2"
        flac = second.http.get("/v1/sessions/chat/audio", params={"response_format": "flac",
                                                                 "pause_s": 0.25})
        samples, sr = sf.read(io.BytesIO(flac.content))
        assert sr == SR and samples.size > both.size
    finally:
        second.stop()


def test_session_errors(server):
    _assert_error(server.http.get("/v1/sessions/missing"), 404, code="session_not_found")
    _assert_error(_turn(server, "missing", 0, "Hello?"), 404, code="session_not_found")
    _assert_error(server.http.get("/v1/sessions/missing/audio"), 404)
    _assert_error(server.http.post("/v1/sessions", json={"id": "../up"}), 400, code="invalid_name")
    _assert_error(server.http.post("/v1/sessions", json={"voices": {"0": "nobody"}}), 404,
                  param="voices.0")
    _assert_error(server.http.post("/v1/sessions", json={"voices": {"x": "conversational_a"}}),
                  400)
    created = server.http.post("/v1/sessions", json={}).json()
    name = created["id"]
    assert created["turn_count"] == 0
    _assert_error(_turn(server, name, -1, "Hello?"), 400, param="speaker")
    _assert_error(_turn(server, name, 0, ""), 400, param="input")
    _assert_error(_turn(server, name, 0, "Hi", response_format="aac"), 400)
    _assert_error(server.http.delete(f"/v1/sessions/{name}/turns/last"), 404, code="no_turns")
    assert _turn(server, name, 0, "One turn.").status_code == 200
    undone = server.http.delete(f"/v1/sessions/{name}/turns/last").json()
    assert undone["removed"]["text"] == "One turn." and undone["turn_count"] == 0
    assert server.http.delete(f"/v1/sessions/{name}").json()["deleted"] is True
    _assert_error(server.http.get(f"/v1/sessions/{name}"), 404)


def test_recorded_turns_join_the_conversation(server):
    name = server.http.post("/v1/sessions", json={"voices": {"1": "conversational_b"}}).json()["id"]

    def record(speaker, data, transcript="Hello, I am a real person."):
        return server.http.post(f"/v1/sessions/{name}/recordings",
                                data={"speaker": str(speaker), "transcript": transcript},
                                files={"audio": ("me.wav", data, "audio/wav")})

    reply = record(0, _clip_bytes(seconds=1.2))
    assert reply.status_code == 201, reply.text
    assert reply.json()["index"] == 0 and reply.json()["source"] == "recorded"
    assert _turn(server, name, 1, "Nice to meet you.").headers["x-csm-turn-index"] == "1"
    turns = server.http.get(f"/v1/sessions/{name}").json()["turns"]
    assert [(t["source"], t["speaker"]) for t in turns] == [("recorded", 0), ("generated", 1)]
    _assert_error(record(-1, _clip_bytes(seconds=0.5)), 400, param="speaker")
    _assert_error(record("x", _clip_bytes(seconds=0.5)), 400, param="speaker")
    _assert_error(record(0, _clip_bytes(seconds=0.5), transcript=""), 400, param="transcript")
    _assert_error(record(0, b"RIFF, but not really audio" * 10), 400)
    _assert_error(record(0, b"\0" * (300 * 1024)), 413)
    _assert_error(server.http.post("/v1/sessions/missing/recordings", data={"speaker": "0"}), 404)
    assert len(server.http.get(f"/v1/sessions/{name}").json()["turns"]) == 2


# ---------------------------------------------------------------------------------------------
# Disconnects and a full queue
# ---------------------------------------------------------------------------------------------

LONG_TEXT = " ".join(["This sentence keeps going so the turn takes many frames."] * 12)


def test_disconnect_mid_stream_cancels_and_keeps_serving(server):
    created = server.http.post("/v1/sessions", json={"id": "dropped",
                                                     "voices": {"0": "conversational_a"}})
    assert created.status_code == 201
    assert _turn(server, "dropped", 0, "A first turn that stays.").status_code == 200
    before = server.wait_idle()
    body = {"speaker": 0, "input": LONG_TEXT, "seed": 1, "max_audio_length_ms": 120_000,
            "streaming_interval": 0.08, "response_format": "pcm"}
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        with client.stream("POST", "/v1/sessions/dropped/turns", json=body) as reply:
            assert reply.status_code == 200
            got = next(reply.iter_raw())
            assert got
            # audio arrives while the turn is still being generated
            assert server.http.get("/health").json()["busy"] is True
        # leaving both blocks closes the connection mid-stream
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    shown = server.http.get("/v1/sessions/dropped").json()
    assert [t["text"] for t in shown["turns"]] == ["A first turn that stays."]  # nothing stored
    # the next request on the same session and on speech work normally
    assert _turn(server, "dropped", 0, "And on we go.").status_code == 200
    assert server.http.get("/v1/sessions/dropped").json()["turns"][-1]["index"] == 1
    assert _speech(server, response_format="pcm").status_code == 200

    # a plain speech stream dropped mid-way: same story
    before = server.wait_idle()
    speech = {"model": "csm-1b", "input": LONG_TEXT, "voice": "conversational_a",
              "max_audio_length_ms": 120_000, "streaming_interval": 0.08, "response_format": "pcm"}
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        with client.stream("POST", "/v1/audio/speech", json=speech) as reply:
            assert reply.status_code == 200 and next(reply.iter_raw())
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1


def test_full_queue_answers_503_with_retry_after(csm_home):
    busy = RunningServer(None, max_queue=1, api_key="sekret")
    busy.http.headers["Authorization"] = "Bearer sekret"
    busy.openai.close()
    busy.openai = openai.OpenAI(base_url=busy.base_url + "/v1", api_key="sekret",
                                timeout=TIMEOUT, max_retries=0)
    gate = threading.Event()
    loop = asyncio.new_event_loop()  # the blockers' results go nowhere that matters

    def blocker(job):
        gate.wait(TIMEOUT)
        return []

    try:
        busy.worker.submit(blocker, loop=loop)  # runs, holding the worker
        deadline = time.monotonic() + TIMEOUT
        while not busy.worker.busy():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy.worker.submit(blocker, loop=loop)  # waits: the queue (size 1) is now full
        reply = _speech(busy, response_format="pcm")
        error = _assert_error(reply, 503, code="queue_full")
        assert int(reply.headers["retry-after"]) >= 1
        assert error["type"] == "server_busy"
        with pytest.raises(openai.InternalServerError) as caught:
            busy.openai.audio.speech.create(model="csm-1b", input="Hi.", voice="conversational_a")
        assert caught.value.status_code == 503
        assert busy.http.get("/health").json()["queued"] == 1  # reads still answer
        gate.set()
        busy.wait_idle()
        assert _speech(busy, response_format="pcm").status_code == 200

        # A client that gives up while its request waits in the queue: the job never runs.
        gate.clear()
        busy.worker.submit(blocker, loop=loop)
        before = busy.http.get("/health").json()
        with httpx.Client(base_url=busy.base_url, timeout=1.0,
                          headers={"Authorization": "Bearer sekret"}) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                impatient.post("/v1/audio/speech", json={
                    "model": "csm-1b", "input": "Never mind.", "stream": False})
        deadline = time.monotonic() + TIMEOUT
        while busy.http.get("/health").json()["queued"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The server notices the hang-up on its next poll of the client (every 0.2 s; later on a busy
        # machine): wait for that before the worker is let go, or the job could start first.
        while not any(job is not None and job.cancelled.is_set() for job in list(busy.worker._queue.queue)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        gate.set()
        after = busy.wait_idle()
        assert after["cancelled"] == before["cancelled"] + 1
        assert after["completed"] == before["completed"] + 1  # only the blocker
        # sessions are off without --db: a clear 404
        _assert_error(busy.http.get("/v1/sessions"), 404, code="sessions_disabled")
        # with an API key set, a request without it (or with another) is refused
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            reply = httpx.get(busy.base_url + "/v1/voices", headers=headers, timeout=TIMEOUT)
            _assert_error(reply, 401, code="invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=busy.base_url + "/v1", api_key="wrong", timeout=TIMEOUT,
                          max_retries=0).models.list()
    finally:
        gate.set()
        busy.stop()
        loop.close()


def test_csm_serve_command_serves_and_stops_cleanly(csm_home, tmp_path):
    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", "from dialogue.cli import main; main()", "serve",
               "--model", "tiny-random", "--db", str(tmp_path / "cli.db"),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
            deadline = time.monotonic() + 180
            while True:
                assert process.poll() is None, process.stdout.read().decode(errors="replace")
                try:
                    if client.get("/health").json()["status"] == "ok":
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "csm serve did not come up"
                time.sleep(0.2)
            reply = client.post("/v1/audio/speech", json={
                "model": "csm-1b", "input": "From the command line.", "response_format": "pcm",
                "max_audio_length_ms": SHORT, "seed": 2})
            assert reply.status_code == 200 and _pcm(reply.content).size > 0
            assert client.post("/v1/sessions", json={"id": "cli"}).status_code == 201
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_csm_serve_with_a_missing_model_fails_cleanly(tmp_path):
    from click.testing import CliRunner

    from dialogue.cli import main

    result = CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "no-such-model"),
                                       "--port", str(_free_port())])
    assert result.exit_code == 1
    assert "no model folder" in result.output and "Traceback" not in result.output
