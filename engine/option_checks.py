"""Every generation option, defined once: its name, its type, its range and what it means.

The command line (click types built from these), the Python API (`CSMModel.generate`,
`Conversation.say`), podcast scripts (YAML) and the HTTP server (pydantic validators) all check
an option with the same `OPTIONS[name].check(value)`, so a value is refused the same way, with
the same words, wherever it comes from:

    >>> OPTIONS["temperature"].check(float("nan"))
    InputError: temperature must be a finite number from 0 to 5 (0 = greedy), got nan

Rules shared by every number: a bool is not a number; a string is not a number (the command line
and YAML parse their text first, then check the number); NaN and infinities are refused; whole
numbers must be whole (2.0 is accepted as 2, 2.5 is not).

Why these ranges:
- temperature 0..5: above ~2 CSM's codes are noise already; 0 is greedy.
- top_k 0..2051: 0 (or anything >= the audio vocabulary, 2051 ids) samples among all codes.
- seed 0..2**32-1: what every random generator in the stack takes (numpy's legacy seed is 32-bit).
- max_audio_length_ms 80..163840: at least one frame (80 ms), at most what the backbone's 2048
  positions could ever hold (2048 frames x 80 ms); a larger value could never be reached.
- streaming_interval (0, 30] seconds of audio per streamed chunk.
- pause 0..60 seconds of silence (between turns, podcast lines): longer is never what was meant
  (pause: 1e7 would be 894 GiB of silence).
- speaker 0..1023: speaker ids are small ints in the prompt text ("[0]Hello") and in SQLite.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from engine.constants import MS_PER_FRAME
from engine.errors import InputError

MAX_CONTEXT_POSITIONS = 2048  # CSM-1B's backbone positions: no utterance can be longer


def _number_text(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class NumberOption:
    """One numeric option: `check(value)` returns it as `kind` (int or float) or raises InputError."""

    name: str
    kind: type  # int or float
    minimum: float
    maximum: float
    meaning: str = ""  # shown after the range, e.g. "0 = greedy"
    min_exclusive: bool = False
    nullable: bool = False  # None is allowed (and returned as None)

    def describe(self) -> str:
        """'a finite number from 0 to 5 (0 = greedy)' / 'a whole number from 0 to 1023'."""
        what = "a whole number" if self.kind is int else "a finite number"
        low, high = _number_text(self.minimum), _number_text(self.maximum)
        span = f"above {low} and at most {high}" if self.min_exclusive else f"from {low} to {high}"
        extra = f" ({self.meaning})" if self.meaning else ""
        return f"{what} {span}{extra}"

    def error(self, value, label: str | None = None) -> InputError:
        shown = repr(value) if not isinstance(value, float) else _float_text(value)
        return InputError(f"{label or self.name} must be {self.describe()}, got {shown}")

    def check(self, value, label: str | None = None):
        """`value` as this option's type, or InputError naming the option and its range.
        `label` replaces the name in the message (e.g. '--temperature', 'defaults.pause')."""
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.error(value, label)
        if isinstance(value, numbers.Integral):
            number = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                raise self.error(value, label)
            if self.kind is int:
                if not number.is_integer():
                    raise self.error(value, label)
                number = int(number)
        too_low = number <= self.minimum if self.min_exclusive else number < self.minimum
        if too_low or number > self.maximum:
            raise self.error(value, label)
        return self.kind(number)

    def parse(self, text: str, label: str | None = None):
        """Text (a command-line argument, a query string) as this option, then checked."""
        if isinstance(text, str):
            stripped = text.strip()
            try:
                value = int(stripped) if self.kind is int else float(stripped)
            except ValueError:
                try:  # "1e3" for an int option, "2.0": let check() judge the number
                    value = float(stripped)
                except ValueError:
                    raise InputError(f"{label or self.name} must be {self.describe()}, got "
                                     f"{text!r}") from None
            return self.check(value, label)
        return self.check(text, label)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:g}"


OPTIONS: dict[str, NumberOption] = {
    option.name: option
    for option in (
        NumberOption("temperature", float, 0.0, 5.0, "0 = greedy"),
        NumberOption("top_k", int, 0, 2051, "0 = all codes"),
        NumberOption("seed", int, 0, 2**32 - 1, nullable=True),
        NumberOption("max_audio_length_ms", float, MS_PER_FRAME,
                     MAX_CONTEXT_POSITIONS * MS_PER_FRAME, "milliseconds"),
        NumberOption("streaming_interval", float, 0.0, 30.0, "seconds of audio per chunk",
                     min_exclusive=True),
        NumberOption("pause", float, 0.0, 60.0, "seconds"),
        NumberOption("speaker", int, 0, 1023, "speaker id"),
    )
}


def check_option(name: str, value, label: str | None = None):
    """OPTIONS[name].check(value, label)."""
    return OPTIONS[name].check(value, label)


def check_options(**values) -> dict:
    """Each keyword checked as the option of that name; returns the checked values."""
    return {name: OPTIONS[name].check(value) for name, value in values.items()}


def check_flag(name: str, value) -> bool:
    """A yes/no option must be a bool (a string 'no' is truthy, so it is refused)."""
    if not isinstance(value, bool):
        import numpy as np  # lazy: `csm --help` imports this module (through the CLI's option types)

        if isinstance(value, np.bool_):
            return bool(value)
        raise InputError(f"{name} must be True or False, got {value!r}")
    return value


def check_text(name: str, value, *, allow_empty: bool = False) -> str:
    """A text option must be a str (not bytes, a number or None)."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text (a str), got {type(value).__name__} {value!r:.60}")
    if not allow_empty and not value.strip():
        raise InputError(f"{name} is empty; give some text")
    return value
