"""copy_sessions: move sessions (and registered voices) from one store to another, any backends.

Each session is read in one snapshot and written in one transaction, row for row: codes, audio,
parameters, seeds, timings and timestamps arrive exactly as they were, so a copy continues with the
same context (and, with the same seeds, the same codes) as the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import StorageError


@dataclass
class CopyReport:
    sessions: list[str] = field(default_factory=list)  # copied, in order
    skipped: list[str] = field(default_factory=list)  # already in the target (not replaced)
    voices: list[str] = field(default_factory=list)  # registered voices copied


def copy_sessions(source, target, names: list[str] | None = None, *, replace: bool = False,
                  skip_existing: bool = False, voices: bool = True) -> CopyReport:
    """Copy the sessions `names` (default: all) from `source` to `target` (both Stores).

    A session already in the target is an error, unless `replace` (overwrite it) or
    `skip_existing` (leave it). Checked before anything is written. `voices`: also copy the
    registered voices the target lacks (where both databases keep them).
    """
    known = [info.name for info in source.sessions()]
    wanted = list(dict.fromkeys(names)) if names else known
    missing = [name for name in wanted if name not in known]
    if missing:
        listing = ", ".join(repr(k) for k in known) or "none"
        raise StorageError(f"no session {', '.join(map(repr, missing))} in {source.location} "
                           f"(sessions: {listing})")
    report = CopyReport()
    present = [name for name in wanted if target.has_session(name)]
    if present and not (replace or skip_existing):
        raise StorageError(
            f"{target.location} already has session(s) {', '.join(map(repr, present))}; pass "
            "--replace to overwrite them or --skip-existing to leave them")
    for name in wanted:
        if name in present and skip_existing and not replace:
            report.skipped.append(name)
            continue
        target.load_session(source.dump_session(name), replace=replace)
        report.sessions.append(name)
    if voices and _has_voices(source) and _has_voices(target):
        have = set(target.voice_names())
        for name in source.voice_names():
            if name not in have:
                voice = source.voice(name)
                target.save_voice(name, voice.text, voice.audio, sample_rate=voice.sample_rate,
                                  meta=voice.meta)
                report.voices.append(name)
    return report


def _has_voices(store) -> bool:
    return getattr(store, "version", 0) >= 2
