"""dialogue.Conversation on the tiny random model: reuse, budget, replay, streaming, crashes."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dialogue import Conversation, Segment
from engine.errors import AudioError, ContextTooLongError, InputError, VoiceError
from storage import Store

ROOT = Path(__file__).resolve().parents[1]
SHORT = 480  # ms: at most 6 frames per turn keeps the tiny model quick
LINES = [
    "Hi there, how are you today?",
    "Pretty good, thanks for asking.",
    "Did you see the game last night?",
    "I did, it went to overtime.",
    "The last goal was something else.",
    "I still cannot believe it.",
    "Shall we watch the next one together?",
    "Sure, Saturday works for me.",
    "Great, I will bring snacks.",
    "See you then, bye for now.",
]


@pytest.fixture
def model(request, tiny_model_path):
    try:
        loaded = request.getfixturevalue("tiny_model")  # the shared one (tests/conftest.py)
    except pytest.FixtureLookupError:  # not there yet: load our own once
        loaded = _own_model(tiny_model_path)
    loaded.generator.reset()  # tests must not depend on what an earlier test left cached
    return loaded


_OWN = {}


def _own_model(path):
    if path not in _OWN:
        from engine import load_model

        _OWN[path] = load_model(path)
    return _OWN[path]


def open_conv(tmp_path, model, name="talk", **options):
    return Conversation.open(tmp_path / f"{name}.db", session=name, model=model, **options)


def talk(conv, lines, first_seed=100):
    for i, line in enumerate(lines):
        conv.say(i % 2, line, seed=first_seed + i, max_audio_length_ms=SHORT)


def new_rows(turn, previous):
    """Rows a turn should prefill when the cache holds the previous turn: its own text rows, plus
    the previous turn's last frame and EOS row when that turn stopped at the frame cap (the last
    frame is never fed back; after an end-of-speech frame the EOS row is already in the cache)."""
    text = turn.timing["prompt_rows"] - (previous.timing["prompt_rows"] + previous.segment.codes.shape[0] + 1)
    return text + (0 if previous.timing["stop_reason"] == "end_of_speech" else 2)


def test_ten_turns_with_reuse_equal_without(tmp_path, model):
    runs = {}
    for reuse in (True, False):
        conv = open_conv(tmp_path, model, f"reuse_{reuse}", reuse_cache=reuse)
        conv.set_voice(0, "conversational_a")
        conv.set_voice(1, "conversational_b")
        talk(conv, LINES)
        runs[reuse] = conv.turns
    for with_reuse, without in zip(runs[True], runs[False]):
        assert np.array_equal(with_reuse.segment.codes, without.segment.codes)
        assert with_reuse.segment.text == without.segment.text
    turns = runs[True]
    assert len(turns) == 10 and not any(t.timing["pruned"] for t in turns)
    for n in range(1, 10):  # turns 2..10
        turn, previous = turns[n], turns[n - 1]
        # bit-identical codes need one canonical chunking of the backbone positions (see
        # engine/generator.py): the cache's last incomplete block is computed again, so a turn
        # prefills its new rows plus fewer than `block` rows before them
        fresh = new_rows(turn, previous)
        assert fresh <= turn.timing["prefill_tokens"] < fresh + model.generator.block, n
        assert turn.timing["prefill_tokens"] + turn.timing["cached_tokens"] == turn.timing["prompt_rows"]
        # never the history (beyond the block tail allowed above)
        assert turn.timing["prefill_tokens"] - (model.generator.block - 1) < turn.timing["prompt_rows"] // 4
    for turn in runs[False]:  # without reuse the whole prompt is computed every time
        assert turn.timing["prefill_tokens"] == turn.timing["prompt_rows"]


def test_prefill_is_exactly_the_new_rows_with_one_row_blocks(tmp_path, model):
    """With the generator's canonical block at one row nothing is recomputed: turn N (N >= 2)
    prefills exactly the rows its prompt adds to what the cache holds."""
    import copy

    from engine.generator import Generator

    exact = copy.copy(model)
    exact.generator = Generator(model.backend, model.codec, model.max_positions, prefill_block=1)
    conv = open_conv(tmp_path, exact)
    conv.set_voice(0, "conversational_a")
    talk(conv, LINES)
    turns = conv.turns
    for n in range(1, 10):
        assert turns[n].timing["prefill_tokens"] == new_rows(turns[n], turns[n - 1]), n


def test_turn_record(tmp_path, model):
    conv = open_conv(tmp_path, model)
    segment = conv.say(1, "It costs 5 dollars.", seed=None, temperature=0.7, top_k=20,
                       max_audio_length_ms=SHORT, meta={"tag": "x"})
    assert isinstance(segment, Segment) and segment.speaker == 1
    assert segment.codes.shape[1] == 32 and 1 <= segment.codes.shape[0] <= SHORT // 80
    (turn,) = conv.turns
    assert turn.index == 0 and turn.source == "generated" and turn.meta == {"tag": "x"}
    assert turn.text == segment.text and "5" not in turn.text  # stored as spoken (normalised)
    assert turn.params["text_as_given"] == "It costs 5 dollars."
    assert turn.params["seed"] is None and isinstance(turn.seed, int)  # the seed actually used
    assert (turn.params["temperature"], turn.params["top_k"]) == (0.7, 20)
    assert turn.timing["time_to_first_audio"] > 0 and turn.timing["prefill_tokens"] > 0
    np.testing.assert_allclose(turn.segment.audio, segment.audio, atol=1e-6)
    # the stored seed reproduces the turn
    conv.undo()
    again = conv.say(1, "It costs 5 dollars.", seed=turn.seed, temperature=0.7, top_k=20,
                     max_audio_length_ms=SHORT)
    assert np.array_equal(again.codes, segment.codes)


def test_reopen_continues_exactly_without_encoding(tmp_path, model):
    straight = open_conv(tmp_path, model, "straight")
    straight.set_voice(0, "conversational_a")
    talk(straight, LINES[:4])
    expected = straight.say(0, LINES[4], seed=7, max_audio_length_ms=SHORT)

    first = open_conv(tmp_path, model, "reopened")
    first.set_voice(0, "conversational_a")
    talk(first, LINES[:3])
    first.close()
    model.generator.reset()  # as in a fresh process
    encodes = model.encode_count
    conv = open_conv(tmp_path, model, "reopened")
    assert [t.text for t in conv.turns] == [t.text for t in straight.turns[:3]]
    assert list(conv.voices) == [0]
    conv.say(1, LINES[3], seed=103, max_audio_length_ms=SHORT)
    resumed = conv.say(0, LINES[4], seed=7, max_audio_length_ms=SHORT)
    assert np.array_equal(resumed.codes, expected.codes)
    assert model.encode_count == encodes  # stored codes were used; Mimi encoded nothing


def test_voices_pinned_once_and_first(tmp_path, model):
    conv = open_conv(tmp_path, model)
    encodes = model.encode_count
    conv.set_voice(1, "conversational_b")
    conv.set_voice(0, "conversational_a")
    conv.set_voice(1, "conversational_b")  # the same voice again: nothing to do
    assert model.encode_count == encodes + 2
    talk(conv, LINES[:2])
    plan = conv.plan(0, "And what now?")
    voices = conv.voices
    assert list(voices) == [0, 1]
    assert [s.text for s in plan.segments[:2]] == [voices[0].text, voices[1].text]
    assert np.array_equal(plan.segments[0].codes, voices[0].codes)
    assert [s.text for s in plan.segments[2:]] == [t.text for t in conv.turns]
    rows = conv.store.voice_prompts(conv.session)
    assert rows[1].source == "voice_prompt" and rows[1].meta["voice"] == "conversational_b"

    clip = (np.random.default_rng(3).standard_normal(24000 * 3) * 0.1).astype(np.float32)
    conv.set_voice(1, ref_audio=clip, ref_text="A clip of me talking.")
    assert conv.voices[1].text == "A clip of me talking."
    assert conv.set_voice(1) is None and list(conv.voices) == [0]
    with pytest.raises(VoiceError, match="ref_text"):
        conv.set_voice(1, ref_audio=clip)
    with pytest.raises(VoiceError):
        conv.set_voice(1, "no_such_voice")
    with pytest.raises(VoiceError, match="not both"):
        conv.set_voice(1, "conversational_a", ref_audio=clip, ref_text="x")


def test_recorded_turn_encoded_once(tmp_path, model):
    conv = open_conv(tmp_path, model)
    clip = (np.random.default_rng(4).standard_normal(24000 * 2) * 0.1).astype(np.float32)
    encodes = model.encode_count
    segment = conv.add(1, "I recorded this.", clip, meta={"mic": "usb"})
    assert model.encode_count == encodes + 1
    assert segment.codes.shape == (25, 32)
    (turn,) = conv.turns
    assert turn.source == "recorded" and turn.meta == {"mic": "usb"} and turn.seed is None
    np.testing.assert_allclose(turn.segment.audio, clip, atol=1e-5)  # the recording, not a decode
    conv.say(0, "Nice recording.", seed=1, max_audio_length_ms=SHORT)
    assert model.encode_count == encodes + 1  # the stored codes were used
    stereo_48k = np.stack([np.repeat(clip, 2), np.repeat(clip, 2)], axis=1)
    sf.write(tmp_path / "reply.wav", stereo_48k, 48000)
    from_file = conv.add(0, "From a file.", str(tmp_path / "reply.wav"))
    assert from_file.codes.shape == (25, 32) and from_file.audio.shape == clip.shape
    with pytest.raises(InputError):
        conv.add(0, "  ", clip)
    with pytest.raises(AudioError):
        conv.add(0, "text", np.zeros((2, 2), np.int16))


def test_say_stream_stores_when_complete(tmp_path, model):
    conv = open_conv(tmp_path, model)
    results = list(conv.say_stream(0, "Streaming now.", seed=5, max_audio_length_ms=SHORT,
                                   streaming_interval=0.16))
    assert len(results) >= 2 and results[-1].is_final and not results[0].is_final
    (turn,) = conv.turns
    joined = np.concatenate([np.asarray(r.audio) for r in results])
    np.testing.assert_allclose(turn.segment.audio, joined, atol=1e-5)
    assert np.array_equal(turn.segment.codes, results[-1].frames)
    whole = open_conv(tmp_path, model, "whole").say(0, "Streaming now.", seed=5, max_audio_length_ms=SHORT)
    assert np.array_equal(whole.codes, turn.segment.codes)

    # a consumer that stops early stores nothing
    stream = conv.say_stream(1, "This one is cut off.", seed=6, max_audio_length_ms=SHORT,
                             streaming_interval=0.08)
    next(stream)
    stream.close()
    assert len(conv.turns) == 1
    # one that stops right at the final result still gets the turn stored
    for result in conv.say_stream(1, "This one ends.", seed=6, max_audio_length_ms=SHORT):
        if result.is_final:
            break
    assert [t.text for t in conv.turns] == ["Streaming now.", "This one ends."]


def test_pruning_keeps_going_and_never_drops_pinned(tmp_path, model):
    conv = open_conv(tmp_path, model, context_limit=0)
    conv.set_voice(0, "conversational_a")
    conv.set_voice(1, "conversational_b")
    voices = conv.voices
    pinned = sum(model.prompt_rows([v]) for v in voices.values())
    conv.context_limit = pinned + 260  # room for about six short turns
    for i in range(16):
        line = LINES[i % len(LINES)]
        plan = conv.plan(i % 2, line, max_audio_length_ms=SHORT)
        assert [s.text for s in plan.segments[:2]] == [voices[0].text, voices[1].text]
        assert plan.window.total_rows <= conv.context_limit
        conv.say(i % 2, line, seed=i, max_audio_length_ms=SHORT)
    turns = conv.turns
    starts = [t.window_start for t in turns]
    assert starts == sorted(starts) and starts[-1] > 0  # pruned, oldest first, never back
    prunes = sum(1 for t in turns if t.timing["pruned"])
    assert 2 <= prunes <= 8  # hysteresis: far fewer rebuilds than turns
    for turn in turns:
        prompt = turn.timing["prompt_rows"]
        # pinned stay cached (up to the block boundary the generator recomputes from)
        assert turn.timing["cached_tokens"] >= pinned // model.generator.block * model.generator.block \
            or turn.index == 0
        if not turn.timing["pruned"] and turn.index:
            assert turn.timing["prefill_tokens"] < prompt // 3

    # a reopened session chooses the same window
    again = Conversation.open(conv.store, conv.session, model, context_limit=conv.context_limit)
    assert again.plan(0, "One more.", SHORT).window == conv.plan(0, "One more.", SHORT).window


def test_turn_that_cannot_fit_names_the_numbers(tmp_path, model):
    conv = open_conv(tmp_path, model)
    conv.set_voice(0, "conversational_a")
    pinned = model.prompt_rows(list(conv.voices.values()))
    conv.context_limit = pinned + 5
    with pytest.raises(ContextTooLongError, match=rf"pinned voice prompts take {pinned}"):
        conv.say(0, "Too long for the room that is left.", max_audio_length_ms=SHORT)
    assert conv.turns == []


def test_undo_truncate_audio_export(tmp_path, model):
    conv = open_conv(tmp_path, model)
    talk(conv, LINES[:4])
    lengths = [t.segment.audio.shape[0] for t in conv.turns]
    audio = conv.audio(pause_s=0.25)
    assert audio.dtype == np.float32 and audio.shape[0] == sum(lengths) + 3 * 6000
    path = conv.export(tmp_path / "out.wav", pause_s=0.25)
    data, sr = sf.read(path)
    assert sr == 24000 and data.shape[0] == audio.shape[0]
    last = conv.undo()
    assert len(conv.turns) == 3
    assert last.text == LINES[3] and last.audio.shape[0] == lengths[3]
    conv.truncate(1)
    assert [t.text for t in conv.turns] == [LINES[0]]
    assert conv.undo() is not None and conv.undo() is None
    with pytest.raises(InputError):
        conv.truncate(-1)


def test_codes_only_store_decodes_on_demand(tmp_path, model):
    conv = open_conv(tmp_path, model, store_audio=False)
    segment = conv.say(0, "No audio kept.", seed=3, max_audio_length_ms=SHORT)
    assert not conv.store.turns(conv.session)[0].has_audio
    conv = open_conv(tmp_path, model)  # reopened: only the codes are there
    assert conv.turns[0].segment.audio is None
    decoded = conv.audio()
    np.testing.assert_allclose(decoded, np.asarray(model.decode(segment.codes)), atol=1e-6)


def test_another_writer_is_seen(tmp_path, model):
    one = open_conv(tmp_path, model)
    two = Conversation.open(tmp_path / "talk.db", session="talk", model=model)
    one.say(0, LINES[0], seed=1, max_audio_length_ms=SHORT)
    two.say(1, LINES[1], seed=2, max_audio_length_ms=SHORT)
    assert [t.index for t in one.turns] == [0, 1]
    plan = one.plan(0, LINES[2], SHORT)
    assert [s.text for s in plan.segments] == [LINES[0], LINES[1]]


def test_bad_inputs(tmp_path, model):
    conv = open_conv(tmp_path, model)
    with pytest.raises(InputError):
        conv.say(0, "   ")
    with pytest.raises(InputError):
        conv.say(-1, "hello")
    with pytest.raises(InputError):
        conv.say(True, "hello")
    assert conv.turns == []


KILLED = textwrap.dedent(
    """
    import sys, time
    from dialogue import Conversation
    from engine import load_model
    conv = Conversation.open(sys.argv[1], session="s", model=load_model("tiny-random"))
    for i in range(3):
        conv.say(i % 2, f"Turn number {i}.", seed=i, max_audio_length_ms=640)
    print("ready", flush=True)
    for result in conv.say_stream(1, "This turn never finishes.", seed=9,
                                  max_audio_length_ms=8000, streaming_interval=0.08):
        print("generating", flush=True)
        time.sleep(120)
    """
)


def test_kill_mid_turn_keeps_earlier_turns(tmp_path):
    db = tmp_path / "killed.db"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        assert child.stdout.readline().strip() == "generating"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with Store(db) as store:
        assert store.integrity_check() == ["ok"]
        assert [t.text for t in store.turns("s")] == [f"Turn number {w}." for w in ("zero", "one", "two")]


def test_stored_text_is_spoken_and_ends_as_a_sentence(tmp_path, model):
    # Normalised like generate(): numbers in words, and a line that trails off ends as a sentence
    # (CSM tends to clip the last word of an unterminated line).
    conv = open_conv(tmp_path, model)
    segment = conv.say(0, "I have 3 cats,", seed=1, max_audio_length_ms=SHORT)
    assert segment.text == "I have three cats."
    assert conv.turns[0].params["text_as_given"] == "I have 3 cats,"
