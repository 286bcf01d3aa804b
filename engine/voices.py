"""Voices by name: the presets a model ships and the voices a user registers.

A voice is a short clip (24 kHz mono) and the transcript of what is said in it; the model layer
turns it into a prompt segment (Mimi codes + text) to speak new text in that voice.

Where voices come from, in the order `get(name)` looks:
  1. presets in the model folder: `<model>/prompts/<name>.wav`, transcript from
     `<model>/prompts/<name>.txt` beside it, else (for Sesame's two presets, whose transcripts
     live in Sesame's code, not in the repo) the built-in `PRESET_TRANSCRIPTS`;
  2. Sesame's presets `conversational_a` / `conversational_b` fetched from the hub repo
     `sesame/csm-1b` with huggingface_hub (cached by the hub client; the repo is gated, so this
     needs an accepted licence and `huggingface-cli login` — a model snapshot downloaded with its
     prompts/ folder needs neither);
  3. user voices in `user_dir` (default `$CSM_HOME/voices`, `$CSM_HOME` defaulting to
     ~/.cache/csm-mlx): `<name>.wav` + `<name>.txt` (+ `<name>.json` with the speaker id when
     one was given), written by `register`.

Names are letters, digits, '-' and '_' (at most 64, starting with a letter or digit), so a name is
always a plain file name. Unknown names raise `VoiceError` listing the voices there are.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import attrs
import numpy as np
from huggingface_hub import hf_hub_download, try_to_load_from_cache

from engine.audio import load_audio, probe_audio, save_audio
from engine.option_checks import check_option
from engine.constants import SAMPLE_RATE, csm_home
from engine.errors import VoiceError
from engine.segment import Segment

PRESET_REPO = "sesame/csm-1b"
SHORT_CLIP_SECONDS = 2.0
LONG_CLIP_SECONDS = 30.0
# A voice (a registered one, or a clip to clone) may be at most this long, and its transcript at
# most this many characters: 30 s is 375 of the backbone's 2048 positions, so two pinned voices and
# a long line always fit. Longer clips are refused (trimming would cut the clip away from its
# transcript).
MAX_VOICE_SECONDS = LONG_CLIP_SECONDS
MAX_VOICE_TEXT_CHARS = 1000

# Transcripts of the clips sesame/csm-1b ships as prompts/conversational_{a,b}.wav, as Sesame's
# reference script (run_csm.py) gives them.
PRESET_TRANSCRIPTS = {
    "conversational_a": (
        "like revising for an exam I'd have to try and like keep up the momentum because I'd "
        "start really early I'd be like okay I'm gonna start revising now and then like "
        "you're revising for ages and then I just like start losing steam I didn't do that "
        "for the exam we had recently to be fair that was a more of a last minute scenario "
        "but like yeah I'm trying to like yeah I noticed this yesterday that like Mondays I "
        "sort of start the day with this not like a panic but like a"
    ),
    "conversational_b": (
        "like a super Mario level. Like it's very like high detail. And like, once you get "
        "into the park, it just like, everything looks like a computer game and they have all "
        "these, like, you know, if, if there's like a, you know, like in a Mario game, they "
        "will have like a question block. And if you like, you know, punch it, a coin will "
        "come out. So like everyone, when they come into the park, they get like this little "
        "bracelet and then you can go punching question blocks around."
    ),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def default_user_dir() -> Path:
    """$CSM_HOME/voices ($CSM_HOME defaults to ~/.cache/csm-mlx)."""
    return csm_home() / "voices"


def clip_warnings(audio, sample_rate: int = SAMPLE_RATE, what: str = "The voice clip") -> list[str]:
    """Why a clip may clone poorly: under 2 s (too little to go on) or over 30 s (drags the pace)."""
    seconds = len(audio) / float(sample_rate)
    if seconds < SHORT_CLIP_SECONDS:
        return [
            f"{what} is only {seconds:.1f} s long; voice cloning works best with 8-12 s of clear "
            f"speech (under {SHORT_CLIP_SECONDS:.0f} s gives the model little to go on)."
        ]
    if seconds > LONG_CLIP_SECONDS:
        return [
            f"{what} is {seconds:.1f} s long; clips over {LONG_CLIP_SECONDS:.0f} s tend to drag the "
            "pace of the new speech and use much of the context. 8-12 s works best."
        ]
    return []


def check_voice_clip(audio, text: str | None = None, *, what: str = "The voice clip",
                     sample_rate: int = SAMPLE_RATE) -> None:
    """Refuse a clip that cannot serve as a voice: over MAX_VOICE_SECONDS, or a transcript over
    MAX_VOICE_TEXT_CHARS (VoiceError saying what to do)."""
    seconds = len(audio) / float(sample_rate)
    if seconds > MAX_VOICE_SECONDS:
        raise VoiceError(
            f"{what} is {seconds:.1f} s long; a voice may be at most {MAX_VOICE_SECONDS:.0f} s "
            "(it is part of every prompt, and the model sees 2048 positions, 164 s, in all). "
            "Cut it to 8-12 s of clear speech, with the transcript of just that part."
        )
    if text is not None and len(text) > MAX_VOICE_TEXT_CHARS:
        raise VoiceError(
            f"The transcript for {what[0].lower() + what[1:]} has {len(text)} characters; at most "
            f"{MAX_VOICE_TEXT_CHARS} are accepted. A voice clip should be 8-12 s of speech."
        )


def check_voice_file(path, *, what: str = "The voice clip", name: str | None = None) -> None:
    """Refuse a voice clip file that is too long from its header, before decoding it."""
    info = probe_audio(path, name=name)  # AudioError when it is not audio
    seconds = float(info.frames) / float(info.samplerate)
    if seconds > MAX_VOICE_SECONDS + 0.5:  # the exact bound is checked on the decoded samples
        raise VoiceError(
            f"{what} is {seconds:.1f} s long; a voice may be at most {MAX_VOICE_SECONDS:.0f} s. "
            "Cut it to 8-12 s of clear speech, with the transcript of just that part."
        )


@attrs.frozen(eq=False, repr=False)
class Voice:
    """A named voice: its transcript, its audio (1-D float32, 24 kHz), and where it came from.

    `source` is "preset" (the model folder), "hub" (fetched from sesame/csm-1b) or "user"
    (registered); `path` is the clip's file; `speaker` the speaker id stored with a registered
    voice (None: use the caller's).
    """

    name: str
    text: str
    audio: np.ndarray
    source: str
    path: Path | None = None
    speaker: int | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.audio) / SAMPLE_RATE

    def warnings(self) -> list[str]:
        """Reasons this clip may clone poorly (empty when it is fine)."""
        return clip_warnings(self.audio, SAMPLE_RATE, f"The voice {self.name!r}")

    def to_segment(self, speaker: int | None = None) -> Segment:
        """The voice as a context segment (audio, no codes yet) for `speaker` (default: its own, else 0)."""
        if speaker is None:
            speaker = self.speaker if self.speaker is not None else 0
        return Segment(speaker, self.text, audio=self.audio)

    def __repr__(self) -> str:
        return f"Voice({self.name!r}, {self.source}, {self.duration:.1f}s, text={self.text[:30]!r}…)"


def _check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise VoiceError(
            f"Invalid voice name {name!r}: use 1-64 letters, digits, '-' or '_', starting with a "
            "letter or digit (e.g. 'alice' or 'narrator_2')."
        )
    return name


def _read_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    return text or None


class VoiceLibrary:
    """Voices for one model: presets from `model_path/prompts/` (and the hub), user voices in
    `user_dir`. `names()`, `get(name)`, `register(name, audio, text)`, `remove(name)`."""

    def __init__(self, model_path: str | os.PathLike | None = None,
                 user_dir: str | os.PathLike | None = None, *, preset_repo: str = PRESET_REPO):
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.user_dir = Path(user_dir).expanduser() if user_dir is not None else default_user_dir()
        self.preset_repo = preset_repo
        self._audio_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------------------- listing

    def _model_presets(self) -> dict[str, Path]:
        """name -> wav for model prompts that have a transcript (a .txt, or a built-in one)."""
        if self.model_path is None:
            return {}
        folder = self.model_path / "prompts"
        if not folder.is_dir():
            return {}
        found = {}
        for wav in sorted(folder.glob("*.wav")):
            name = wav.stem
            if not _NAME.match(name):
                continue
            if wav.with_suffix(".txt").is_file() or name in PRESET_TRANSCRIPTS:
                found[name] = wav
        return found

    def _cached_hub_presets(self) -> dict[str, Path]:
        """Sesame's presets already in the local hub cache (never touches the network)."""
        found = {}
        for name in PRESET_TRANSCRIPTS:
            try:
                hit = try_to_load_from_cache(self.preset_repo, f"prompts/{name}.wav")
            except Exception:
                hit = None
            if isinstance(hit, str) and Path(hit).is_file():
                found[name] = Path(hit)
        return found

    def _user_voices(self) -> dict[str, Path]:
        if not self.user_dir.is_dir():
            return {}
        return {
            wav.stem: wav
            for wav in sorted(self.user_dir.glob("*.wav"))
            if _NAME.match(wav.stem) and wav.with_suffix(".txt").is_file()
        }

    def preset_names(self) -> list[str]:
        """Presets available now: the model's prompts/ and Sesame's presets in the hub cache."""
        names = set(self._model_presets()) | set(self._cached_hub_presets())
        return sorted(names)

    def user_names(self) -> list[str]:
        """Registered voices in `user_dir`."""
        return sorted(self._user_voices())

    def names(self) -> list[str]:
        """Every voice `get` can load without a download: presets, then registered voices."""
        presets = self.preset_names()
        return presets + [n for n in self.user_names() if n not in presets]

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def _unknown(self, name: str) -> VoiceError:
        known = self.names()
        listing = ", ".join(known) if known else "none yet"
        return VoiceError(
            f"Unknown voice {name!r}. Known voices: {listing}. Register your own with "
            "VoiceLibrary.register(name, clip, transcript) (csm voices add), or pass "
            "ref_audio + ref_text."
        )

    # ------------------------------------------------------------------------------- loading

    def _load(self, path: Path) -> np.ndarray:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        audio = self._audio_cache.get(key)
        if audio is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quality is reported by Voice.warnings()
                audio = load_audio(path)
            self._audio_cache[key] = audio
        return audio.copy()  # callers may modify their copy

    def _download_preset(self, name: str) -> Path:
        try:
            return Path(hf_hub_download(self.preset_repo, f"prompts/{name}.wav"))
        except Exception as exc:
            where = f" is not in {self.model_path / 'prompts'} and" if self.model_path else ""
            raise VoiceError(
                f"The voice preset {name!r}{where} could not be fetched from {self.preset_repo} "
                f"({type(exc).__name__}: {exc}). That repo is gated: accept its licence on "
                "huggingface.co and run `huggingface-cli login`, or use voice=None, a registered "
                "voice, or ref_audio + ref_text."
            ) from exc

    def get(self, name: str) -> Voice:
        """The voice `name` (presets first, then registered voices); VoiceError when unknown."""
        if not isinstance(name, str):
            raise VoiceError(f"A voice name must be a str, got {type(name).__name__}")
        if not _NAME.match(name):
            raise self._unknown(name)
        preset = self._model_presets().get(name)
        if preset is not None:
            text = _read_text(preset.with_suffix(".txt")) or PRESET_TRANSCRIPTS[name]
            return Voice(name, text, self._load(preset), "preset", preset)
        user = self._user_voices().get(name)
        if user is None and name in PRESET_TRANSCRIPTS:
            wav = self._cached_hub_presets().get(name) or self._download_preset(name)
            return Voice(name, PRESET_TRANSCRIPTS[name], self._load(wav), "hub", wav)
        if user is None:
            raise self._unknown(name)
        text = _read_text(user.with_suffix(".txt"))
        if text is None:
            raise VoiceError(f"The voice {name!r} has an empty transcript ({user.with_suffix('.txt')})")
        return Voice(name, text, self._load(user), "user", user, self._stored_speaker(user))

    @staticmethod
    def _stored_speaker(wav: Path) -> int | None:
        meta = wav.with_suffix(".json")
        if not meta.is_file():
            return None
        try:
            speaker = json.loads(meta.read_text(encoding="utf-8")).get("speaker")
        except (ValueError, AttributeError):
            return None
        return speaker if isinstance(speaker, int) and not isinstance(speaker, bool) and speaker >= 0 else None

    # --------------------------------------------------------------------------- registering

    def register(self, name: str, audio, text: str, *, sample_rate: int | None = None,
                 speaker: int | None = None, overwrite: bool = False) -> Voice:
        """Save a clip (path or array; resampled to 24 kHz mono) and its transcript as `name`.

        `sample_rate` is the rate of an array clip (default 24000). Clips under 2 s are accepted
        with a warning; clips over MAX_VOICE_SECONDS (30 s) are refused (VoiceError), so a
        registered voice always fits the context. An existing registered voice is replaced only with
        `overwrite=True`; preset names cannot be taken.
        """
        _check_name(name)
        if not isinstance(text, str) or not text.strip():
            raise VoiceError(
                f"The voice {name!r} needs a transcript: the words spoken in the clip "
                "(voice prompts are text + audio)."
            )
        if speaker is not None:
            check_option("speaker", speaker)
        if name in PRESET_TRANSCRIPTS or name in self._model_presets():
            raise VoiceError(f"{name!r} is a preset voice; register yours under another name.")
        wav = self.user_dir / f"{name}.wav"
        if wav.exists() and not overwrite:
            raise VoiceError(
                f"A voice named {name!r} is already registered; replace it with overwrite=True "
                f"(csm voices add --overwrite), or remove it first (csm voices remove {name})."
            )
        what = f"The clip for voice {name!r}"
        if isinstance(audio, (str, os.PathLike)):
            check_voice_file(audio, what=what)
        samples = load_audio(audio, sample_rate)
        check_voice_clip(samples, text.strip(), what=what)
        for message in clip_warnings(samples, SAMPLE_RATE, what):
            warnings.warn(message, UserWarning, stacklevel=2)

        self.user_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.user_dir / f".{name}.{os.getpid()}.tmp.wav"
        save_audio(tmp, samples, SAMPLE_RATE, subtype="FLOAT")  # lossless: get() returns these samples
        os.replace(tmp, wav)
        wav.with_suffix(".txt").write_text(text.strip() + "\n", encoding="utf-8")
        meta = wav.with_suffix(".json")
        if speaker is not None:
            meta.write_text(json.dumps({"speaker": speaker}) + "\n", encoding="utf-8")
        elif meta.exists():
            meta.unlink()
        return self.get(name)

    def remove(self, name: str) -> None:
        """Delete a registered voice (presets cannot be removed)."""
        _check_name(name)
        wav = self._user_voices().get(name)
        if wav is None:
            if name in self._model_presets() or name in PRESET_TRANSCRIPTS:
                raise VoiceError(f"{name!r} is a preset voice; only registered voices can be removed.")
            raise self._unknown(name)
        for path in (wav, wav.with_suffix(".txt"), wav.with_suffix(".json")):
            if path.exists():
                path.unlink()

    def __repr__(self) -> str:
        return f"VoiceLibrary(model_path={self.model_path}, user_dir={self.user_dir})"
