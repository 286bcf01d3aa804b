"""Written English -> the words a speaker says ("$3.50" -> "three dollars and fifty cents").

CSM reads text the way its training transcripts were written: mostly words. Digits, currency
signs and abbreviations come out mumbled or skipped. `normalize_text` rewrites the common cases
into words and leaves everything else exactly as it was. It is conservative by design: a rule
only fires on a pattern it fully understands, and it never removes a word.

Handled (in this order):
  abbreviations   Mr. Mrs. Ms. Dr. Prof. St. Jr. Sr. Mt. Lt. Capt. Sgt. No. vs. etc. e.g. i.e.
                  approx. Inc. Ltd. Corp. and month abbreviations before a day number
  currency        $3.50, £1,200, €5, ¥300, 50¢, $2.5 million, $5M, 10€
  percentages     50%, 3.5 %
  temperatures    20°C, 70 °F, 90°
  times           3:30 pm, 10:05, 15:00, 7 a.m., 12pm
  ISO dates       2024-03-15 ("March fifteenth, twenty twenty-four")
  phone numbers   555-123-4567, (555) 123-4567, 555-1234  (digit by digit)
  ordinals        1st, 22nd, 103rd
  decades         1990s, '90s, 80s
  ranges          10-20, 2020–2024  ("ten to twenty")
  fractions       1/2, 3/4, 2/3
  years           1100..2099 standing alone ("nineteen ninety-nine", "twenty twenty-four")
  numbers         1,234 / 3.14 / -5 / 007 / #1
  symbols         & + = @ (spaced), and HTML entities (&amp; -> &)
"""

from __future__ import annotations

import html
import re

from num2words import num2words

from engine.errors import InputError

__all__ = ["normalize_text"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# A sentence continues after a period unless the text ends there or a capital word follows.
_STOP_AHEAD = r"(?=\s*$|\s+[\"'(\[]?[A-Z])"


def _cardinal(digits: str) -> str:
    """'1,234' -> 'one thousand two hundred and thirty-four' (no commas in the words)."""
    clean = digits.replace(",", "")
    if len(clean) > 1 and clean.startswith("0"):
        return _digits(clean)
    if len(clean) > 15:  # beyond trillions: read the digits
        return _digits(clean)
    return num2words(int(clean)).replace(",", "")


def _digits(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits if d.isdigit())


def _decimal(whole: str, fraction: str | None) -> str:
    words = _cardinal(whole) if whole else "zero"
    if fraction:
        words += " point " + _digits(fraction)
    return words


def _year(value: int) -> str:
    return num2words(value, to="year").replace(",", "").replace("oh-", "oh ")


def _ordinal(digits: str) -> str:
    return num2words(int(digits.replace(",", "")), to="ordinal").replace(",", "")


def _plural(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}" if head else last


def _keep_stop(had_stop: bool) -> str:
    return "." if had_stop else ""


# ------------------------------------------------------------------------------ abbreviations

_TITLES = {  # before a capitalised name
    "Mr": "Mister",
    "Mrs": "Missus",
    "Ms": "Miz",
    "Dr": "Doctor",
    "Prof": "Professor",
    "Mt": "Mount",
    "Lt": "Lieutenant",
    "Capt": "Captain",
    "Sgt": "Sergeant",
    "Gov": "Governor",
}
_SUFFIXES = {  # may end a sentence: keep the full stop when they do
    "Jr": "Junior",
    "Sr": "Senior",
    "Inc": "Incorporated",
    "Ltd": "Limited",
    "Corp": "Corporation",
    "etc": "et cetera",
    "approx": "approximately",
    "vs": "versus",
}
_MONTHS = {
    "Jan": "January",
    "Feb": "February",
    "Mar": "March",
    "Apr": "April",
    "Jun": "June",
    "Jul": "July",
    "Aug": "August",
    "Sep": "September",
    "Sept": "September",
    "Oct": "October",
    "Nov": "November",
    "Dec": "December",
}


def _saint_or_street(m: re.Match, text: str) -> str:
    """St. -> Street after a capitalised name or a number (5 Main St.), Saint before a name."""
    before = re.search(r"(\S+)\s+$", text[: m.start()])
    previous = before.group(1) if before else ""
    if previous[:1].isupper() and previous[-1:].isalpha() or previous.isdigit():
        return "Street" + _keep_stop(m.group(1) is not None)
    if re.match(r"\s+[A-Z]", text[m.end() :]):
        return "Saint"
    return m.group(0)


def _abbreviations(text: str) -> str:
    titles = "|".join(sorted(_TITLES, key=len, reverse=True))
    # Mr./Dr./... before a capitalised word; Mr/Mrs/Ms also without the period (British style)
    text = re.sub(
        rf"\b({titles})\.(?=\s+[A-Z])",
        lambda m: _TITLES[m.group(1)],
        text,
    )
    text = re.sub(r"\b(Mr|Mrs|Ms)(?=\s+[A-Z])", lambda m: _TITLES[m.group(1)], text)
    text = re.sub(rf"\bSt\.({_STOP_AHEAD})?", lambda m: _saint_or_street(m, text), text)
    suffixes = "|".join(sorted(_SUFFIXES, key=len, reverse=True))
    text = re.sub(
        rf"\b({suffixes})\.({_STOP_AHEAD})?",
        lambda m: _SUFFIXES[m.group(1)] + _keep_stop(m.group(2) is not None),
        text,
    )
    text = re.sub(
        rf"\be\.g\.({_STOP_AHEAD})?,?",
        lambda m: "for example" + (_keep_stop(m.group(1) is not None) or ","),
        text,
    )
    text = re.sub(
        rf"\bi\.e\.({_STOP_AHEAD})?,?",
        lambda m: "that is" + (_keep_stop(m.group(1) is not None) or ","),
        text,
    )
    text = re.sub(r"\bNo\.(?=\s*\d)", "number", text)
    months = "|".join(sorted(_MONTHS, key=len, reverse=True))
    text = re.sub(rf"\b({months})\.(?=\s+\d)", lambda m: _MONTHS[m.group(1)], text)
    return text


# ----------------------------------------------------------------------------------- money

_NUM = r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"  # whole (with thousands commas), fraction
_SCALES = {
    "thousand": "thousand",
    "million": "million",
    "billion": "billion",
    "trillion": "trillion",
    "k": "thousand",
    "K": "thousand",
    "m": "million",
    "M": "million",
    "bn": "billion",
    "B": "billion",
}
_CURRENCIES = {  # sign: (one, many, sub-one, sub-many)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", None, None),
}


def _money(sign: str, whole: str, fraction: str | None, scale: str | None) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[sign]
    if scale:
        return f"{_decimal(whole, fraction)} {_SCALES[scale]} {many}"
    units = int(whole.replace(",", ""))
    if fraction is None or sub_one is None or len(fraction) > 2:
        if fraction and int(fraction) != 0:
            return f"{_decimal(whole, fraction)} {many}"
        return f"{_cardinal(whole)} {one if units == 1 else many}"
    cents = int(fraction.ljust(2, "0"))
    parts = []
    if units or not cents:
        parts.append(f"{_cardinal(whole)} {one if units == 1 else many}")
    if cents:
        parts.append(f"{num2words(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts)


def _currency(text: str) -> str:
    signs = "".join(re.escape(s) for s in _CURRENCIES)
    scale = r"(?:\s?(thousand|million|billion|trillion|bn|[kKmMB])\b)?"
    text = re.sub(
        rf"(?<![\w])([{signs}])\s?{_NUM}{scale}",
        lambda m: _money(m.group(1), m.group(2), m.group(3), m.group(4)),
        text,
    )
    text = re.sub(  # 10€ / 10 €
        rf"(?<![\w.,]){_NUM}\s?([{signs}])(?!\w)",
        lambda m: _money(m.group(3), m.group(1), m.group(2), None),
        text,
    )
    text = re.sub(
        r"(?<![\w.,])(\d+)\s?¢",
        lambda m: f"{_cardinal(m.group(1))} {'cent' if int(m.group(1)) == 1 else 'cents'}",
        text,
    )
    return text


# --------------------------------------------------------------------- percent, degrees, time

def _percent_and_degrees(text: str) -> str:
    text = re.sub(
        rf"(?<![\w.,])(-)?{_NUM}\s?%",
        lambda m: ("minus " if m.group(1) else "") + f"{_decimal(m.group(2), m.group(3))} percent",
        text,
    )
    units = {"C": " Celsius", "F": " Fahrenheit", "": ""}
    return re.sub(
        rf"(?<![\w.,])(-)?{_NUM}\s?°\s?([CF]?)(?![A-Za-z])",
        lambda m: ("minus " if m.group(1) else "")
        + f"{_decimal(m.group(2), m.group(3))} "
        + ("degree" if m.group(2) == "1" and not m.group(3) else "degrees")
        + units[m.group(4)],
        text,
    )


# am / a.m. / AM; group 2 catches a final period that also ends the sentence
_MERIDIEM = rf"([AaPp])(?:\.\s?[Mm](?:(\.){_STOP_AHEAD}|\.)?|[Mm])(?!\w)"


def _clock(hour: int, minute: int, meridiem: str | None) -> str:
    if meridiem:
        words = num2words(hour)
        if minute:
            words += " " + (f"oh {num2words(minute)}" if minute < 10 else num2words(minute))
        return f"{words} {meridiem.upper()}M"
    if minute == 0:
        return f"{num2words(hour)} hundred" if hour >= 13 or hour == 0 else f"{num2words(hour)} o'clock"
    minutes = f"oh {num2words(minute)}" if minute < 10 else num2words(minute)
    return f"{num2words(hour)} {minutes}"


def _times(text: str) -> str:
    def with_minutes(m: re.Match) -> str:
        hour, minute = int(m.group(1)), int(m.group(2))
        meridiem = m.group(4)
        if m.group(3) is not None:  # h:mm:ss is a duration or a timestamp: leave it alone
            return m.group(0)
        if hour > 23 or minute > 59 or (meridiem and not 1 <= hour <= 12):
            return m.group(0)
        stop = "." if m.group(5) else ""
        return _clock(hour, minute, meridiem) + stop

    text = re.sub(
        rf"(?<![\w:.])(\d{{1,2}}):(\d{{2}})(?::(\d{{2}}))?(?![\w:])(?:\s?{_MERIDIEM})?",
        with_minutes,
        text,
    )

    def hour_only(m: re.Match) -> str:
        hour = int(m.group(1))
        if not 1 <= hour <= 12:
            return m.group(0)
        stop = "." if m.group(3) else ""
        return _clock(hour, 0, m.group(2)) + stop

    return re.sub(rf"(?<![\w:.,])(\d{{1,2}})\s?{_MERIDIEM}", hour_only, text)


# ------------------------------------------------------------------------- digit patterns

def _phones(text: str) -> str:
    def read(*groups: str) -> str:
        return ", ".join(_digits(g) for g in groups)

    text = re.sub(
        r"(?<![\w-])\((\d{3})\)\s?(\d{3})-(\d{4})(?![\w-])",
        lambda m: read(*m.groups()),
        text,
    )
    text = re.sub(
        r"(?<![\w.,-])(\d{3})-(\d{3})-(\d{4})(?![\w-]|\.\d)",
        lambda m: read(*m.groups()),
        text,
    )
    return re.sub(r"(?<![\w.,-])(\d{3})-(\d{4})(?![\w-]|\.\d)", lambda m: read(*m.groups()), text)


_MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]


def _iso_dates(text: str) -> str:
    """2024-03-15 -> March fifteenth, twenty twenty-four (ISO order is unambiguous)."""

    def read(m: re.Match) -> str:
        year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return m.group(0)
        return f"{_MONTH_NAMES[month - 1]} {num2words(day, to='ordinal')}, {_year(year)}"

    return re.sub(r"(?<![\w.,-])(\d{4})-(\d{2})-(\d{2})(?![\w-]|\.\d)", read, text)


def _ordinals(text: str) -> str:
    return re.sub(
        r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th|ST|ND|RD|TH)\b",
        lambda m: _ordinal(m.group(1)),
        text,
    )


def _decades(text: str) -> str:
    def four(m: re.Match) -> str:
        return _plural(_year(int(m.group(1))))

    text = re.sub(r"(?<![\w.,'])(1[0-9]\d0|20\d0)s\b", four, text)
    return re.sub(
        r"(?<![\w.,])'?([2-9]0)s\b",
        lambda m: _plural(num2words(int(m.group(1)))),
        text,
    )


def _is_year(digits: str) -> bool:
    return len(digits) == 4 and 1100 <= int(digits) <= 2099


def _number_or_year(digits: str) -> str:
    return _year(int(digits)) if _is_year(digits) else _cardinal(digits)


def _ranges(text: str) -> str:
    return re.sub(
        r"(?<![\w.,-])(\d{1,3}(?:,\d{3})+|\d+)(?:-|\s?–\s?)(\d{1,3}(?:,\d{3})+|\d+)(?![\w.,-]|\.\d)",
        lambda m: f"{_number_or_year(m.group(1))} to {_number_or_year(m.group(2))}",
        text,
    )


_FRACTIONS = {
    (1, 2): "one half",
    (1, 3): "one third",
    (2, 3): "two thirds",
    (1, 4): "one quarter",
    (3, 4): "three quarters",
}


def _fractions(text: str) -> str:
    def read(m: re.Match) -> str:
        key = (int(m.group(1)), int(m.group(2)))
        return _FRACTIONS.get(key, m.group(0))

    return re.sub(r"(?<![\w./])(\d)/(\d)(?![\w/]|\.\d)", read, text)


def _years(text: str) -> str:
    return re.sub(
        r"(?<![\w.,$£€¥#-])(1[1-9]\d\d|20\d\d)(?![\w%°]|[.,]\d)",
        lambda m: _year(int(m.group(1))),
        text,
    )


def _numbers(text: str) -> str:
    text = re.sub(r"(?<![\w&])#(\d+)\b", lambda m: f"number {_cardinal(m.group(1))}", text)
    # a minus sign at the start of a word, followed by digits
    text = re.sub(
        rf"(?:(?<=\s)|(?<=^)|(?<=\())-{_NUM}(?![\w]|\.\d)",
        lambda m: "minus " + _decimal(m.group(1), m.group(2)),
        text,
    )
    text = re.sub(r"(?<![\w.,])\.(\d+)(?![\w]|\.\d)", lambda m: "point " + _digits(m.group(1)), text)
    return re.sub(
        rf"(?<![\w.,]){_NUM}(?![\w]|[.,]\d)",
        lambda m: _decimal(m.group(1), m.group(2)),
        text,
    )


# ----------------------------------------------------------------------------------- symbols

def _symbols(text: str) -> str:
    text = re.sub(r"\s*&\s*", " and ", text)
    text = re.sub(r"(?<=\w)\s*\+\s*(?=\w)|(?<=\s)\+(?=\s)", " plus ", text)
    text = re.sub(r"(?<=\s)=(?=\s)", "equals", text)
    text = re.sub(r"(?<=\s)@(?=\s)", "at", text)
    return text


def _symbols_with_numbers(text: str) -> str:
    # "2+2=4", "3 x 4" are handled by _symbols for + and =; keep "=" between digits too
    return re.sub(r"(?<=\d)\s*=\s*(?=\d)", " equals ", text)


def normalize_text(text: str) -> str:
    """Return `text` with numbers, currency, times, abbreviations and symbols spelt out.

    Empty or whitespace-only text is an InputError. Text without anything to rewrite comes back
    unchanged apart from runs of spaces collapsed to one.
    """
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InputError("The text is empty; give at least one word to speak.")
    out = html.unescape(text) if "&" in text and ";" in text else text
    out = out.replace("\u00a0", " ").replace("\u2009", " ").replace("\u202f", " ")
    out = _abbreviations(out)
    out = _currency(out)
    out = _percent_and_degrees(out)
    out = _times(out)
    out = _iso_dates(out)
    out = _phones(out)
    out = _ordinals(out)
    out = _decades(out)
    out = _fractions(out)
    out = _ranges(out)
    out = _symbols_with_numbers(out)
    out = _years(out)
    out = _numbers(out)
    out = _symbols(out)
    out = re.sub(r"[ \t]{2,}", " ", out)
    return out.strip()
