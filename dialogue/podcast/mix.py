"""The show's audio: each line's clip followed by its pause, and the chapters (where each line is).

Spans are counted in samples so that the file's length is exactly the sum of the clips and the
pauses; the chapters file gives them in seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .script import Line

__all__ = ["Chapter", "chapters_path_for", "mix", "write_chapters"]


@dataclass(frozen=True)
class Chapter:
    line: int  # 1-based position of the line in the show
    speaker: str
    text: str
    start: float  # seconds from the start of the file
    end: float
    yaml_line: int  # where the line is in the script


def pause_samples(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


def mix(clips: list[np.ndarray], lines: list[Line], sample_rate: int) -> tuple[np.ndarray, list[Chapter]]:
    """One float32 track: clip 1, pause 1, clip 2, pause 2, ... and a chapter per line."""
    if len(clips) != len(lines):
        raise ValueError(f"{len(clips)} clips for {len(lines)} lines")
    pieces: list[np.ndarray] = []
    chapters: list[Chapter] = []
    position = 0  # samples
    for clip, line in zip(clips, lines):
        clip = np.asarray(clip, dtype=np.float32).reshape(-1)
        start, position = position, position + clip.shape[0]
        chapters.append(
            Chapter(
                line=line.number,
                speaker=line.speaker,
                text=line.text,
                start=round(start / sample_rate, 3),
                end=round(position / sample_rate, 3),
                yaml_line=line.yaml_line,
            )
        )
        silence = np.zeros(pause_samples(line.pause, sample_rate), dtype=np.float32)
        pieces += [clip, silence]
        position += silence.shape[0]
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return audio, chapters


def chapters_path_for(output: str | Path) -> Path:
    """show.wav -> show.chapters.json (beside the audio)."""
    output = Path(output)
    return output.with_name(output.stem + ".chapters.json")


def write_chapters(path: str | Path, chapters: list[Chapter]) -> Path:
    """[{line, speaker, text, start, end, yaml_line}] as JSON, written atomically."""
    path = Path(path)
    text = json.dumps([asdict(c) for c in chapters], indent=2, ensure_ascii=False) + "\n"
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path
