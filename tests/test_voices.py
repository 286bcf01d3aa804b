"""Voice presets, registration, and the errors for unknown or bad voices."""

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from engine.errors import InputError, VoiceError
from engine.segment import Segment
from engine.voices import PRESET_TRANSCRIPTS, Voice, VoiceLibrary, clip_warnings, default_user_dir

SR = 24_000


def clip(seconds=3.0, seed=0, rate=SR):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32)


@pytest.fixture
def model_dir(tmp_path):
    prompts = tmp_path / "model" / "prompts"
    prompts.mkdir(parents=True)
    sf.write(prompts / "conversational_a.wav", clip(3, 1), SR, subtype="FLOAT")  # no .txt: built-in
    sf.write(prompts / "conversational_b.wav", clip(3, 2), SR, subtype="FLOAT")
    (prompts / "conversational_b.txt").write_text("A transcript shipped beside the clip.\n")
    sf.write(prompts / "narrator.wav", clip(4, 3, 48_000), 48_000)  # resampled on load
    (prompts / "narrator.txt").write_text("Once upon a time.")
    sf.write(prompts / "untranscribed.wav", clip(3, 4), SR)  # no transcript: not a voice
    return tmp_path / "model"


@pytest.fixture
def library(model_dir, tmp_path):
    return VoiceLibrary(model_dir, user_dir=tmp_path / "voices")


def test_presets_from_the_model_folder(library, model_dir):
    assert library.preset_names() == ["conversational_a", "conversational_b", "narrator"]
    a = library.get("conversational_a")
    assert isinstance(a, Voice) and a.source == "preset" and a.path == model_dir / "prompts" / "conversational_a.wav"
    assert a.text == PRESET_TRANSCRIPTS["conversational_a"]
    assert a.audio.dtype == np.float32 and a.audio.ndim == 1 and len(a.audio) == 3 * SR
    np.testing.assert_array_equal(a.audio, clip(3, 1))
    assert library.get("conversational_b").text == "A transcript shipped beside the clip."
    narrator = library.get("narrator")
    assert narrator.text == "Once upon a time." and abs(len(narrator.audio) - 4 * SR) <= 2


def test_sesame_transcripts_are_the_reference_ones():
    assert PRESET_TRANSCRIPTS["conversational_a"].startswith("like revising for an exam I'd have")
    assert PRESET_TRANSCRIPTS["conversational_a"].endswith("not like a panic but like a")
    assert PRESET_TRANSCRIPTS["conversational_b"].startswith("like a super Mario level.")
    assert PRESET_TRANSCRIPTS["conversational_b"].endswith("go punching question blocks around.")


def test_unknown_voice_lists_known_names(library):
    with pytest.raises(VoiceError) as err:
        library.get("nobody")
    message = str(err.value)
    assert "nobody" in message and "conversational_a" in message and "narrator" in message
    assert isinstance(err.value, InputError)
    with pytest.raises(VoiceError, match="Known voices"):
        library.get("untranscribed")


def test_register_get_remove(library, tmp_path):
    audio = clip(5, 7)
    voice = library.register("alice", audio, "  Hello, I am Alice.  ")
    assert voice.source == "user" and voice.text == "Hello, I am Alice."
    np.testing.assert_array_equal(voice.audio, audio)  # stored losslessly
    assert (tmp_path / "voices" / "alice.wav").is_file()
    assert (tmp_path / "voices" / "alice.txt").read_text() == "Hello, I am Alice.\n"
    assert library.names() == ["conversational_a", "conversational_b", "narrator", "alice"]
    assert "alice" in library
    # a fresh library sees it too
    assert VoiceLibrary(None, user_dir=tmp_path / "voices").names() == ["alice"]
    library.remove("alice")
    assert "alice" not in library.names()
    with pytest.raises(VoiceError, match="Unknown voice"):
        library.remove("alice")


def test_register_from_a_file_resamples(library, tmp_path):
    sf.write(tmp_path / "in.wav", np.stack([clip(3, 1, 44_100), clip(3, 2, 44_100)], axis=1), 44_100)
    voice = library.register("bob_2", tmp_path / "in.wav", "Hi there.", speaker=1)
    assert abs(len(voice.audio) - int(3 * SR)) <= 2 and voice.speaker == 1
    assert json.loads((tmp_path / "voices" / "bob_2.json").read_text()) == {"speaker": 1}
    assert voice.to_segment().speaker == 1 and voice.to_segment(3).speaker == 3
    seg = voice.to_segment()
    assert isinstance(seg, Segment) and seg.text == "Hi there." and seg.codes is None


def test_register_array_with_its_rate(library):
    voice = library.register("lowrate", clip(3, 0, 16_000), "Hello.", sample_rate=16000)
    assert abs(len(voice.audio) - 3 * SR) <= 2


@pytest.mark.parametrize("bad", ["", "../evil", "a/b", "with space", ".hidden", "-dash", "x" * 65,
                                 "ümlaut", "name.wav", None, 3])
def test_unsafe_names_are_rejected(library, bad, tmp_path):
    with pytest.raises(VoiceError, match="Invalid voice name"):
        library.register(bad, clip(3), "text")
    assert not (tmp_path / "evil.wav").exists()


def test_register_refuses_duplicates_presets_and_empty_text(library):
    library.register("carol", clip(3), "One.")
    with pytest.raises(VoiceError, match="already registered"):
        library.register("carol", clip(3), "Two.")
    assert library.register("carol", clip(3), "Two.", overwrite=True).text == "Two."
    with pytest.raises(VoiceError, match="preset"):
        library.register("conversational_a", clip(3), "Mine now.")
    with pytest.raises(VoiceError, match="preset"):
        library.register("narrator", clip(3), "Mine now.")
    with pytest.raises(VoiceError, match="transcript"):
        library.register("dave", clip(3), "   ")
    with pytest.raises(VoiceError, match="preset"):
        library.remove("conversational_a")


def test_register_bad_audio(library, tmp_path):
    from engine.errors import AudioError

    (tmp_path / "junk.wav").write_text("not audio")
    with pytest.raises(AudioError, match="junk.wav"):
        library.register("erin", tmp_path / "junk.wav", "Hello.")
    assert "erin" not in library.names()


def test_clip_length_warnings(library):
    assert clip_warnings(clip(10)) == []
    assert "only 1.0 s" in clip_warnings(clip(1))[0]
    assert "over 30 s" in clip_warnings(clip(31))[0]
    with pytest.warns(UserWarning, match="only 1.0 s"):
        voice = library.register("short", clip(1), "Hi.")
    assert voice.warnings() and "short" in voice.warnings()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.register("fine", clip(8), "Fine.").warnings() == []


def test_hub_presets_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    library = VoiceLibrary(None, user_dir=tmp_path / "voices")
    assert library.names() == []
    with pytest.raises(VoiceError, match="sesame/csm-1b"):
        library.get("conversational_a")


def test_default_user_dir_follows_csm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CSM_HOME", str(tmp_path / "home"))
    assert default_user_dir() == tmp_path / "home" / "voices"
    assert VoiceLibrary(None).user_dir == tmp_path / "home" / "voices"


def test_returned_audio_is_a_private_copy(library):
    first = library.get("conversational_a")
    first.audio[:] = 0
    assert np.any(library.get("conversational_a").audio != 0)
