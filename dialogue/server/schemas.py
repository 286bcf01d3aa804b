"""Request bodies. Field names follow OpenAI's /v1/audio/speech; CSM's own options are extra
fields (the openai client sends them with `extra_body={...}`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from engine.option_checks import OPTIONS

MAX_INPUT_CHARS = 4096  # OpenAI's limit for `input`


def _checked(name: str):
    """The option `name` checked by engine.option_checks, as the CLI, the Python API and podcast
    scripts check it (an InputError is a ValueError: pydantic reports it as a 400 for the field)."""
    return BeforeValidator(lambda value: OPTIONS[name].check(value))


Temperature = Annotated[float, _checked("temperature")]
TopK = Annotated[int, _checked("top_k")]
Seed = Annotated[int | None, _checked("seed")]
MaxAudioLength = Annotated[float | None, BeforeValidator(
    lambda value: None if value is None else OPTIONS["max_audio_length_ms"].check(value))]
StreamingInterval = Annotated[float, _checked("streaming_interval")]
SpeakerId = Annotated[int, _checked("speaker")]


class GenerationOptions(BaseModel):
    """CSM sampling options shared by /v1/audio/speech and session turns."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature = Field(0.9, description="0 = greedy")
    top_k: TopK = Field(50, description="0 = all codes")
    seed: Seed = Field(None, description="same seed, same audio; omitted = drawn and reported")
    max_audio_length_ms: MaxAudioLength = Field(None, description="the longest the audio may run")
    streaming_interval: StreamingInterval = Field(0.5, description="seconds of audio per streamed chunk")
    response_format: str = "mp3"
    stream_format: Literal["audio", "sse"] | None = None
    stream: bool = Field(True, description="false: one complete file with its exact length")

    @model_validator(mode="after")
    def _one_delivery(self):
        if self.stream_format is not None and "stream" in self.model_fields_set and not self.stream:
            raise ValueError("stream: false asks for one whole file and stream_format for a "
                             "stream; leave one of them out")
        return self

    @property
    def streaming(self) -> bool:
        return self.stream


class SpeechRequest(GenerationOptions):
    """POST /v1/audio/speech."""

    model: str = Field(..., min_length=1, description="accepted for compatibility; the server "
                                                      "speaks with the one model it loaded")
    input: str = Field(..., min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str | dict[str, Any] | None = None
    instructions: str | None = None
    speed: float = 1.0
    speaker: SpeakerId = 0

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input is empty; give the text to speak")
        return value

    def voice_name(self) -> str | None:
        """The voice as a name: a string, or OpenAI's custom-voice object {"id": name}."""
        if isinstance(self.voice, dict):
            name = self.voice.get("id")
            if not isinstance(name, str):
                raise ValueError('voice object must look like {"id": "<voice name>"}')
            return name
        return self.voice


class TurnRequest(GenerationOptions):
    """POST /v1/sessions/{id}/turns: the next turn of a stored conversation."""

    speaker: SpeakerId
    input: str = Field(..., min_length=1, max_length=MAX_INPUT_CHARS)
    response_format: str = "wav"

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input is empty; give the text of the turn")
        return value


class SessionCreate(BaseModel):
    """POST /v1/sessions."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="session name; generated when omitted")
    voices: dict[int, str] = Field(default_factory=dict,
                                   description="voice pinned per speaker, e.g. {\"0\": \"conversational_a\"}")
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("voices")
    @classmethod
    def _speaker_ids(cls, voices: dict[int, str]) -> dict[int, str]:
        for speaker in voices:
            OPTIONS["speaker"].check(speaker, "voices: a speaker id")
        return voices


class VoicePin(BaseModel):
    """POST /v1/sessions/{id}/voices: pin a voice for a speaker of the session."""

    model_config = ConfigDict(extra="forbid")

    speaker: SpeakerId
    voice: str
