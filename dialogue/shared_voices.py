"""DatabaseVoices: a model's voice library whose registered voices live in the conversation
database instead of a local folder, so every server replica (on any machine) sees the same ones.

    model.voices = DatabaseVoices(model.voices, store)

Presets still come from the model (its prompts/ folder, Sesame's hub presets); registered voices
are rows of the store's `voices` table (name, transcript, FLAC audio, speaker). A clip is checked
exactly as engine.voices.VoiceLibrary.register checks it (it runs that code on a scratch folder), so
a voice is accepted, trimmed or refused the same way wherever it is kept.
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np

from engine.constants import SAMPLE_RATE
from engine.errors import VoiceError
from engine.voices import Voice, VoiceLibrary
from storage import StorageError


class DatabaseVoices:
    """The VoiceLibrary interface (names, get, register, remove, ...) over a Store's voices."""

    def __init__(self, presets: VoiceLibrary, store):
        self.presets = presets
        self.store = store
        self.model_path = presets.model_path

    # -- listing ---------------------------------------------------------------------------------

    def preset_names(self) -> list[str]:
        return self.presets.preset_names()

    def user_names(self) -> list[str]:
        return self.store.voice_names()

    def names(self) -> list[str]:
        presets = self.preset_names()
        return presets + [n for n in self.user_names() if n not in presets]

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    # -- loading ---------------------------------------------------------------------------------

    def get(self, name: str) -> Voice:
        if isinstance(name, str):
            stored = self.store.voice(name)
            if stored is not None and name not in self.preset_names():
                speaker = stored.meta.get("speaker")
                return Voice(name, stored.text, stored.audio.copy(), "database", None,
                             speaker if isinstance(speaker, int) and speaker >= 0 else None)
        try:
            return self.presets.get(name)
        except VoiceError:
            raise self._unknown(name) from None

    def _unknown(self, name) -> VoiceError:
        known = self.names()
        return VoiceError(f"Unknown voice {name!r}. Known voices: {', '.join(known) or 'none yet'}. "
                          "Register your own (POST /v1/voices), or pass ref_audio + ref_text.")

    # -- registering -----------------------------------------------------------------------------

    def register(self, name: str, audio, text: str, *, sample_rate: int | None = None,
                 speaker: int | None = None, overwrite: bool = False) -> Voice:
        """Check the clip as VoiceLibrary.register does, then store it in the database."""
        if isinstance(name, str) and not overwrite and self.store.voice(name) is not None:
            raise VoiceError(f"A voice named {name!r} is already registered in "
                             f"{self.store.location}; remove it first or pass overwrite=True.")
        with tempfile.TemporaryDirectory(prefix="csm-voice-check-") as scratch:
            checker = VoiceLibrary(self.model_path, user_dir=scratch,
                                   preset_repo=self.presets.preset_repo)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                checked = checker.register(name, audio, text, sample_rate=sample_rate,
                                           speaker=speaker, overwrite=True)
        for warning in caught:  # pass the clip's quality notes on, as register() does
            warnings.warn(warning.message, warning.category, stacklevel=2)
        meta = {} if speaker is None else {"speaker": int(speaker)}
        try:  # the store checks again inside its transaction: two uploads cannot both win
            self.store.save_voice(name, checked.text, np.asarray(checked.audio, np.float32),
                                  sample_rate=SAMPLE_RATE, meta=meta, overwrite=overwrite)
        except StorageError as error:
            raise VoiceError(str(error)) from None
        return self.get(name)

    def remove(self, name: str) -> None:
        if name in self.preset_names():
            raise VoiceError(f"{name!r} is a preset voice; only registered voices can be removed.")
        if not self.store.remove_voice(name):
            raise self._unknown(name)

    def __repr__(self) -> str:
        return f"DatabaseVoices(presets={self.presets!r}, store={self.store!r})"
