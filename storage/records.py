"""What the store hands back: plain, immutable records (no database handles inside)."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SessionInfo:
    id: int
    name: str
    created_at: str
    meta: dict = field(default_factory=dict)
    turns: int = 0  # number of turns (voice prompts not counted)
    frames: int = 0  # Mimi frames over all turns (80 ms each)
    voices: int = 0  # pinned voice prompts


@dataclass(frozen=True, eq=False)
class StoredSegment:
    """One row of `segments`: a turn (index 0, 1, ...) or a pinned voice prompt (index None)."""

    id: int
    session: str
    index: int | None
    source: str  # generated | recorded | voice_prompt
    speaker: int
    text: str
    codes: np.ndarray  # (frames, 32) int32
    has_audio: bool
    sample_rate: int | None
    params: dict
    seed: int | None
    timing: dict
    meta: dict
    window_start: int | None
    created_at: str

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])


@dataclass(frozen=True, eq=False)
class StoredVoice:
    """One row of `voices`: a registered voice kept in the database (shared by server replicas)."""

    name: str
    text: str  # the words spoken in the clip
    audio: np.ndarray  # (samples,) float32
    sample_rate: int
    meta: dict
    created_at: str
