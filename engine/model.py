"""`load_model` and `CSMModel`: the network, its tokenizer, its codec and its voices, ready to speak.

    model = load_model("sesame/csm-1b")          # hub id, local folder, or "tiny-random" (offline)
    for result in model.generate(text="Hello from Sesame.", voice="conversational_a"):
        result.audio                              # mx.array float32, 24 kHz mono

What `generate` does for one call:
  1. the text (str or list of str) is normalised to spoken form (switch off with normalize=False)
     and split into pieces that fit the context budget; each piece is its own utterance;
  2. the voice prompt is found: ref_audio + ref_text, else the preset / registered `voice`, else
     none (voice=None); its Mimi codes are computed once per model and cached;
  3. context segments with audio but no codes are encoded (cached by audio content);
  4. the prompt is built (engine.prompt): voice-match form (the reference transcript and the new
     text as one text segment, the reference audio after it without its EOS row, so the model
     continues the reference voice) or the reference form (the voice prompt as an ordinary context
     segment first); `context` goes before the voice-match segment / after the voice segment;
  5. the budget is checked: prompt rows + the frame cap <= 2048, else ContextTooLongError;
  6. the generator (engine/generator.py) reuses the KV cache's common prefix with the previous
     request, runs the frame loop and decodes audio (streamed or whole).

Randomness: `seed=None` draws a seed, which every result reports; the same seed gives the same
codes (also with or without KV-cache reuse, streamed or not).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import attrs
import mlx.core as mx
import numpy as np

from engine.audio import load_audio
from engine.backends import Draw, choose_backend
from engine.checkpoints import codec_source, load_csm, load_tokenizer_path, resolve_model
from engine.constants import DEFAULT_MODEL, FRAME_RATE, NUM_CODEBOOKS, SAMPLE_RATE
from engine.device import default_dtype
from engine.errors import AudioError, ContextTooLongError, InputError, VoiceError
from engine.generator import (
    Generator,
    chunk_frames_for,
    frame_cap,
    stream_seed,
)
from engine.mimi import Mimi, MimiConfig, load_mimi, mimi_from_weights
from engine.option_checks import check_flag, check_option, check_options
from engine.options import EngineOptions
from engine.prompt import build_prompt, build_voice_match_prompt, count_rows
from engine.quantize import quantize_csm, quantized_paths
from engine.sampling import make_sampler
from engine.segment import Segment
from engine.text import TextTokenizer, normalize_text, split_text
from engine.voices import VoiceLibrary, check_voice_clip, check_voice_file, clip_warnings
from engine.watermark import apply_watermark, warn_streaming_unmarked

DEFAULT_VOICE = "conversational_a"
MAX_PIECE_CHARS = 400  # longest text piece per utterance (about 25 s of natural speech)
MIN_PIECE_CHARS = 20  # below this, splitting further will not help the budget
_CONTEXT_CODES_CACHE = 256  # encoded context clips kept per model (voices are kept for good)


@attrs.frozen(eq=False)
class GenerationResult:
    """One result of `CSMModel.generate`: a whole utterance, or one streamed chunk of it."""

    audio: mx.array  # (samples,) float32 at `sample_rate`: this result's audio
    sample_rate: int
    codes: np.ndarray  # (frames, 32) int32: the frames of this result's audio
    frames: np.ndarray  # (frames, 32) int32: every frame of this utterance so far
    samples: int  # len(audio)
    audio_duration: float  # seconds of audio in this result
    real_time_factor: float  # compute seconds / audio seconds, utterance so far (0 without audio)
    time_to_first_audio: float  # seconds from the generate() call to this utterance's first audio
    prefill_tokens: int  # backbone positions computed for this utterance's prompt
    cached_tokens: int  # prompt positions reused from the KV cache
    peak_memory: float  # GB, peak MLX memory since the call began
    text: str  # the text spoken (after normalisation)
    speaker: int
    segment_index: int  # which piece of the call's text (0, 1, ...)
    chunk_index: int  # which chunk of the piece (0 when not streaming)
    is_final: bool  # the last result of this piece (utterance)
    stop_reason: str | None  # on the final result: end_of_speech | text_length_cap | max_audio_length
    seed: int  # the seed of this call: pass it back to reproduce the codes
    compute_seconds: float  # time spent generating this utterance so far
    prompt_tokens: int  # rows of this utterance's prompt (prefill_tokens + cached_tokens)

    @property
    def frames_per_second(self) -> float:
        """Generated frames per compute second (utterance so far)."""
        return len(self.frames) / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def to_segment(self) -> Segment:
        """The utterance so far as a Segment (speaker, text, codes) — the audio is not included, as a
        streamed result holds only its chunk; decode the codes or join the chunks for it."""
        return Segment(self.speaker, self.text, codes=self.frames)


def _audio_key(audio: np.ndarray) -> str:
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    return hashlib.sha1(audio.tobytes()).hexdigest()


_SENTENCE_END = re.compile(r"""[.!?…]["'”’)\]]*\s*$""")
_WEAK_END = re.compile(r"""[\s,;:–—-]+$""")


def end_sentence(text: str) -> str:
    """`text` ending as a sentence: a final comma, colon, semicolon or dash becomes a full stop,
    and a line with no sentence end gets one. CSM often stops right on the last phoneme (cutting
    its release) when a line does not end as a sentence (Sesame csm issue #119)."""
    if _SENTENCE_END.search(text):
        return text
    return _WEAK_END.sub("", text.rstrip()) + "."


def _check_clip_length(audio: np.ndarray, what: str) -> None:
    """Warn about clips that clone poorly (under 2 s, over 30 s)."""
    for message in clip_warnings(audio, SAMPLE_RATE, what):
        warnings.warn(message, UserWarning, stacklevel=4)


class CSMModel:
    """A loaded CSM: `.csm` (network), `.tokenizer`, `.codec` (Mimi), `.voices`, `.generator`."""

    def __init__(self, csm, tokenizer, codec, voices=None, path: Path | None = None, name: str = "",
                 options: EngineOptions | None = None, cache_bytes: int | None = None):
        """`options`: how the network computes (the frame backend is chosen from them once, here);
        `cache_bytes`: the generator's KV-cache budget (default: sized from the machine's memory)."""
        self.csm = csm
        self.tokenizer = tokenizer
        self.codec = codec
        self.voices = voices
        self.path = path
        self.name = name or (str(path) if path else "")
        self.sample_rate = SAMPLE_RATE
        self.max_positions = int(csm.config.max_seq_len)
        self.options = options or EngineOptions.from_env()
        self.backend = choose_backend(csm, self.options)
        self.generator = Generator(self.backend, codec, self.max_positions, cache_bytes=cache_bytes)
        self._voice_codes: dict[tuple, np.ndarray] = {}
        self._context_codes: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encode_count = 0  # codec encodes done (tests check that voices are encoded once)

    def __repr__(self) -> str:
        return f"CSMModel({self.name!r})"

    # -- codec -----------------------------------------------------------------------------------

    def encode_audio(self, audio) -> np.ndarray:
        """Mimi codes of a 1-D float 24 kHz clip: (frames, 32) int32. Not cached."""
        audio = _as_audio(audio)
        if audio.shape[0] == 0:
            raise AudioError("the audio clip is empty; give at least a second of speech")
        self.encode_count += 1
        codes = np.asarray(self.codec.encode(audio))  # (K, F)
        return np.ascontiguousarray(codes.T, dtype=np.int32)

    def decode(self, codes) -> mx.array:
        """Audio (samples,) float32 of Mimi codes (frames, 32)."""
        codes = np.asarray(codes, dtype=np.int32)
        if codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS:
            raise InputError(f"codes must be (frames, {NUM_CODEBOOKS}), got shape {codes.shape}")
        if codes.shape[0] == 0:
            return mx.zeros((0,), mx.float32)
        return self.codec.decode(np.ascontiguousarray(codes.T))

    def _cached_codes(self, audio: np.ndarray) -> np.ndarray:
        """Codes of a context clip, encoded once per distinct audio (LRU)."""
        key = _audio_key(audio)
        codes = self._context_codes.get(key)
        if codes is None:
            codes = self.encode_audio(audio)
            self._context_codes[key] = codes
            while len(self._context_codes) > _CONTEXT_CODES_CACHE:
                self._context_codes.popitem(last=False)
        else:
            self._context_codes.move_to_end(key)
        return codes

    def with_codes(self, segment: Segment) -> Segment:
        """The segment with Mimi codes (encoding its audio once if it has audio but no codes)."""
        if not isinstance(segment, Segment):
            raise InputError(f"context entries must be Segment objects, got {type(segment).__name__}")
        if segment.codes is None and segment.audio is not None:
            return segment.with_codes(self._cached_codes(segment.audio))
        return segment

    # -- voices ----------------------------------------------------------------------------------

    def voice_prompt(self, voice: str | None = None, ref_audio=None, ref_text: str | None = None,
                     speaker: int = 0) -> Segment | None:
        """The voice prompt as a Segment with codes: from ref_audio + ref_text, else a preset or
        registered voice by name, else None (voice=None)."""
        if ref_audio is not None:
            if ref_text is None or not str(ref_text).strip():
                raise VoiceError(
                    "ref_audio was given without ref_text: voice cloning needs the transcript of "
                    "the clip (the words spoken in it). Pass ref_text=\"...\" (--ref_text)."
                )
            if isinstance(ref_audio, (str, os.PathLike)):
                check_voice_file(ref_audio, what="The reference clip")  # before decoding it all
            audio = load_audio(ref_audio)
            check_voice_clip(audio, str(ref_text).strip(), what="The reference clip")
            _check_clip_length(audio, "The reference clip")
            key = ("ref", _audio_key(audio))
            codes = self._voice_codes.get(key)
            if codes is None:
                codes = self._voice_codes[key] = self.encode_audio(audio)
            return Segment(speaker, str(ref_text).strip(), audio=audio, codes=codes)
        if ref_text is not None and str(ref_text).strip():
            raise VoiceError("ref_text was given without ref_audio: pass the clip it transcribes "
                             "(ref_audio=path or array, --ref_audio).")
        if voice is None:
            return None
        if self.voices is None:
            raise VoiceError(f"this model has no voice presets, so voice={voice!r} is unknown; "
                             "pass voice=None or ref_audio + ref_text")
        found = self.voices.get(voice)  # VoiceError listing the known names when unknown
        audio = _as_audio(found.audio)
        key = ("voice", found.name, _audio_key(audio))
        codes = self._voice_codes.get(key)
        if codes is None:
            _check_clip_length(audio, f"The voice {found.name!r}")
            codes = self._voice_codes[key] = self.encode_audio(audio)
        return Segment(speaker, found.text, audio=audio, codes=codes)

    # -- budget ----------------------------------------------------------------------------------

    def prompt_rows(self, segments: Sequence[Segment]) -> int:
        """Backbone positions these segments take as context (text rows, audio rows, EOS rows).
        Segments with audio but no codes count as Mimi would encode them (ceil(samples/1920))."""
        return sum(count_rows(s, self.tokenizer) for s in segments)

    def text_rows(self, text: str, speaker: int = 0, normalize: bool = True) -> int:
        """Backbone positions the new line's text takes (BOS "[speaker]text" EOS)."""
        return len(self.tokenizer.encode_segment(int(speaker), self.spoken_text(text, normalize)))

    def max_frames_for(self, text: str, max_audio_length_ms: float = 90_000, normalize: bool = True) -> int:
        """The frame cap for a line: the text-length estimate, capped by max_audio_length_ms / 80."""
        return frame_cap(self.spoken_text(text, normalize), max_audio_length_ms)[0]

    def spoken_text(self, text: str, normalize: bool = True) -> str:
        """The text as generate() speaks it (one piece): normalised to spoken form, ending as a
        sentence, whitespace collapsed. With normalize=False: whitespace collapsed only."""
        return " ".join(self._prepare_text(text, normalize).split())

    @staticmethod
    def _prepare_text(text: str, normalize: bool) -> str:
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        if normalize:
            text = normalize_text(text)
        if not text.strip():
            raise InputError("The text to speak is empty; give at least one word.")
        return end_sentence(text) if normalize else text

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self,
        text: str | Sequence[str],
        voice: str | None = DEFAULT_VOICE,
        speaker: int = 0,
        context: Sequence[Segment] = (),
        ref_audio=None,
        ref_text: str | None = None,
        stream: bool = False,
        streaming_interval: float = 0.5,
        max_audio_length_ms: float = 90_000,
        voice_match: bool = True,
        temperature: float = 0.9,
        top_k: int = 50,
        seed: int | None = None,
        normalize: bool = True,
        reuse_cache: bool = True,
        watermark: bool = True,
        max_piece_chars: int = MAX_PIECE_CHARS,
        on_frame: Callable[[int, int], None] | None = None,
        cache_key=None,
        **unknown,
    ) -> Iterator[GenerationResult]:
        """Speak `text`; yield GenerationResult per utterance (per chunk when stream=True).

        Inputs are checked, the voice prompt and context are encoded and the text is split before
        this returns, so bad input raises here; the frames are generated as you iterate.
        `on_frame(frames_so_far, frame_cap)` is called after every generated frame (progress bars).
        `cache_key` names the conversation (a session id): the generator keeps a KV cache per key,
        so conversations taking turns each reuse their own history; calls without one share a cache.
        """
        started = time.perf_counter()
        if unknown:
            raise InputError(f"unknown generate() option(s): {', '.join(sorted(unknown))}")
        checked = check_options(temperature=temperature, top_k=top_k, seed=seed, speaker=speaker,
                                max_audio_length_ms=max_audio_length_ms,
                                streaming_interval=streaming_interval)
        temperature, top_k, seed, speaker, max_audio_length_ms, streaming_interval = (
            checked["temperature"], checked["top_k"], checked["seed"], checked["speaker"],
            checked["max_audio_length_ms"], checked["streaming_interval"])
        stream, voice_match = check_flag("stream", stream), check_flag("voice_match", voice_match)
        normalize, reuse_cache = check_flag("normalize", normalize), check_flag("reuse_cache", reuse_cache)
        watermark = check_flag("watermark", watermark)
        if ref_text is not None and not isinstance(ref_text, str):
            raise InputError(f"ref_text must be text (a str), got {type(ref_text).__name__}")
        if voice is not None and not isinstance(voice, str):
            raise VoiceError(f"voice must be a voice name (a str) or None, got {type(voice).__name__}")
        if on_frame is not None and not callable(on_frame):
            raise InputError("on_frame must be a function (frames_so_far, frame_cap) or None")
        sampler = make_sampler(temperature, top_k)
        chunk_frames = chunk_frames_for(streaming_interval) if stream else 0
        seed = _check_seed(seed)

        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
        else:
            raise InputError(f"text must be a str or a list of str, got {type(text).__name__}")
        if not texts:
            raise InputError("The text to speak is empty; give at least one word.")
        lines = [self._prepare_text(t, normalize) for t in texts]
        if isinstance(max_piece_chars, bool) or not isinstance(max_piece_chars, (int, np.integer)) \
                or max_piece_chars < 1:
            raise InputError(f"max_piece_chars must be a positive int, got {max_piece_chars!r}")
        if isinstance(context, Segment) or not isinstance(context, (list, tuple, type(None))):
            raise InputError("context must be a list of Segment objects (earlier turns, oldest first)")
        reference = self.voice_prompt(voice, ref_audio, ref_text, speaker)
        context = [self.with_codes(s) for s in (context or ())]
        plans = [plan for line in lines
                 for plan in self._plan_pieces(line, speaker, context, reference, voice_match,
                                               max_audio_length_ms, max_piece_chars, normalize)]
        return self._generate(plans, sampler=sampler, seed=seed, stream=stream,
                              chunk_frames=chunk_frames, reuse_cache=reuse_cache,
                              watermark=watermark, on_frame=on_frame, started=started,
                              cache_key=cache_key)

    def generate_turn(self, plan: "TurnPlan", *, temperature: float = 0.9, top_k: int = 50,
                      seed: int | None = None, stream: bool = False, streaming_interval: float = 0.5,
                      reuse_cache: bool = True, watermark: bool = True,
                      on_frame: Callable[[int, int], None] | None = None,
                      cache_key=None) -> Iterator[GenerationResult]:
        """Generate one utterance from a plan the caller already made (`plan_turn`): the lower-level
        entry point under generate(), for callers that build their own context (Conversation).
        Yields GenerationResult as generate() does; bad options raise here, before any frame."""
        started = time.perf_counter()
        if not isinstance(plan, TurnPlan):
            raise InputError(f"generate_turn takes a TurnPlan from plan_turn(), got {type(plan).__name__}")
        sampler = make_sampler(temperature, top_k)
        stream, reuse_cache = check_flag("stream", stream), check_flag("reuse_cache", reuse_cache)
        watermark = check_flag("watermark", watermark)
        streaming_interval = check_option("streaming_interval", streaming_interval)
        chunk_frames = chunk_frames_for(streaming_interval) if stream else 0
        return self._generate([plan], sampler=sampler, seed=_check_seed(seed), stream=stream,
                              chunk_frames=chunk_frames, reuse_cache=reuse_cache,
                              watermark=watermark, on_frame=on_frame, started=started,
                              cache_key=cache_key)

    def _build_prompt(self, piece: str, speaker: int, context, reference, voice_match: bool):
        if reference is not None and voice_match:
            return build_voice_match_prompt(context, reference, piece, self.tokenizer, speaker=speaker)
        head = [reference] if reference is not None else []
        return build_prompt([*head, *context], speaker, piece, self.tokenizer)

    def plan_turn(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), *,
                  reference: Segment | None = None, voice_match: bool = True,
                  max_audio_length_ms: float = 90_000, normalize: bool = True) -> "TurnPlan":
        """One utterance, planned once: the text as spoken, its prompt rows and its frame cap.

        `text` is spoken as one utterance (never split: see generate() for long text); with
        normalize=False it is taken as already spoken (as `spoken_text` returns it). `context`
        segments need codes (see `with_codes`); `reference` is a voice prompt (see `voice_prompt`).
        Raises ContextTooLongError when the prompt and the frame cap do not fit the positions.
        Generate it with `generate_turn`."""
        speaker = check_option("speaker", speaker)
        max_audio_length_ms = check_option("max_audio_length_ms", max_audio_length_ms)
        spoken = self.spoken_text(text, normalize)
        tokens, mask = self._build_prompt(spoken, speaker, context, reference, voice_match)
        frames, reason = frame_cap(spoken, max_audio_length_ms)
        if len(tokens) + frames > self.max_positions:
            raise ContextTooLongError(self._too_long_message(len(tokens), frames, spoken, context, reference))
        return TurnPlan(spoken, int(speaker), tokens, mask, frames, reason)

    def _plan_pieces(self, line: str, speaker, context, reference, voice_match, max_audio_length_ms,
                     max_piece_chars, finish_sentences: bool = True) -> list["TurnPlan"]:
        """Split one line into pieces whose prompt + frame cap fit the backbone's positions (each
        piece ending as a sentence when `finish_sentences`)."""
        def split(text: str, limit: int) -> list[tuple[str, int]]:
            parts = split_text(text, limit)
            return [(end_sentence(p) if finish_sentences else p, limit) for p in parts]

        pieces = []
        todo = split(line, max_piece_chars)
        while todo:
            piece, limit = todo.pop(0)
            try:
                pieces.append(self.plan_turn(piece, speaker, context, reference=reference,
                                             voice_match=voice_match,
                                             max_audio_length_ms=max_audio_length_ms, normalize=False))
                continue
            except ContextTooLongError:
                smaller = min(limit, len(piece)) // 2
                if not (smaller >= MIN_PIECE_CHARS and len(piece) > smaller):
                    raise
            todo[:0] = split(piece, smaller)
        return pieces

    def _too_long_message(self, prompt: int, frames: int, piece: str, context, reference) -> str:
        held = []
        if reference is not None:
            held.append(f"the voice prompt {self.prompt_rows([reference])}")
        if context:
            held.append(f"{len(context)} context segment(s) {self.prompt_rows(context)}")
        where = f" ({', '.join(held)})" if held else ""
        return (
            f"The prompt takes {prompt} positions{where} and the line may need up to {frames} frames "
            f"(text: {piece[:40]!r}): {prompt + frames} > the model's {self.max_positions}. Drop older "
            "context segments, use a shorter voice clip, shorten the text, or lower "
            "max_audio_length_ms."
        )

    def _generate(self, plans, *, sampler, seed, stream, chunk_frames, reuse_cache, watermark,
                  on_frame, started, cache_key=None) -> Iterator[GenerationResult]:
        def piece(index: int, plan):
            # Each piece draws from its own stream of random numbers, derived from (seed, piece).
            draw = Draw(sampler.temperature, sampler.top_k, sampler.suppress_undecodable,
                        stream_seed(seed, index))
            return self.generator.generate(
                plan.tokens, plan.mask, max_frames=plan.max_frames, draw=draw,
                cap_reason=plan.cap_reason, stream=stream, chunk_frames=chunk_frames or 1,
                reuse_cache=reuse_cache, on_frame=on_frame, cache_key=cache_key,
            )

        # Batched, the first piece joins the batch now, so requests made together start together.
        first = piece(0, plans[0]) if self.generator.scheduler is not None else None
        return self._results(plans, piece, first, seed=seed, stream=stream, watermark=watermark,
                             started=started)

    def _results(self, plans, piece, first, *, seed, stream, watermark, started) -> Iterator[GenerationResult]:
        mx.reset_peak_memory()
        if stream and watermark:
            warn_streaming_unmarked()
        for index, plan in enumerate(plans):
            chunks = first if index == 0 and first is not None else piece(index, plan)
            try:
                for chunk in chunks:
                    audio = chunk.audio if chunk.audio is not None else mx.zeros((0,), mx.float32)
                    if watermark and not stream and audio.shape[0]:
                        audio = mx.array(apply_watermark(np.array(audio), self.sample_rate))
                    seconds_so_far = len(chunk.frames) / FRAME_RATE
                    samples = int(audio.shape[0])
                    yield GenerationResult(
                        audio=audio,
                        sample_rate=self.sample_rate,
                        codes=chunk.codes,
                        frames=chunk.frames,
                        samples=samples,
                        audio_duration=samples / self.sample_rate,
                        real_time_factor=(chunk.compute_seconds / seconds_so_far) if seconds_so_far else 0.0,
                        time_to_first_audio=chunk.first_audio_time - started,
                        prefill_tokens=chunk.prefill_tokens,
                        cached_tokens=chunk.cached_tokens,
                        peak_memory=mx.get_peak_memory() / 1e9,
                        text=plan.text,
                        speaker=plan.speaker,
                        segment_index=index,
                        chunk_index=chunk.chunk_index,
                        is_final=chunk.is_final,
                        stop_reason=chunk.stop_reason,
                        seed=seed,
                        compute_seconds=chunk.compute_seconds,
                        prompt_tokens=chunk.prefill_tokens + chunk.cached_tokens,
                    )
            finally:  # a request left early is cancelled now (batched: it leaves the batch)
                chunks.close()


@attrs.frozen(eq=False)
class TurnPlan:
    """One utterance ready to generate (`CSMModel.plan_turn`): what is spoken and its prompt."""

    text: str  # as spoken: normalised, ending as a sentence
    speaker: int
    tokens: np.ndarray  # (T, 33) prompt rows: context, voice prompt, the new line's text
    mask: np.ndarray  # (T, 33)
    max_frames: int  # frame cap: the text-length estimate or max_audio_length_ms, the stricter
    cap_reason: str  # which of the two it is (the stop reason if the cap ends the utterance)


def _check_seed(seed) -> int:
    """A seed for a call (engine.option_checks): None draws one (reported with every result)."""
    seed = check_option("seed", seed)
    return secrets.randbelow(2**31) if seed is None else seed


def _as_audio(audio) -> np.ndarray:
    if isinstance(audio, mx.array):
        audio = np.array(audio.astype(mx.float32))
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        audio = np.squeeze(audio)
        if audio.ndim != 1:
            raise AudioError(f"audio must be mono 1-D samples at 24 kHz, got shape {audio.shape}")
    return audio


# ------------------------------------------------------------------------------------------------
# Loading


def load_codec(path: Path):
    """The Mimi codec of a model folder: `codec_model.*` in a transformers checkpoint, else the
    Kyutai-layout file beside it or the public one (kyutai/moshiko-pytorch-bf16)."""
    source = codec_source(path)
    if source.weights is not None:
        return mimi_from_weights(source.weights, MimiConfig.from_dict(source.config))
    return load_mimi(source.file)


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, dtype: str | None = None,
               quantize: int | None = None, options: EngineOptions | None = None,
               voices_dir=None, cache_bytes: int | None = None) -> CSMModel:
    """Load a CSM model: a hub id (downloaded and cached), a local folder, or "tiny-random".

    `dtype`: "float32", "bfloat16" or "float16" for the float weights (None: the device's measured
    default, engine/device.py). `quantize`: 8 or 4 (or 2, 3, 5, 6) bits to quantize the network at
    load, as `csm convert --quantize` does on disk; a checkpoint that is already quantized loads as
    it is and refuses another quantization. `options`: the engine settings (EngineOptions; default
    from the environment); `dtype` overrides its dtype. `voices_dir`: where user-registered voices
    live (default $CSM_HOME/voices). `cache_bytes`: how many bytes of KV caches the generator keeps
    for conversations (least recently used out; default 1/8 of the machine's memory).
    """
    options = (options or EngineOptions.from_env()).with_(dtype=dtype)
    path = resolve_model(name_or_path)
    csm = load_csm(path, dtype=default_dtype(options))
    if quantize is not None:
        if quantized_paths(csm):
            raise InputError(f"{name_or_path} is already quantized; load it as it is (without "
                             "quantize= or --quantize), or quantize its float original")
        quantize_csm(csm, quantize)
    tokenizer = TextTokenizer.from_file(load_tokenizer_path(path))
    codec = load_codec(path)
    voices = VoiceLibrary(path, user_dir=voices_dir) if voices_dir is not None else VoiceLibrary(path)
    return CSMModel(csm, tokenizer, codec, voices, path=path, name=str(name_or_path), options=options,
                    cache_bytes=cache_bytes)
