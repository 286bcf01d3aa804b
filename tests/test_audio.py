"""Audio reading, downmixing, resampling, writing; the errors and warnings users see."""

import io
import warnings

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from engine.audio import (
    SAMPLE_RATE,
    AudioQualityWarning,
    load_audio,
    save_audio,
)
from engine.errors import AudioError, InputError


def tone(rate, seconds=0.5, freq=440.0, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mono_24k_wav_round_trip(tmp_path):
    x = tone(SAMPLE_RATE)
    path = save_audio(tmp_path / "a.wav", x, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioQualityWarning)
        y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)


def test_stereo_file_is_downmixed(tmp_path):
    left, right = tone(SAMPLE_RATE, freq=300), tone(SAMPLE_RATE, freq=500)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


def test_8k_file_is_resampled_with_a_warning(tmp_path):
    sf.write(tmp_path / "low.wav", tone(8000, seconds=1.0, freq=200), 8000)
    with pytest.warns(AudioQualityWarning, match="8000 Hz"):
        y = load_audio(str(tmp_path / "low.wav"))
    assert abs(len(y) - SAMPLE_RATE) <= 2
    # the tone survives resampling: its spectrum peaks at 200 Hz
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(y) - 200) < 3


def test_44k_flac_int_file(tmp_path):
    x = tone(44100, seconds=0.25)
    sf.write(tmp_path / "f.flac", (x * 32767).astype(np.int16), 44100, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioQualityWarning)
        y = load_audio(tmp_path / "f.flac")
    assert abs(len(y) - SAMPLE_RATE // 4) <= 2
    assert 0.45 < np.max(np.abs(y)) < 0.55


def test_ogg_file(tmp_path):
    sf.write(tmp_path / "v.ogg", tone(SAMPLE_RATE, seconds=0.5), SAMPLE_RATE, format="OGG", subtype="VORBIS")
    y = load_audio(tmp_path / "v.ogg")
    assert abs(len(y) - SAMPLE_RATE // 2) < 200


def test_bytes_and_file_objects(tmp_path):
    x = tone(SAMPLE_RATE)

    def encoded(format: str) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, x, SAMPLE_RATE, format=format, subtype="PCM_16")
        return buffer.getvalue()

    np.testing.assert_allclose(load_audio(encoded("WAV")), x, atol=1e-4)
    np.testing.assert_allclose(load_audio(io.BytesIO(encoded("FLAC"))), x, atol=1e-4)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_stereo_arrays(layout):
    left, right = tone(SAMPLE_RATE, freq=300), tone(SAMPLE_RATE, freq=500)
    stereo = np.stack([left, right]) if layout == "channels_first" else np.stack([left, right], axis=1)
    np.testing.assert_allclose(load_audio(stereo), (left + right) / 2, atol=1e-6)


def test_mlx_and_int16_arrays():
    x = tone(16000)
    y = load_audio(mx.array(x), sample_rate=16000)
    assert abs(len(y) - SAMPLE_RATE // 2) <= 2
    pcm = (tone(SAMPLE_RATE) * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm), pcm / 32768.0, atol=1e-6)
    np.testing.assert_allclose(load_audio(mx.array(tone(SAMPLE_RATE)).astype(mx.bfloat16)), tone(SAMPLE_RATE), atol=1e-2)


def test_loud_float_is_scaled_with_a_warning():
    with pytest.warns(AudioQualityWarning, match="beyond"):
        y = load_audio(tone(SAMPLE_RATE) * 4)
    assert np.max(np.abs(y)) == pytest.approx(1.0)


def test_silence_warns():
    with pytest.warns(AudioQualityWarning, match="silent"):
        load_audio(np.zeros(SAMPLE_RATE, np.float32))


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found.*nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_unreadable_file_names_path_and_formats(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioError) as err:
        load_audio(bad)
    assert "notes.wav" in str(err.value) and "WAV, FLAC" in str(err.value)
    assert isinstance(err.value, InputError)


def test_empty_file_and_folder(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)


def test_bad_arrays():
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(AudioError, match="channels"):
        load_audio(np.zeros((100, 100), np.float32))
    with pytest.raises(AudioError, match="no audio"):
        load_audio(np.zeros(0, np.float32))
    with pytest.raises(AudioError):
        load_audio(None)
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(tone(SAMPLE_RATE), sample_rate=-5)


def test_sample_rate_conflict_for_files(tmp_path):
    save_audio(tmp_path / "a.wav", tone(SAMPLE_RATE))
    with pytest.raises(AudioError, match="files carry their own rate"):
        load_audio(tmp_path / "a.wav", sample_rate=16000)


def test_save_wav_and_flac_pcm16_clipped(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0], np.float32)
    for name in ["o.wav", "o.flac"]:
        path = save_audio(tmp_path / "sub" / name, mx.array(x))
        info = sf.info(str(path))
        assert info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
        y, _ = sf.read(str(path), dtype="float32")
        np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=1e-4)


def test_save_rejects_other_extensions(tmp_path):
    with pytest.raises(AudioError, match=r"\.wav or \.flac"):
        save_audio(tmp_path / "o.mp3", tone(SAMPLE_RATE))
    with pytest.raises(AudioError):
        save_audio(tmp_path / "o.flac", tone(SAMPLE_RATE), subtype="FLOAT")
