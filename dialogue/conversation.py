"""Conversation: turns kept in a database (SQLite or PostgreSQL), each new turn conditioned on the earlier ones.

    conv = Conversation.open("talk.db", session="demo", model=model)
    conv.set_voice(0, "conversational_a")        # pinned voice prompt, encoded once, stored
    conv.say(0, "Hi!")                           # generate -> store -> Segment
    conv.add(1, "Hey, how are you?", "reply.wav")  # a recorded turn, Mimi-encoded once

The database is the source of truth; the model's KV cache is only a cache. A turn's prompt is

    [pinned voice prompts, speaker order] [kept turns, oldest first] [new text]

so consecutive turns share everything but the newest rows and the generator prefills only those
(it keeps the longest common prefix of the rows it holds). Which turns are kept is decided by
dialogue/budget.py; each turn stores the window start it used so a reopened session (or another
process) continues with the same window. Stored turns carry their codes, so reopening a session
never runs Mimi's encoder again.

A turn is written in one transaction after it is complete: a crash, an exception or a streaming
consumer that stops early leaves the session as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np

from engine.audio import load_audio, resample, save_audio
from engine.constants import DEFAULT_MODEL, NUM_CODEBOOKS
from engine.errors import AudioError, ContextTooLongError, InputError, VoiceError
from engine.option_checks import OPTIONS, check_option, check_options
from engine.segment import SAMPLE_RATE, Segment
from engine.voices import check_voice_clip, check_voice_file
from storage import ConcurrentWriteError, SessionNotFoundError, Store, StoredSegment

from .budget import Window, choose_window

DEFAULT_MAX_AUDIO_LENGTH_MS = 90_000
MIN_TURN_ROWS = 80  # a short line's text rows and ~5 s of frames: room a pinned voice must leave


class SessionBusyError(InputError):
    """A turn was asked of a session while another turn of it is being generated (or another
    writer stored one meanwhile): turns of a session are spoken one after another, each hearing
    the ones before it."""


@attrs.frozen(eq=False)
class Turn:
    """One stored turn of a conversation."""

    id: int  # row id in the database
    index: int  # 0, 1, 2, ... within the session
    segment: Segment  # speaker, text, audio (when stored), codes
    source: str  # "generated" or "recorded"
    meta: dict  # the caller's own data
    params: dict  # generation options as asked (temperature, top_k, seed, max_audio_length_ms)
    created_at: str
    seed: int | None = None  # the seed actually used (generated turns)
    timing: dict = attrs.Factory(dict)  # time_to_first_audio, prefill_tokens, cached_tokens, ...
    window_start: int | None = None  # first earlier turn this turn's prompt kept

    @property
    def speaker(self) -> int:
        return self.segment.speaker

    @property
    def text(self) -> str:
        return self.segment.text


@attrs.frozen
class ContextPlan:
    """What the next turn's prompt holds: the window and the segments in prompt order."""

    window: Window
    segments: list  # pinned voice prompts, then kept turns (codes only)
    max_frames: int  # frame cap of the new turn
    text_rows: int  # rows of the new text


class Conversation:
    """A stored conversation. Use `Conversation.open(db, session, model)`."""

    def __init__(
        self,
        store: Store,
        session: str,
        model=None,
        *,
        context_limit: int | None = None,
        store_audio: bool = True,
        reuse_cache: bool = True,
        owns_store: bool = False,
    ):
        self.store = store
        self.session = session
        self._model = model
        self.context_limit = context_limit
        self.store_audio = store_audio
        self.reuse_cache = reuse_cache
        self._owns_store = owns_store
        self._revision: int | None = None
        self._turn_in_flight = False  # one writer per session: see _generate
        self._turns: list[StoredSegment] = []
        self._voices: dict[int, StoredSegment] = {}
        self._rows: dict[int, int] = {}  # segment id -> backbone rows (tokenizer-dependent)
        self._audio: dict[int, np.ndarray | None] = {}  # segment id -> stored audio
        if not isinstance(session, str) or not session.strip():
            raise InputError(f"a session name must be a non-empty string, got {session!r}")
        # The session is created by its first write (a voice or a turn), so a request that fails
        # before storing anything (a bad clip, bad options) leaves no empty session behind.
        self._sync()

    @classmethod
    def open(
        cls,
        db: str | Path | Store,
        session: str = "default",
        model=None,
        *,
        context_limit: int | None = None,
        store_audio: bool = True,
        reuse_cache: bool = True,
    ) -> "Conversation":
        """Open the session `session` in `db` (an SQLite path, a postgresql:// URL or a Store),
        creating both if needed.

        model: a loaded CSMModel, a model name/path (loaded on first use), or None (the default
        model, loaded only when a turn needs it: replaying stored audio does not).
        context_limit: backbone positions a prompt may use (default: the model's, 2048).
        store_audio: keep each turn's audio as FLAC (else only codes; audio is decoded on demand).
        reuse_cache: let the generator reuse its KV cache across turns (off only for comparisons).
        """
        owns = not isinstance(db, Store)
        store = Store(db) if owns else db
        try:
            return cls(store, session, model, context_limit=context_limit, store_audio=store_audio,
                       reuse_cache=reuse_cache, owns_store=owns)
        except BaseException:
            if owns:
                store.close()
            raise

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "Conversation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def cache_key(self) -> tuple:
        """The generator's KV-cache key of this session: its turns reuse their own history even
        while other sessions take turns on the same model."""
        return ("session", str(self.session))

    def __repr__(self) -> str:
        return f"Conversation({self.store!r}, session={self.session!r}, turns={len(self._turns)})"

    # -- the model -------------------------------------------------------------------------------

    @property
    def model(self):
        """The CSMModel (loaded on first access when a name or nothing was given)."""
        if self._model is None or isinstance(self._model, (str, Path)):
            from engine import load_model  # lazy: MLX only once a model is needed (not for replay)

            self._model = load_model(str(self._model or DEFAULT_MODEL))
        return self._model

    @property
    def limit(self) -> int:
        """Backbone positions a prompt may use, including the frames to be generated."""
        positions = self.model.max_positions
        if self.context_limit is not None:  # a tighter budget (tests, memory); never a wider one
            return min(int(self.context_limit), positions)
        return positions

    # -- reading ---------------------------------------------------------------------------------

    @property
    def turns(self) -> list[Turn]:
        self._sync()
        return [self._turn(row) for row in self._turns]

    @property
    def segments(self) -> list[Segment]:
        """Every turn as a Segment (speaker, text, audio when stored, codes), oldest first."""
        return [turn.segment for turn in self.turns]

    @property
    def voices(self) -> dict[int, Segment]:
        """The pinned voice prompts, by speaker (codes, and audio when stored)."""
        self._sync()
        return {speaker: self._segment(row) for speaker, row in self._voices.items()}

    def __len__(self) -> int:
        self._sync()
        return len(self._turns)

    def audio(self, pause_s: float = 0.0) -> np.ndarray:
        """All turns' audio joined (float32, 24 kHz), with `pause_s` of silence between turns."""
        pause_s = OPTIONS["pause"].check(pause_s, "pause_s")
        clips = [self._turn_audio(row) for row in self._synced_turns()]
        if not clips:
            return np.zeros(0, np.float32)
        gap = np.zeros(int(round(pause_s * SAMPLE_RATE)), np.float32)
        parts = []
        for i, clip in enumerate(clips):
            if i and gap.size:
                parts.append(gap)
            parts.append(clip)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def export(self, path: str | Path, pause_s: float = 0.0) -> Path:
        """Write the whole conversation to one audio file (WAV or FLAC by extension)."""
        return save_audio(Path(path), self.audio(pause_s), SAMPLE_RATE)

    def plan(self, speaker: int, text: str, max_audio_length_ms: float | None = None) -> ContextPlan:
        """The context the next turn (`speaker` saying `text`) would get; changes nothing."""
        speaker = _check_speaker(speaker)
        self._sync()
        return self._plan(speaker, self.model.spoken_text(text), max_audio_length_ms)

    # -- writing ---------------------------------------------------------------------------------

    def set_voice(self, speaker: int, voice: str | None = None, ref_audio=None, ref_text: str | None = None) -> Segment | None:
        """Pin a voice prompt for `speaker`: a preset/registered voice name, or a clip + transcript.

        The clip is Mimi-encoded once and its codes stored; the prompt always stays first in the
        context. Setting the same voice again changes nothing. `set_voice(speaker)` with neither
        voice nor ref_audio unpins the speaker's voice.
        """
        speaker = _check_speaker(speaker)
        if voice is not None and ref_audio is not None:
            raise VoiceError("give either a voice name or ref_audio + ref_text, not both")
        if voice is None and ref_audio is None:
            if self.store.has_session(self.session):
                self.store.remove_voice_prompt(self.session, speaker)
            self._revision = None
            return None
        if voice is not None:
            text, audio, source = self._preset(voice)
            meta = {"voice": voice}
        else:
            if ref_text is None or not str(ref_text).strip():
                raise VoiceError(
                    "ref_audio needs ref_text, the words spoken in the clip: the voice prompt is "
                    "the clip's text followed by its audio"
                )
            if isinstance(ref_audio, (str, Path)):
                check_voice_file(ref_audio, what="The reference clip")  # before decoding it
            audio = _load_audio(ref_audio)
            text = str(ref_text).strip()
            check_voice_clip(audio, text, what="The reference clip")
            source = str(ref_audio) if isinstance(ref_audio, (str, Path)) else "array"
            meta = {"ref_audio": source}
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        meta["audio_sha256"] = hashlib.sha256(audio.tobytes()).hexdigest()
        self._sync()
        pinned = self._voices.get(speaker)
        if pinned is not None and pinned.meta.get("audio_sha256") == meta["audio_sha256"] and pinned.text == text:
            return self._segment(pinned)  # already pinned: keep its codes (and the cached prefix)
        codes = self._encode(audio)
        self._check_voice_fits(speaker, Segment(speaker, text, codes=codes))
        self._ensure_session()
        self.store.set_voice_prompt(
            self.session, speaker=speaker, text=text, codes=codes,
            audio=audio if self.store_audio else None, sample_rate=SAMPLE_RATE, meta=meta,
        )
        self._revision = None
        return Segment(speaker, text, audio=audio, codes=codes)

    @contextlib.contextmanager
    def undo_on_error(self):
        """Undo what the block stores (pinned voices, turns, the session itself) if it raises, so
        a request that pins a voice and then fails to say its turn leaves the session as it was:

            with conv.undo_on_error():
                conv.set_voice(1, ref_audio="clip.wav", ref_text="...")
                conv.say(1, "Hello.")
        """
        existed = self.store.has_session(self.session)
        self._sync()
        turns = len(self._turns)
        voices = {speaker: (row, self.store.audio(row.id) if row.has_audio else None)
                  for speaker, row in self._voices.items()}
        try:
            yield self
        except BaseException:
            self._restore(existed, turns, voices)
            raise

    def _restore(self, existed: bool, turns: int, voices: dict) -> None:
        if not self.store.has_session(self.session):
            return
        if not existed:
            self.store.delete_session(self.session)
            self._revision = None
            return
        self._sync()
        if len(self._turns) > turns:
            self.store.truncate(self.session, turns)
        current = dict(self._voices)
        for speaker, row in current.items():
            if speaker not in voices:
                self.store.remove_voice_prompt(self.session, speaker)
        for speaker, (row, audio) in voices.items():
            now = current.get(speaker)
            if now is not None and now.id == row.id:
                continue
            samples, rate = audio if audio is not None else (None, SAMPLE_RATE)
            self.store.set_voice_prompt(self.session, speaker=speaker, text=row.text,
                                        codes=row.codes, audio=samples, sample_rate=rate,
                                        meta=row.meta)
        self._revision = None

    def say(
        self,
        speaker: int,
        text: str,
        *,
        temperature: float = 0.9,
        top_k: int = 50,
        seed: int | None = None,
        max_audio_length_ms: float | None = None,
        meta: dict | None = None,
    ) -> Segment:
        """Generate `speaker` saying `text` after the conversation so far; store it; return it."""
        stored: list[Segment] = []
        for _ in self._generate(speaker, text, stream=False, temperature=temperature, top_k=top_k,
                                seed=seed, max_audio_length_ms=max_audio_length_ms, meta=meta,
                                stored=stored):
            pass
        return stored[-1]

    def say_stream(
        self,
        speaker: int,
        text: str,
        *,
        temperature: float = 0.9,
        top_k: int = 50,
        seed: int | None = None,
        max_audio_length_ms: float | None = None,
        meta: dict | None = None,
        streaming_interval: float = 0.5,
    ) -> Iterator:
        """Like say(), yielding GenerationResults as audio is generated.

        The turn is stored just before the final result is yielded; a consumer that stops
        earlier stores nothing.
        """
        return self._generate(speaker, text, stream=True, temperature=temperature, top_k=top_k,
                              seed=seed, max_audio_length_ms=max_audio_length_ms, meta=meta,
                              streaming_interval=streaming_interval)

    def add(self, speaker: int, text: str, audio, meta: dict | None = None) -> Segment:
        """Store a recorded turn: `audio` (path or 1-D array at 24 kHz) with its transcript.

        The audio is Mimi-encoded once here; later turns use the stored codes.
        """
        speaker = _check_speaker(speaker)
        if not isinstance(text, str) or not text.strip():
            raise InputError("a recorded turn needs its transcript (the words spoken), got empty text")
        samples = _load_audio(audio)
        codes = self._encode(samples)
        self._sync()
        self._ensure_session()
        row = self.store.append_turn(
            self.session, speaker=speaker, text=text.strip(), codes=codes, source="recorded",
            audio=samples if self.store_audio else None, sample_rate=SAMPLE_RATE, meta=meta,
            window_start=self._previous_start(),
        )
        self._revision = None
        return Segment(speaker, row.text, audio=samples, codes=codes)

    def truncate(self, n: int) -> None:
        """Keep the first `n` turns, delete the rest."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"truncate needs a number of turns >= 0, got {n!r}")
        if self.store.has_session(self.session):
            self.store.truncate(self.session, n)
        self._revision = None

    def undo(self) -> Segment | None:
        """Delete the last turn and return it (None when there is none)."""
        last = self._synced_turns()[-1] if self._synced_turns() else None
        audio = self._stored_audio(last) if last is not None else None
        row = self.store.pop_turn(self.session) if self.store.has_session(self.session) else None
        self._revision = None
        if row is None:
            return None
        return Segment(row.speaker, row.text, audio=audio if last is not None and row.id == last.id else None, codes=row.codes)

    # -- one generated turn ----------------------------------------------------------------------

    def _generate(self, speaker, text, *, stream, temperature, top_k, seed, max_audio_length_ms,
                  meta, streaming_interval=0.5, stored=None) -> Iterator:
        speaker = _check_speaker(speaker)
        if not isinstance(text, str) or not text.strip():
            raise InputError("The text to speak is empty; give at least one word.")
        length_ms = DEFAULT_MAX_AUDIO_LENGTH_MS if max_audio_length_ms is None else max_audio_length_ms
        checked = check_options(temperature=temperature, top_k=top_k, seed=seed,
                                max_audio_length_ms=length_ms,
                                streaming_interval=streaming_interval)
        temperature, top_k, seed = checked["temperature"], checked["top_k"], checked["seed"]
        length_ms, streaming_interval = checked["max_audio_length_ms"], checked["streaming_interval"]
        if meta is not None and not isinstance(meta, dict):
            raise InputError(f"meta must be a dict (the caller's own data) or None, got {type(meta).__name__}")
        if self._turn_in_flight:
            raise SessionBusyError(
                f"session {self.session!r} is generating a turn now; a second one would not hear it. "
                "Wait for that turn to finish (or cancel it), then ask again.")
        self._turn_in_flight = True
        try:
            return self._start_turn(speaker, text, stream=stream, temperature=temperature,
                                    top_k=top_k, seed=seed, length_ms=length_ms, meta=meta,
                                    streaming_interval=streaming_interval, stored=stored)
        except BaseException:
            self._turn_in_flight = False
            raise

    def _start_turn(self, speaker, text, *, stream, temperature, top_k, seed, length_ms, meta,
                    streaming_interval, stored) -> Iterator:
        model = self.model
        # The model's own rule for what is spoken; it is what the turn stores, so later prompts hold
        # exactly the rows the KV cache computed for it.
        spoken = model.spoken_text(text)
        self._sync()
        revision = self._revision  # what this turn hears; storing it checks nobody wrote since
        plan = self._plan(speaker, spoken, length_ms)
        params = {
            "temperature": float(temperature),
            "top_k": int(top_k),
            "seed": None if seed is None else int(seed),
            "max_audio_length_ms": float(length_ms),
        }
        if spoken != text:
            params["text_as_given"] = text
        # One turn is one utterance, planned once (never split: its pieces would not hear each other).
        context = [model.with_codes(segment) for segment in plan.segments]
        turn = model.plan_turn(spoken, speaker, context, max_audio_length_ms=length_ms, normalize=False)
        started = time.perf_counter()
        results = model.generate_turn(turn, temperature=temperature, top_k=top_k, seed=seed,
                                      stream=stream, streaming_interval=streaming_interval,
                                      reuse_cache=self.reuse_cache,  # bad input raises here
                                      cache_key=self.cache_key)
        return self._run_turn(results, started, speaker, plan, params, meta,
                              [] if stored is None else stored, revision)

    def _run_turn(self, results, started, speaker, plan, params, meta, stored, revision) -> Iterator:
        chunks, codes, first = [], None, None
        try:
            for result in results:
                if first is None:
                    first = result
                if result.audio is not None:
                    chunks.append(np.asarray(result.audio, dtype=np.float32).reshape(-1))
                codes = np.asarray(result.frames, dtype=np.int32)  # the utterance so far
                if result.is_final:
                    stored.append(self._store_generated(
                        speaker, result.text, codes, chunks, result, first, plan, params, meta,
                        time.perf_counter() - started, revision,
                    ))
                yield result
        finally:
            self._turn_in_flight = False
            results.close()

    def _store_generated(self, speaker, spoken, codes, chunks, result, first, plan, params, meta, wall,
                         revision=None):
        audio = np.concatenate(chunks) if chunks else None
        timing = {
            "time_to_first_audio": float(first.time_to_first_audio),
            "real_time_factor": float(result.real_time_factor),
            "audio_duration": float(result.audio_duration),
            "prefill_tokens": int(first.prefill_tokens),
            "cached_tokens": int(first.cached_tokens),
            "peak_memory": float(result.peak_memory),
            "stop_reason": result.stop_reason,
            "wall_seconds": round(wall, 6),
            "prompt_rows": plan.window.pinned_rows + plan.window.history_rows + plan.text_rows,
            "pruned": plan.window.pruned,
        }
        if revision == -1:  # generated before the session existed: it must still be new (revision 0)
            revision = 0
        self._ensure_session()
        try:
            row = self._append_generated(speaker, spoken, codes, audio, result, params, timing, meta,
                                         plan, revision)
        except ConcurrentWriteError as error:
            self._revision = None
            raise SessionBusyError(str(error)) from None
        self._revision = None
        if audio is not None:
            self._audio[row.id] = audio
        return Segment(speaker, spoken, audio=audio, codes=codes)

    def _append_generated(self, speaker, spoken, codes, audio, result, params, timing, meta, plan,
                          revision):
        return self.store.append_turn(
            self.session, speaker=speaker, text=spoken, codes=codes, source="generated",
            audio=audio if (self.store_audio and audio is not None) else None,
            sample_rate=int(result.sample_rate), params=params, seed=result.seed, timing=timing, meta=meta,
            window_start=plan.window.start, expected_revision=revision,
        )

    # -- internals -------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Reload turns and voices when the database changed (here or in another process)."""
        try:
            revision = self.store.revision(self.session)
        except SessionNotFoundError:  # not created yet (nothing stored), or deleted meanwhile
            revision = -1
        if revision == self._revision:
            return
        if revision == -1:
            self._turns, self._voices = [], {}
        else:
            self._turns = self.store.turns(self.session)
            self._voices = self.store.voice_prompts(self.session)
        self._revision = revision
        live = {row.id for row in self._turns} | {row.id for row in self._voices.values()}
        self._rows = {k: v for k, v in self._rows.items() if k in live}
        self._audio = {k: v for k, v in self._audio.items() if k in live}

    def _check_voice_fits(self, speaker: int, prompt: Segment) -> None:
        """A voice is pinned only if, beside the other pinned voices, a short turn still fits
        the context; else every later turn would fail (ContextTooLongError, nothing stored)."""
        voice_rows = int(self.model.prompt_rows([prompt]))
        pinned = voice_rows + sum(self._row_count(row) for s, row in self._voices.items()
                                  if s != speaker)
        room = self.limit - pinned
        if room < MIN_TURN_ROWS:
            raise ContextTooLongError(
                f"The voice for speaker {speaker} takes {voice_rows} positions and the pinned "
                f"voices together {pinned} of the model's {self.limit}, leaving {max(room, 0)}: a "
                f"turn needs at least {MIN_TURN_ROWS} (a short line and a few seconds of audio). "
                "Use a shorter clip (8-12 s works best), or unpin another speaker's voice."
            )

    def _ensure_session(self) -> None:
        """Create the session in the database (on its first write)."""
        if not self.store.has_session(self.session):
            self.store.open_session(self.session)
            self._revision = None

    def _synced_turns(self) -> list[StoredSegment]:
        self._sync()
        return self._turns

    def _previous_start(self) -> int:
        for row in reversed(self._turns):
            if row.window_start is not None:
                return row.window_start
        return 0

    def _plan(self, speaker: int, text: str, max_audio_length_ms) -> ContextPlan:
        model = self.model
        length_ms = DEFAULT_MAX_AUDIO_LENGTH_MS if max_audio_length_ms is None else max_audio_length_ms
        pinned = [self._context_segment(row) for row in self._voices.values()]
        history = [self._context_segment(row) for row in self._turns]
        text_rows = int(model.text_rows(text, speaker, normalize=False))
        max_frames = int(model.max_frames_for(text, length_ms, normalize=False))
        window = choose_window(
            [self._row_count(row) for row in self._turns],
            pinned_rows=sum(self._row_count(row) for row in self._voices.values()),
            reserve_rows=text_rows + max_frames,
            limit=self.limit,
            previous_start=self._previous_start(),
        )
        return ContextPlan(window=window, segments=pinned + history[window.start:],
                           max_frames=max_frames, text_rows=text_rows)

    def _row_count(self, row: StoredSegment) -> int:
        if row.id not in self._rows:
            self._rows[row.id] = int(self.model.prompt_rows([self._context_segment(row)]))
        return self._rows[row.id]

    @staticmethod
    def _context_segment(row: StoredSegment) -> Segment:
        return Segment(row.speaker, row.text, codes=row.codes)

    def _stored_audio(self, row: StoredSegment) -> np.ndarray | None:
        if row.id not in self._audio:
            loaded = self.store.audio(row.id) if row.has_audio else None
            self._audio[row.id] = None if loaded is None else resample(*loaded)
        return self._audio[row.id]

    def _turn_audio(self, row: StoredSegment) -> np.ndarray:
        audio = self._stored_audio(row)
        if audio is None:
            audio = np.asarray(self.model.decode(row.codes), dtype=np.float32).reshape(-1)
            self._audio[row.id] = audio
        return audio

    def _segment(self, row: StoredSegment) -> Segment:
        return Segment(row.speaker, row.text, audio=self._stored_audio(row), codes=row.codes)

    def _turn(self, row: StoredSegment) -> Turn:
        return Turn(id=row.id, index=row.index, segment=self._segment(row), source=row.source,
                    meta=row.meta, params=row.params, created_at=row.created_at, seed=row.seed,
                    timing=row.timing, window_start=row.window_start)

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        codes = np.asarray(self.model.encode_audio(audio), dtype=np.int32)
        if codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS:
            raise InputError(f"encode_audio returned codes of shape {codes.shape}, expected "
                             f"(frames, {NUM_CODEBOOKS})")
        return codes

    def _preset(self, name: str):
        library = self.model.voices
        if library is None:
            raise VoiceError(f"this model has no voice presets; use ref_audio + ref_text instead of {name!r}")
        voice = library.get(name)
        return voice.text, voice.audio, name


def _check_speaker(speaker) -> int:
    return check_option("speaker", speaker)


def _load_audio(source) -> np.ndarray:
    """A path (any format/rate/channels, via engine.audio) or a 1-D float array at 24 kHz."""
    if isinstance(source, (str, Path)):
        return np.asarray(load_audio(source), dtype=np.float32).reshape(-1)
    samples = np.asarray(source)
    if samples.ndim != 1 or samples.size == 0 or not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(
            f"audio must be a file path or a non-empty 1-D float array at 24 kHz, got "
            f"{samples.dtype} {samples.shape}; use engine.audio.load_audio() to convert"
        )
    return samples.astype(np.float32, copy=False)
