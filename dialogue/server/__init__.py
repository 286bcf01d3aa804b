"""HTTP API: OpenAI's /v1/audio/speech, voice uploads, and conversations that persist.

    from dialogue.server import create_app
    app = create_app("sesame/csm-1b", db="talk.db")   # a FastAPI app; run it with uvicorn

or from the shell: `csm serve --model sesame/csm-1b --db talk.db`.

Files: app.py (routes), schemas.py (request bodies), worker.py (the one model thread and its
queue), backend.py (model calls, run on that thread), responses.py (streamed / whole / SSE
responses), audio_formats.py (wav, pcm, flac, mp3, opus), errors.py (OpenAI's error shape),
limits.py (body size limits), names.py (safe voice and session names), web.py (the web page
at `/`, plain files in static/).
"""

from .app import create_app

__all__ = ["create_app"]
