"""dialogue.budget: which earlier turns a new turn sees (pure logic, no model)."""

import pytest

from dialogue.budget import LOW_WATER, Window, choose_window
from engine.errors import ContextTooLongError


def test_everything_fits_keeps_all_turns():
    w = choose_window([100, 120, 80], pinned_rows=300, reserve_rows=200, limit=2048)
    assert (w.start, w.turns, w.pruned) == (0, 3, False)
    assert w.history_rows == 300 and w.total_rows == 800 and list(w.kept) == [0, 1, 2]


def test_exact_fit_is_allowed():
    w = choose_window([100, 100], pinned_rows=0, reserve_rows=48, limit=248)
    assert w.start == 0 and w.total_rows == 248 and not w.pruned


def test_overflow_prunes_oldest_down_to_low_water():
    rows = [100] * 20  # 2000 rows of history
    w = choose_window(rows, pinned_rows=248, reserve_rows=200, limit=2048)
    room = 2048 - 248 - 200
    assert w.pruned
    assert w.history_rows <= room * LOW_WATER  # dropped down to the low-water mark ...
    assert w.history_rows + 100 > room * LOW_WATER  # ... and no further (oldest first)
    assert w.start == 20 - w.history_rows // 100
    assert w.total_rows <= 2048


def test_start_stays_fixed_between_prunes():
    """Simulate a long conversation: the window start moves rarely, in jumps, never backwards."""
    limit, pinned, reserve, turn = 2048, 300, 150, 60
    rows, start, starts = [], 0, []
    for _ in range(200):
        w = choose_window(rows, pinned_rows=pinned, reserve_rows=reserve, limit=limit, previous_start=start)
        assert w.total_rows <= limit
        assert w.start >= start
        start = w.start
        starts.append(start)
        rows.append(turn)
    jumps = sum(1 for a, b in zip(starts, starts[1:]) if b != a)
    room = limit - pinned - reserve
    turns_between = (room - int(room * LOW_WATER)) // turn  # turns that fit between two prunes
    assert turns_between >= 10
    assert jumps <= 200 // turns_between + 1
    # between two prunes (the runs after the first one, before the last) the start holds still
    runs = [starts.count(s) for s in sorted(set(starts))]
    assert len(runs) >= 3 and all(run >= turns_between for run in runs[1:-1])


def test_start_never_moves_back_when_reserve_shrinks():
    rows = [100] * 10
    big = choose_window(rows, pinned_rows=0, reserve_rows=1500, limit=2048, previous_start=0)
    assert big.pruned and big.start > 0
    small = choose_window(rows, pinned_rows=0, reserve_rows=10, limit=2048, previous_start=big.start)
    assert small.start == big.start and not small.pruned


def test_a_turn_bigger_than_the_room_is_dropped():
    w = choose_window([50, 5000, 40], pinned_rows=100, reserve_rows=100, limit=2048)
    assert w.start == 2 and w.history_rows == 40


def test_no_history_room_keeps_pinned_only():
    w = choose_window([10, 10], pinned_rows=1000, reserve_rows=1048, limit=2048)
    assert w.start == 2 and w.history_rows == 0 and w.total_rows == 2048


def test_cannot_fit_even_with_pinned_only_gives_numbers():
    with pytest.raises(ContextTooLongError, match=r"1200.*1000.*2200 > the model's 2048"):
        choose_window([10], pinned_rows=1000, reserve_rows=1200, limit=2048)


def test_previous_start_is_clamped():
    w = choose_window([10, 10], pinned_rows=0, reserve_rows=10, limit=2048, previous_start=7)
    assert w.start == 2 and w.history_rows == 0


def test_same_inputs_same_window():
    args = dict(pinned_rows=200, reserve_rows=300, limit=1024, previous_start=3)
    rows = [37, 80, 12, 99, 150, 61, 70, 200, 45]
    assert choose_window(rows, **args) == choose_window(list(rows), **args)
    assert isinstance(choose_window(rows, **args), Window)


def test_bad_low_water():
    with pytest.raises(ValueError):
        choose_window([], pinned_rows=0, reserve_rows=1, limit=10, low_water=1.5)
