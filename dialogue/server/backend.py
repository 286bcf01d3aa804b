"""The model side of the server. Every method here runs on the worker thread (see worker.py).

It owns the one loaded model, the conversation database handle and the open Conversations, and
turns engine results into plain numpy chunks before they leave the thread, so no MLX array is
ever touched by the HTTP side.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dialogue.conversation import Conversation
from dialogue.shared_voices import DatabaseVoices
from engine import load_model
from engine.audio import check_duration, load_audio
from engine.constants import FRAME_RATE, SAMPLE_RATE
from engine.errors import AudioError
from engine.option_checks import OPTIONS
from engine.voices import check_voice_clip, check_voice_file, clip_warnings
from storage import is_postgres_url, open_store

from .errors import APIError


@dataclass
class AudioChunk:
    """One piece of generated audio, already numpy, plus what the response headers report."""

    audio: np.ndarray  # (samples,) float32, 24 kHz
    seed: int | None = None
    frames: int = 0  # Mimi frames in this chunk
    prompt_tokens: int = 0  # backbone positions of the prompt (prefilled + reused)
    info: dict[str, Any] = field(default_factory=dict)


def _chunk_from_result(result) -> AudioChunk:
    audio = np.asarray(result.audio, dtype=np.float32).reshape(-1)  # MLX -> numpy, here
    return AudioChunk(audio=audio, seed=result.seed, frames=int(result.codes.shape[0]),
                      prompt_tokens=int(result.prompt_tokens))


class Backend:
    """Model, store and conversations; used only from the worker thread."""

    def __init__(self, model_name: str, db_path: str | Path | None, model=None,
                 cache_bytes: int | None = None, dtype: str | None = None,
                 quantize: int | None = None) -> None:
        self.model_name = model_name
        self.cache_bytes = cache_bytes
        self.dtype, self.quantize = dtype, quantize  # for load_model, when no model is given
        # an SQLite file, or a postgresql:// URL (kept as given: a Path would mangle it)
        self.db_path = db_path if db_path is None or is_postgres_url(db_path) else Path(db_path)
        self.model = model
        self.store = None
        self._local_voices = None  # the model's own voice library while DatabaseVoices stands in
        self._conversations: dict[str, Any] = {}

    # -- start-up ----------------------------------------------------------------------------
    def load(self) -> None:
        if self.model is None:
            self.model = load_model(self.model_name, dtype=self.dtype, quantize=self.quantize,
                                    cache_bytes=self.cache_bytes)
        elif self.cache_bytes is not None:
            self.model.generator.streams.budget_bytes = self.cache_bytes
        if self.db_path is not None:
            self.store = self.open_store()
            if self.store.shares_voices and self.model.voices is not None:
                # a shared database (PostgreSQL) keeps the uploaded voices, so that every replica
                # of this server sees them; an SQLite file leaves them in the local folder
                self._local_voices = self.model.voices  # put back by close()
                self.model.voices = DatabaseVoices(self.model.voices, self.store)

    def batch(self, max_batch: int):
        """Batch the model's generation requests (engine/scheduler.py); -> the Scheduler."""
        return self.model.generator.batch(max_batch=max_batch)

    def cached_sessions(self) -> int:
        """Conversations whose KV cache the generator holds (anonymous requests share one)."""
        return len(self.model.generator.streams) if self.model is not None else 0

    def open_store(self):
        return open_store(self.db_path)

    @staticmethod
    def release_thread() -> None:
        """Free the MLX streams this (worker) thread made. MLX asks each thread that used it to
        do this before it ends; otherwise the process may abort at exit ("terminate called
        without an active exception")."""
        mx = sys.modules.get("mlx.core")
        if mx is not None and hasattr(mx, "clear_streams"):
            mx.clear_streams()

    def close(self) -> None:
        self._conversations.clear()
        if self._local_voices is not None:
            self.model.voices, self._local_voices = self._local_voices, None
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- voices ------------------------------------------------------------------------------
    def voice_names(self) -> list[str]:
        return sorted(self.model.voices.names())

    def voice_kinds(self) -> dict[str, str]:
        """Every voice (sorted) and its kind: "preset" (comes with the model; cannot be removed)
        or "audio_sample" (uploaded, as POST /v1/voices calls it)."""
        presets = set(self.model.voices.preset_names())
        return {name: "preset" if name in presets else "audio_sample"
                for name in self.voice_names()}

    def check_voice(self, name: str | None, param: str = "voice") -> None:
        if name is None:
            return
        known = self.voice_names()
        if name not in known:
            raise APIError(404, f"unknown voice {name!r}; known voices: {', '.join(known) or 'none'}"
                           " (add one with POST /v1/voices)", param=param, code="voice_not_found")

    def register_voice(self, name: str, audio_path: Path, transcript: str,
                       overwrite: bool = False) -> dict:
        """Validate the clip (real, readable audio, at most a voice's length: checked from its
        header before it is decoded) and register it under `name`."""
        check_voice_file(audio_path, what="The uploaded clip", name="the uploaded clip")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quality notes are returned to the client instead
            audio = load_audio(str(audio_path), name="the uploaded clip")
            if audio.size == 0 or not np.isfinite(audio).all():
                raise AudioError("the uploaded clip has no usable samples; upload a recording")
            check_voice_clip(audio, transcript, what="The uploaded clip")
            notes = clip_warnings(audio, SAMPLE_RATE, "The clip")
            self.model.voices.register(name, audio, transcript, overwrite=overwrite)
        return {"name": name, "duration_s": round(audio.size / SAMPLE_RATE, 3), "warnings": notes}

    def remove_voice(self, name: str) -> None:
        """Delete an uploaded voice: 404 when there is none of that name, 409 for a preset."""
        library = self.model.voices
        if name not in library.user_names():
            if name in library.preset_names():
                raise APIError(409, f"{name!r} is a preset voice; only uploaded voices can be "
                               "deleted", param="name", code="voice_is_preset")
            raise APIError(404, f"no uploaded voice {name!r}; GET /v1/voices lists them",
                           param="name", code="voice_not_found")
        library.remove(name)

    # -- one-off speech ----------------------------------------------------------------------
    # A request is always generated in streaming mode, chunked by its streaming_interval, whether
    # the response streams or not: the decoder's float rounding depends on the chunking (by about
    # 1e-6), so one code path is what makes streamed bytes equal whole-file bytes exactly.
    def speech(self, text: str, voice: str | None, speaker: int,
               options: dict) -> Iterator[AudioChunk]:
        self.check_voice(voice)
        kwargs = dict(text=text, speaker=speaker, stream=True, **options)
        if voice is not None:
            kwargs["voice"] = voice
        for result in self.model.generate(**kwargs):
            yield _chunk_from_result(result)

    # -- sessions ----------------------------------------------------------------------------
    def _require_store(self):
        if self.store is None:
            raise APIError(404, "this server keeps no sessions (start it with --db FILE)",
                           code="sessions_disabled")
        return self.store

    def conversation(self, session: str, create: bool = False):
        store = self._require_store()
        conv = self._conversations.get(session)
        if conv is not None and store.has_session(session):
            return conv
        self._conversations.pop(session, None)
        if not create and not store.has_session(session):
            raise APIError(404, f"no session {session!r}; create it with POST /v1/sessions",
                           param="session_id", code="session_not_found")
        conv = Conversation.open(store, session=session, model=self.model)
        self._conversations[session] = conv
        return conv

    def create_session(self, session: str, voices: dict[int, str], meta: dict) -> None:
        """Create the session with its pinned voices, all or nothing: everything is checked
        first, and a voice that fails to pin removes the session again."""
        store = self._require_store()
        if store.has_session(session):
            raise APIError(409, f"session {session!r} already exists", param="id",
                           code="session_exists")
        for speaker, voice in voices.items():
            OPTIONS["speaker"].check(speaker, "voices: a speaker id")
            self.check_voice(voice, param=f"voices.{speaker}")
        conv = self.conversation(session, create=True)
        try:
            with conv.undo_on_error():
                store.open_session(session, meta=meta or None)
                for speaker, voice in sorted(voices.items()):
                    conv.set_voice(speaker, voice=voice)
        except BaseException:
            self._conversations.pop(session, None)
            raise

    def pin_voice(self, session: str, speaker: int, voice: str) -> None:
        self.check_voice(voice)
        self.conversation(session).set_voice(speaker, voice=voice)

    def delete_session(self, session: str) -> int:
        store = self._require_store()
        self._conversations.pop(session, None)
        if not store.has_session(session):
            raise APIError(404, f"no session {session!r}", param="session_id",
                           code="session_not_found")
        return store.delete_session(session)

    def undo(self, session: str) -> dict | None:
        segment = self.conversation(session).undo()
        if segment is None:
            return None
        return {"speaker": int(segment.speaker), "text": segment.text}

    def turn(self, session: str, speaker: int, text: str, options: dict) -> Iterator[AudioChunk]:
        """The next turn, streamed (see speech()); the Conversation stores it once complete."""
        conv = self.conversation(session)
        index = len(conv.turns)
        for result in conv.say_stream(speaker, text, **options):
            chunk = _chunk_from_result(result)
            chunk.info["turn_index"] = index
            yield chunk

    def add_recording(self, session: str, speaker: int, text: str, audio_path: Path) -> dict:
        """A recorded turn (real speech and its transcript), Mimi-encoded once and stored."""
        conv = self.conversation(session)
        longest = OPTIONS["max_audio_length_ms"].maximum / 1000  # a longer turn can never fit
        check_duration(audio_path, longest, what="The uploaded recording",
                       name="the uploaded recording",
                       hint=" (the model's whole context); upload a shorter turn")
        audio = load_audio(str(audio_path), name="the uploaded recording")  # AudioError if not audio
        segment = conv.add(speaker, text, audio)
        turn = conv.turns[-1]
        return {"index": turn.index, "speaker": int(segment.speaker), "text": segment.text,
                "source": turn.source, "duration_s": round(segment.codes.shape[0] / FRAME_RATE, 2)}

    def turn_audio(self, session: str, index: int) -> np.ndarray:
        """One turn's audio: as stored (a recording), else decoded from its codes."""
        turns = self.conversation(session).turns
        if not 0 <= index < len(turns):
            raise APIError(404, f"session {session!r} has no turn {index} (it has {len(turns)}; "
                           "the first is 0)", param="index", code="turn_not_found")
        segment = turns[index].segment
        audio = segment.audio if segment.audio is not None else self.model.decode(segment.codes)
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def session_audio(self, session: str, pause_s: float) -> np.ndarray:
        audio = self.conversation(session).audio(pause_s=pause_s)
        return np.asarray(audio, dtype=np.float32).reshape(-1)


def spool_upload(data: bytes, suffix: str = "") -> Path:
    """Write uploaded bytes to a temporary file (audio readers want a path)."""
    handle = tempfile.NamedTemporaryFile(prefix="csm-upload-", suffix=suffix, delete=False)
    with handle:
        handle.write(data)
    return Path(handle.name)
