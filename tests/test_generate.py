"""CSMModel.generate on the tiny random model: results, seeds, streaming, stop rules, voices,
context, text handling and every input error. (The audio is noise: the weights are random.)"""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

import engine.generator as generator_module
from engine import GenerationResult, Segment
from engine.errors import AudioError, ContextTooLongError, InputError, VoiceError
from engine.generator import STOP_END_OF_SPEECH, STOP_MAX_AUDIO_LENGTH, STOP_TEXT_LENGTH_CAP, text_frame_cap

SR = 24_000
FRAME = 1920
SHORT_MS = 480  # 6 frames: keeps each generation quick


def run(model, text="Hello there.", **options):
    options.setdefault("max_audio_length_ms", SHORT_MS)
    options.setdefault("seed", 7)
    return list(model.generate(text, **options))


def noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# One result


def test_result_carries_audio_codes_and_figures(tiny_model):
    (r,) = run(tiny_model)
    assert isinstance(r, GenerationResult)
    assert isinstance(r.audio, mx.array) and r.audio.dtype == mx.float32 and r.audio.ndim == 1
    assert r.sample_rate == SR
    assert r.codes.shape == (6, 32) and r.codes.dtype == np.int32
    assert 0 <= r.codes.min() and r.codes.max() < 2048  # every generated code is decodable
    assert np.array_equal(r.frames, r.codes)
    assert r.samples == r.audio.shape[0] == 6 * FRAME
    assert r.audio_duration == pytest.approx(6 * 0.08)
    assert r.real_time_factor > 0 and r.compute_seconds > 0 and r.frames_per_second > 0
    assert r.time_to_first_audio > 0
    assert r.peak_memory > 0
    assert r.prefill_tokens >= 1 and r.prefill_tokens + r.cached_tokens == r.prompt_tokens
    assert (r.is_final, r.stop_reason, r.segment_index, r.chunk_index) == (True, STOP_MAX_AUDIO_LENGTH, 0, 0)
    assert (r.seed, r.text, r.speaker) == (7, "Hello there.", 0)
    seg = r.to_segment()
    assert isinstance(seg, Segment) and np.array_equal(seg.codes, r.codes)


def test_same_seed_same_codes_and_a_drawn_seed_is_reported(tiny_model):
    a, = run(tiny_model, seed=3)
    b, = run(tiny_model, seed=3)
    assert np.array_equal(a.codes, b.codes)
    assert np.array_equal(np.array(a.audio), np.array(b.audio))
    other, = run(tiny_model, seed=4)
    assert not np.array_equal(a.codes, other.codes)
    drawn, = run(tiny_model, seed=None)
    assert isinstance(drawn.seed, int) and drawn.seed >= 0
    again, = run(tiny_model, seed=drawn.seed)
    assert np.array_equal(drawn.codes, again.codes)


def test_streamed_chunks_join_to_the_non_streamed_audio(tiny_model):
    whole, = run(tiny_model, seed=5, max_audio_length_ms=1200)  # 15 frames
    chunks = run(tiny_model, seed=5, max_audio_length_ms=1200, stream=True, streaming_interval=0.32)
    assert [len(c.codes) for c in chunks] == [4, 4, 4, 3]  # 0.32 s = 4 frames per chunk
    assert [c.is_final for c in chunks] == [False, False, False, True]
    assert [c.chunk_index for c in chunks] == [0, 1, 2, 3]
    assert np.array_equal(np.concatenate([c.codes for c in chunks]), whole.codes)
    assert np.array_equal(chunks[-1].frames, whole.codes)
    assert [len(c.frames) for c in chunks] == [4, 8, 12, 15]
    joined = np.concatenate([np.array(c.audio) for c in chunks])
    assert joined.shape == np.array(whole.audio).shape
    assert np.abs(joined - np.array(whole.audio)).max() <= 1e-5
    assert chunks[-1].stop_reason == STOP_MAX_AUDIO_LENGTH and chunks[0].stop_reason is None
    assert len({c.time_to_first_audio for c in chunks}) == 1  # the utterance's first audio


def test_a_chunk_ending_on_the_last_frame_is_decoded_once(tiny_model):
    """16 frames in chunks of 4: the last frame completes a chunk (its decode is queued ahead of
    the next frame inside the loop) and is also the final chunk."""
    whole, = run(tiny_model, seed=5, max_audio_length_ms=1280)
    chunks = run(tiny_model, seed=5, max_audio_length_ms=1280, stream=True, streaming_interval=0.32)
    assert [len(c.codes) for c in chunks] == [4, 4, 4, 4]
    assert [c.is_final for c in chunks] == [False, False, False, True]
    joined = np.concatenate([np.array(c.audio) for c in chunks])
    assert joined.shape == (16 * FRAME,)
    assert np.abs(joined - np.array(whole.audio)).max() <= 1e-5


def silence_at(model, monkeypatch, n: int) -> None:
    """Make the model's n-th generated frame all zeros (end of speech): the generator draws every
    frame of a request through backend.frames (the first from the prompt's hidden state)."""
    backend = model.generator.backend
    calls = []
    real = backend.frames

    def call(*args):
        codes = real(*args)
        calls.append(1)
        return np.zeros_like(np.asarray(codes)) if len(calls) == n else codes

    monkeypatch.setattr(backend, "frames", call)


def test_end_of_speech_on_a_chunk_edge_streams_what_came_before(tiny_model, monkeypatch):
    silence_at(tiny_model, monkeypatch, 8)  # frame 8 would end chunk 2
    chunks = run(tiny_model, seed=5, max_audio_length_ms=2000, stream=True, streaming_interval=0.32)
    assert [len(c.codes) for c in chunks] == [4, 3]
    assert chunks[-1].stop_reason == STOP_END_OF_SPEECH
    assert sum(len(np.array(c.audio)) for c in chunks) == 7 * FRAME


# ------------------------------------------------------------------------------------------------
# Stop rules


def test_all_zero_frame_ends_the_utterance(tiny_model, monkeypatch):
    silence_at(tiny_model, monkeypatch, 4)
    (r,) = run(tiny_model, max_audio_length_ms=2000)
    assert r.stop_reason == STOP_END_OF_SPEECH
    assert r.codes.shape == (3, 32)  # the all-zero frame is not audio; nothing before it is cut
    assert r.samples == 3 * FRAME


def test_text_length_cap_stops_a_runaway(tiny_model, monkeypatch):
    monkeypatch.setattr(generator_module, "PAUSE_ALLOWANCE_SECONDS", 0.0)  # a small cap, quickly
    cap = text_frame_cap("Hi there.")
    assert tiny_model.max_frames_for("Hi there.", 90_000) == cap
    (r,) = run(tiny_model, "Hi there.", max_audio_length_ms=90_000, voice=None)
    assert r.stop_reason == STOP_TEXT_LENGTH_CAP and len(r.codes) == cap


def test_max_frames_for_is_the_stricter_cap(tiny_model):
    text = "I have 2 cats and 3 dogs."
    assert tiny_model.max_frames_for(text, 800) == 10
    long_cap = tiny_model.max_frames_for(text, 90_000)
    assert long_cap == text_frame_cap("I have two cats and three dogs.")  # normalised first
    assert tiny_model.max_frames_for("Hello", 90_000) == text_frame_cap("Hello.")
    assert tiny_model.max_frames_for(text, 90_000, normalize=False) == text_frame_cap(text)
    assert 20 < long_cap < 1125


# ------------------------------------------------------------------------------------------------
# Voices and context


def test_voice_prompt_is_encoded_once_per_model(tiny_model):
    run(tiny_model, voice="conversational_b")
    before = tiny_model.encode_count
    run(tiny_model, voice="conversational_b", seed=1)
    run(tiny_model, voice="conversational_b", voice_match=False, seed=2)
    assert tiny_model.encode_count == before


def test_prompt_forms(tiny_model):
    from engine.prompt import build_prompt, build_voice_match_prompt

    text = "Hello there."
    none, = run(tiny_model, text, voice=None)
    assert none.prompt_tokens == len(tiny_model.tokenizer.encode_segment(0, text))
    voice = tiny_model.voice_prompt("conversational_a", speaker=0)
    matched, = run(tiny_model, text)
    assert matched.prompt_tokens == len(build_voice_match_prompt([], voice, text, tiny_model.tokenizer)[0])
    plain, = run(tiny_model, text, voice_match=False)
    assert plain.prompt_tokens == len(build_prompt([voice], 0, text, tiny_model.tokenizer)[0])


def test_context_in_both_voice_modes_keeps_every_segment(tiny_model):
    turns = [Segment(0, "Hi!", codes=np.full((3, 32), 5, np.int32)),
             Segment(1, "Hey, how are you?", codes=np.full((4, 32), 9, np.int32))]
    context_rows = tiny_model.prompt_rows(turns)
    assert context_rows == sum(len(tiny_model.tokenizer.encode_segment(s.speaker, s.text)) + len(s.codes) + 1
                               for s in turns)
    voice = tiny_model.voice_prompt("conversational_a")
    for voice_match in (True, False):
        alone, = run(tiny_model, voice_match=voice_match)
        with_context, = run(tiny_model, context=turns, voice_match=voice_match)
        assert with_context.prompt_tokens == alone.prompt_tokens + context_rows
    assert tiny_model.prompt_rows([voice]) > 0


def test_context_audio_without_codes_is_encoded_and_cached(tiny_model):
    turn = Segment(1, "Recorded words.", audio=noise(0.5, seed=11))
    before = tiny_model.encode_count
    first, = run(tiny_model, voice=None, context=[turn])
    assert tiny_model.encode_count == before + 1
    second, = run(tiny_model, voice=None, context=[turn])
    assert tiny_model.encode_count == before + 1
    assert first.prompt_tokens == second.prompt_tokens == tiny_model.prompt_rows([turn]) + \
        len(tiny_model.tokenizer.encode_segment(0, "Hello there."))


def test_reference_clip_clones_from_a_path_or_an_array(tiny_model, tmp_path):
    clip = noise(2.5, seed=3)
    path = tmp_path / "clip.wav"
    sf.write(path, clip, SR, subtype="FLOAT")
    from_path, = run(tiny_model, ref_audio=str(path), ref_text="Some words.")
    from_array, = run(tiny_model, ref_audio=clip, ref_text="Some words.")
    assert np.array_equal(from_path.codes, from_array.codes)  # same clip, same seed
    assert from_path.prompt_tokens != run(tiny_model)[0].prompt_tokens  # not the default voice


def test_short_reference_clips_warn_and_long_ones_are_refused(tiny_model, tmp_path):
    from engine.errors import VoiceError

    with pytest.warns(UserWarning, match="only 1.0 s"):
        tiny_model.voice_prompt(ref_audio=noise(1.0), ref_text="Short.")
    with pytest.raises(VoiceError, match="31.0 s long; a voice may be at most 30 s"):
        tiny_model.voice_prompt(ref_audio=noise(31.0), ref_text="Long.")
    path = tmp_path / "long.wav"
    sf.write(path, noise(180.0), SR)
    with pytest.raises(VoiceError, match="180.0 s long; a voice may be at most 30 s"):  # from the header
        tiny_model.voice_prompt(ref_audio=str(path), ref_text="Long.")


def test_registered_voice_works_like_a_preset(tiny_model):
    tiny_model.voices.register("tester", noise(3.0, seed=5), "Testing one two three.", overwrite=True)
    assert "tester" in tiny_model.voices.names()
    r, = run(tiny_model, voice="tester")
    assert r.codes.shape == (6, 32)


# ------------------------------------------------------------------------------------------------
# Text


def test_text_is_normalised_unless_asked_not_to(tiny_model):
    spoken, = run(tiny_model, "I have 2 cats.", voice=None)
    assert spoken.text == "I have two cats."
    raw, = run(tiny_model, "I have 2 cats.", voice=None, normalize=False)
    assert raw.text == "I have 2 cats."


def test_lines_end_as_sentences_when_normalising(tiny_model):
    # CSM tends to stop right on the last phoneme of a line that does not end as a sentence
    assert tiny_model.spoken_text("and then we left,") == "and then we left."
    assert tiny_model.spoken_text("Really?") == "Really?"
    assert tiny_model.spoken_text("  two   words ", normalize=False) == "two words"
    r, = run(tiny_model, "no full stop here", voice=None)
    assert r.text == "no full stop here."
    raw, = run(tiny_model, "no full stop here", voice=None, normalize=False)
    assert raw.text == "no full stop here"


def test_a_list_of_texts_gives_one_utterance_each(tiny_model):
    results = run(tiny_model, ["First line.", "Second line."], voice=None)
    assert [r.text for r in results] == ["First line.", "Second line."]
    assert [r.segment_index for r in results] == [0, 1]
    assert all(r.is_final for r in results)


def test_long_text_is_split_into_pieces(tiny_model):
    text = "The first sentence is here. The second one follows it. And a third one ends the text."
    results = run(tiny_model, text, voice=None, max_piece_chars=40, max_audio_length_ms=160)
    assert len(results) == 3
    assert [r.segment_index for r in results] == [0, 1, 2]
    assert " ".join(r.text for r in results).split() == text.split()
    assert all(len(r.text) <= 40 for r in results)


def test_text_is_split_further_to_fit_the_context(tiny_model):
    # a context that leaves ~160 positions: the whole text and its cap cannot fit, its pieces can
    big = Segment(0, "Earlier.", codes=np.full((1880, 32), 3, np.int32))
    text = "One two three four five six seven eight nine ten. Eleven twelve thirteen fourteen."
    limit = tiny_model.max_positions
    plans = tiny_model._plan_pieces(text, 0, [big], None, True, 90_000, 400)
    assert len(plans) >= 2
    assert all(len(p.tokens) + p.max_frames <= limit for p in plans)


# ------------------------------------------------------------------------------------------------
# Errors: each bad input its own clear message, raised when generate() is called


@pytest.mark.parametrize("text", ["", "   ", [], ["fine", " "]])
def test_empty_text(tiny_model, text):
    with pytest.raises(InputError, match="empty"):
        tiny_model.generate(text)
    with pytest.raises(InputError, match="str"):
        tiny_model.generate(42)


def test_unknown_voice_lists_the_known_ones(tiny_model):
    with pytest.raises(VoiceError, match="conversational_a.*conversational_b"):
        tiny_model.generate("Hello.", voice="nobody_here")


def test_ref_audio_without_ref_text(tiny_model):
    with pytest.raises(InputError, match="ref_text"):
        tiny_model.generate("Hello.", ref_audio=noise(3.0))
    with pytest.raises(InputError, match="ref_audio"):
        tiny_model.generate("Hello.", ref_text="words without a clip")


def test_unreadable_audio_file(tiny_model, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"this is not audio at all")
    with pytest.raises(AudioError):
        tiny_model.generate("Hello.", ref_audio=str(bad), ref_text="Words.")
    with pytest.raises(AudioError):
        tiny_model.generate("Hello.", ref_audio=str(tmp_path / "missing.wav"), ref_text="Words.")


def test_context_that_cannot_fit_even_alone(tiny_model):
    huge = Segment(0, "Way too long.", codes=np.full((2040, 32), 1, np.int32))
    with pytest.raises(ContextTooLongError, match=r"2048") as info:
        tiny_model.generate("Hello.", voice=None, context=[huge])
    message = str(info.value)
    assert "context" in message and "max_audio_length_ms" in message


@pytest.mark.parametrize("options, match", [
    ({"temperature": -1}, "temperature"),
    ({"top_k": 1.5}, "top_k"),
    ({"stream": True, "streaming_interval": 0}, "streaming_interval"),
    ({"max_audio_length_ms": 0}, "max_audio_length_ms"),
    ({"speaker": -1}, "speaker"),
    ({"seed": -3}, "seed"),
    ({"voice_matching": True}, "unknown"),
    ({"max_piece_chars": 0}, "max_piece_chars"),
    ({"context": Segment(0, "one turn, not a list")}, "list of Segment"),
])
def test_bad_options(tiny_model, options, match):
    with pytest.raises(InputError, match=match):
        tiny_model.generate("Hello.", **options)


# ------------------------------------------------------------------------------------------------
# Watermark


def test_output_says_once_that_it_is_not_watermarked(tiny_model, monkeypatch):
    import engine.watermark as wm

    if wm.watermark_available():
        pytest.skip("silentcipher is installed here")
    monkeypatch.setattr(wm, "_warned", False)
    with pytest.warns(UserWarning, match="not watermarked"):
        run(tiny_model, voice=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(tiny_model, voice=None)  # said once only
    monkeypatch.setattr(wm, "_warned", False)
    with pytest.warns(UserWarning, match="not watermarked"):
        run(tiny_model, voice=None, stream=True)  # streaming says it too


def test_watermark_follows_the_reference_when_silentcipher_is_there(monkeypatch):
    """A stand-in silentcipher records what the reference's recipe hands it."""
    import sys
    import types

    import engine.watermark as wm

    calls = {}

    class FakeModel:
        def encode_wav(self, audio, rate, key, calc_sdr, message_sdr):
            calls.update(rate=rate, key=key, calc_sdr=calc_sdr, sdr=message_sdr, n=len(audio))
            return audio * 0.5, None

    fake = types.ModuleType("silentcipher")
    fake.get_model = lambda model_type, device: calls.setdefault("model_type", model_type) and FakeModel()
    monkeypatch.setitem(sys.modules, "silentcipher", fake)
    monkeypatch.setattr(wm, "_model", None)
    audio = np.sin(np.linspace(0, 200, SR)).astype(np.float32)
    marked = wm.apply_watermark(audio, SR)
    assert calls["model_type"] == "44.1k"
    assert calls["rate"] == 44_100 and calls["key"] == [212, 211, 146, 56, 201]
    assert calls["sdr"] == 36 and calls["calc_sdr"] is False
    assert abs(calls["n"] - 44_100) <= 2  # one second at 44.1 kHz
    assert marked.shape == audio.shape and marked.dtype == np.float32
    assert np.abs(marked[1000:-1000] - 0.5 * audio[1000:-1000]).max() < 1e-2


def test_a_planned_turn_generates_what_generate_does(tiny_model):
    """plan_turn + generate_turn is the lower-level path under generate(): the same prompt rows, the
    same frame cap and, for a seed, the same codes."""
    voice = tiny_model.voice_prompt("conversational_a")
    plan = tiny_model.plan_turn("It costs $5.", 1, [], reference=voice, max_audio_length_ms=800)
    assert plan.text == tiny_model.spoken_text("It costs $5.") == "It costs five dollars."
    assert plan.speaker == 1 and plan.max_frames == 10 and plan.cap_reason == "max_audio_length"
    (planned,) = list(tiny_model.generate_turn(plan, seed=7))
    (direct,) = run(tiny_model, text="It costs $5.", speaker=1, seed=7, max_audio_length_ms=800)
    assert planned.text == direct.text
    assert np.array_equal(planned.frames, direct.frames)


def test_a_planned_turn_is_never_split(tiny_model):
    """plan_turn speaks its text as one utterance: too long for the positions is an error that says
    what to do, where generate() would split the text into pieces."""
    long_text = "This sentence goes on. " * 120
    with pytest.raises(ContextTooLongError, match="shorten the text"):
        tiny_model.plan_turn(long_text, 0, [])
    assert len(run(tiny_model, text=long_text, max_audio_length_ms=160, seed=1)) > 1
    with pytest.raises(InputError, match="TurnPlan"):
        tiny_model.generate_turn("Hello.")
