"""Request bodies. Field names follow OpenAI's /v1/audio/speech; CSM's own options are extra
fields (the openai client sends them with `extra_body={...}`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_INPUT_CHARS = 4096  # OpenAI's limit for `input`


class GenerationOptions(BaseModel):
    """CSM sampling options shared by /v1/audio/speech and session turns."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.9, ge=0.0, le=5.0, description="0 = greedy")
    top_k: int = Field(50, ge=1, le=2051)
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="same seed, same audio; omitted = drawn and reported")
    max_audio_length_ms: float | None = Field(None, gt=0, le=600_000)
    streaming_interval: float = Field(0.5, gt=0.0, le=30.0,
                                      description="seconds of audio per streamed chunk")
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
    speaker: int = Field(0, ge=0, le=1023)

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

    speaker: int = Field(..., ge=0, le=1023)
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


class VoicePin(BaseModel):
    """POST /v1/sessions/{id}/voices: pin a voice for a speaker of the session."""

    model_config = ConfigDict(extra="forbid")

    speaker: int = Field(..., ge=0, le=1023)
    voice: str
