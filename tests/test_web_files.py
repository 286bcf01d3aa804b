"""The web page's server side, without a browser: its files are served (and packaged), they are
open when the API needs a key, and each stored turn's audio can be fetched on its own (the page's
play button). The page itself is tested in a browser in test_web_page.py."""

from __future__ import annotations

import fnmatch
import io
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
sf = pytest.importorskip("soundfile")

from fastapi.testclient import TestClient  # noqa: E402

from dialogue.server import create_app  # noqa: E402
from dialogue.server.web import STATIC_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"max_audio_length_ms": 400, "stream": False}


def test_every_static_file_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data.get("dialogue.server", [])
    files = sorted(p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.iterdir())
    assert "static/index.html" in files and "static/app.js" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert missing == [], f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_the_page_refers_only_to_its_own_files():
    html = (STATIC_DIR / "index.html").read_text()
    linked = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert linked and all(link.startswith("/static/") for link in linked), linked
    for link in linked:
        assert (STATIC_DIR / link.removeprefix("/static/")).is_file(), link
    script = (STATIC_DIR / "app.js").read_text()
    assert not re.search(r"https?://", script.replace("http://localhost:PORT/", ""))


@pytest.fixture(scope="module")
def client(tiny_model_path, tmp_path_factory):
    db = tmp_path_factory.mktemp("web-files") / "talk.db"
    with TestClient(create_app(str(tiny_model_path), db, api_key="k3y")) as client:
        client.headers["Authorization"] = "Bearer k3y"
        yield client


def test_the_page_and_its_files_need_no_key_and_the_api_still_does(client):
    bare = TestClient(client.app)  # no Authorization header
    page = bare.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert bare.head("/").status_code == 200
    for name in ("app.js", "app.css", "favicon.svg"):
        reply = bare.get(f"/static/{name}")
        assert reply.status_code == 200 and reply.content == (STATIC_DIR / name).read_bytes()
    script = bare.get("/static/app.js")
    assert "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache"  # checked again after an upgrade
    again = bare.get("/static/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    assert bare.get("/static/nothing.js").status_code == 404
    assert bare.get("/v1/voices").status_code == 401
    assert bare.get("/staticx").status_code == 401  # only the page's own paths are open
    assert "/" not in client.get("/openapi.json").json()["paths"]


def _tone_wav(hz: float, samples: int) -> bytes:
    """A 24 kHz WAV file of a sine tone at amplitude 0.3."""
    tone = (0.3 * np.sin(2 * np.pi * hz * np.arange(samples) / 24_000)).astype(np.float32)
    clip = io.BytesIO()
    sf.write(clip, tone, 24_000, format="WAV")
    return clip.getvalue()


def test_the_voice_list_tells_presets_from_uploaded_voices(client):
    reply = client.post("/v1/voices", data={"name": "listed", "transcript": "A tone."},
                        files={"audio": ("tone.wav", _tone_wav(200, 48_000), "audio/wav")})
    assert reply.status_code == 201, reply.text
    try:
        kinds = {v["id"]: v["type"] for v in client.get("/v1/voices").json()["data"]}
        assert kinds["listed"] == "audio_sample" and reply.json()["type"] == "audio_sample"
        assert kinds["conversational_a"] == kinds["conversational_b"] == "preset"
    finally:  # the voices folder is shared by the test session
        client.app.state.csm.backend.model.voices.remove("listed")  # files only, no MLX


def _wav(reply) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    audio, rate = sf.read(io.BytesIO(reply.content), dtype="int16")
    assert rate == 24_000
    return audio


def test_each_turn_s_audio_is_served_on_its_own(client):
    assert client.post("/v1/sessions", json={"id": "turns"}).status_code == 201
    for speaker, text in [(0, "First turn."), (1, "Second turn.")]:
        reply = client.post("/v1/sessions/turns/turns", json={"speaker": speaker, "input": text,
                                                               "seed": 3, **SHORT})
        assert reply.status_code == 200, reply.text
    recorded = 24_000  # samples
    reply = client.post("/v1/sessions/turns/recordings", data={"speaker": "0", "transcript": "Hi."},
                        files={"audio": ("mine.wav", _tone_wav(220, recorded), "audio/wav")})
    assert reply.status_code == 201, reply.text

    session = client.get("/v1/sessions/turns").json()
    parts = []
    for turn in session["turns"]:
        reply = client.get(f"/v1/sessions/turns/turns/{turn['index']}/audio")
        assert reply.headers["x-csm-turn-index"] == str(turn["index"])
        parts.append(_wav(reply))
    whole = _wav(client.get("/v1/sessions/turns/audio", params={"response_format": "wav"}))
    assert np.array_equal(np.concatenate(parts), whole)  # the turns, in order, make the whole
    for part, turn in zip(parts[:2], session["turns"]):  # generated: whole frames
        assert len(part) / 24_000 == pytest.approx(turn["duration_s"], abs=1e-9)
    assert len(parts[2]) == recorded  # recorded: the recording as it was stored
    flac = client.get("/v1/sessions/turns/turns/0/audio", params={"response_format": "flac"})
    assert flac.headers["content-type"] == "audio/flac"

    def error(path, **params):
        reply = client.get(path, params=params)
        return reply.status_code, reply.json()["error"]["code"]

    assert error("/v1/sessions/turns/turns/3/audio") == (404, "turn_not_found")
    assert error("/v1/sessions/turns/turns/-1/audio") == (404, "turn_not_found")
    assert error("/v1/sessions/turns/turns/x/audio") == (400, "invalid_value")
    assert error("/v1/sessions/nope/turns/0/audio") == (404, "session_not_found")
    assert error("/v1/sessions/turns/turns/0/audio", response_format="aac")[0] == 400
