"""Which earlier turns a new turn sees: the context budget, with hysteresis.

The backbone sees at most `limit` positions (2048 for CSM-1B), and that includes the frames still to
be generated. A turn's prompt is laid out as

    [pinned voice prompts, speaker order] [kept turns, oldest first] [new text rows] [new frames]
     `pinned` rows                         `history` rows            `reserve` rows (text + frame cap)

Pinned prompts always stay. When the history does not fit, the oldest turns go first.

Hysteresis: the window start (the first kept turn) only moves forward, and only when the turns
since it no longer fit. When it moves, it moves far enough that the kept turns use at most
`low_water` (half) of the room left after the pinned prompts and the reserve. The prompt's prefix
then stays the same for many turns, so the generator's KV cache is reused and the cache is rebuilt
only when the start jumps. The start is a function of the stored turns (each turn records the start
it used), so a reopened session chooses exactly what the running one would have.

Pure logic: sizes in, a Window out. No model, no storage.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import ContextTooLongError

LOW_WATER = 0.5  # after a prune, kept turns use at most this fraction of the room left for them


@dataclass(frozen=True)
class Window:
    """The chosen context for one new turn."""

    start: int  # index of the first kept turn (== number of turns when none are kept)
    turns: int  # number of turns considered (the session's turns before the new one)
    pinned_rows: int
    history_rows: int  # rows of the kept turns
    reserve_rows: int  # rows of the new text plus the frames it may generate
    limit: int
    pruned: bool  # the start moved forward for this turn (the cached prefix is rebuilt)

    @property
    def kept(self) -> range:
        return range(self.start, self.turns)

    @property
    def total_rows(self) -> int:
        return self.pinned_rows + self.history_rows + self.reserve_rows


def choose_window(
    turn_rows: Sequence[int],
    *,
    pinned_rows: int,
    reserve_rows: int,
    limit: int,
    previous_start: int = 0,
    low_water: float = LOW_WATER,
) -> Window:
    """Pick the first kept turn for a new turn.

    turn_rows: backbone rows of each earlier turn, oldest first.
    previous_start: the start the latest earlier turn used (0 for a fresh session).
    Raises ContextTooLongError when the new turn cannot fit even with no earlier turns kept.
    """
    if not 0.0 <= low_water <= 1.0:
        raise ValueError(f"low_water must be in [0, 1], got {low_water}")
    count = len(turn_rows)
    room = limit - pinned_rows - reserve_rows  # rows left for earlier turns
    if room < 0:
        raise ContextTooLongError(
            f"the new turn needs {reserve_rows} positions (its text plus up to the frames it may "
            f"generate) and the pinned voice prompts take {pinned_rows}: {pinned_rows + reserve_rows} "
            f"> the model's {limit}. Use a shorter text or a smaller max_audio_length_ms, or pin "
            f"shorter voice prompts."
        )
    start = min(max(previous_start, 0), count)
    suffix = _suffix_sums(turn_rows)  # suffix[i] = rows of turns i..count-1
    pruned = False
    if suffix[start] > room:
        target = int(room * low_water)
        while suffix[start] > target:
            start += 1
        pruned = True
    return Window(
        start=start,
        turns=count,
        pinned_rows=pinned_rows,
        history_rows=suffix[start],
        reserve_rows=reserve_rows,
        limit=limit,
        pruned=pruned,
    )


def _suffix_sums(values: Sequence[int]) -> list[int]:
    sums = [0] * (len(values) + 1)
    for i in range(len(values) - 1, -1, -1):
        sums[i] = sums[i + 1] + int(values[i])
    return sums
