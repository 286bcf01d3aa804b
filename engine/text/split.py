"""Long text -> pieces that each fit a budget, cut where a speaker would pause.

`split_sentences(text)`: the sentences (and lines) of `text`, in order.
`split_text(text, max_chars)`: pieces of at most `max_chars` characters, packed greedily from
whole sentences; a sentence that is too long is cut at clause boundaries (, ; : and dashes), a
clause that is still too long at spaces between words, and a single word longer than the budget
into chunks of characters. Paragraphs (blank lines) always start a new piece.

Nothing is dropped or reordered: the pieces joined (with whitespace) hold every non-space
character of the input, in order. Only whitespace changes (runs collapse to one space).
"""

from __future__ import annotations

import re

from engine.errors import InputError

__all__ = ["split_sentences", "split_text"]

# Words whose trailing period does not end a sentence.
_NO_BREAK_AFTER = {
    "mr", "mrs", "ms", "dr", "prof", "st", "mt", "lt", "capt", "sgt", "gov", "jr", "sr",
    "vs", "etc", "e.g", "i.e", "approx", "no", "inc", "ltd", "corp", "a.m", "p.m",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
}

# A sentence ends at . ! ? … (runs allowed), optionally followed by closing quotes/brackets,
# then whitespace. The split happens in that whitespace.
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s)""")
_CLAUSE_END = re.compile(r"""(?:[,;:]|\s[-–—]+|[–—])["'”’)\]]*(?=\s)""")


def _check(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InputError("The text is empty; give at least one word to speak.")
    return text


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _is_abbreviation(chunk: str, end: int) -> bool:
    """True when the period ending at `end` belongs to a known abbreviation or an initial."""
    if chunk[end - 1] != "." or chunk[end - 2 : end] == "..":
        return False
    word = re.search(r"(\S+)\.$", chunk[:end])
    if not word:
        return False
    token = word.group(1).lstrip("\"'(“‘[")
    if token.lower() in _NO_BREAK_AFTER:
        return True
    return len(token) == 1 and token.isupper()  # an initial: "J. R. R. Tolkien"


def _continues_lowercase(line: str, end: int) -> bool:
    """True when the next word starts in lower case ("he left... and came back")."""
    nxt = re.match(r"\s+(\S)", line[end:])
    return bool(nxt) and nxt.group(1).islower()


def _sentences_of_line(line: str) -> list[str]:
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        end = m.end()
        punct_end = m.start() + len(m.group(0).rstrip("\"'”’)]"))
        if _is_abbreviation(line, punct_end) or _continues_lowercase(line, end):
            continue
        piece = line[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    tail = line[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` in order; each line break also ends a piece."""
    _check(text)
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            out.extend(_sentences_of_line(line))
    return out


def _cut(text: str, pattern: re.Pattern) -> list[str]:
    """Split after each match of `pattern` (the match stays with the left part)."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        piece = text[start : m.end()].strip()
        if piece:
            pieces.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def _pack(units: list[str], max_chars: int) -> list[str]:
    """Join consecutive units with a space while the result fits `max_chars`."""
    out: list[str] = []
    for unit in units:
        if out and len(out[-1]) + 1 + len(unit) <= max_chars:
            out[-1] = f"{out[-1]} {unit}"
        else:
            out.append(unit)
    return out


def _fit(unit: str, max_chars: int) -> list[str]:
    """Pieces of one sentence, each within `max_chars`: clauses, then words, then characters."""
    if len(unit) <= max_chars:
        return [unit]
    clauses = _cut(unit, _CLAUSE_END)
    if len(clauses) > 1:
        return _pack([p for c in clauses for p in _fit(c, max_chars)], max_chars)
    words = unit.split(" ")
    if len(words) > 1:
        return _pack([p for w in words for p in _fit(w, max_chars)], max_chars)
    return [unit[i : i + max_chars] for i in range(0, len(unit), max_chars)]


def split_text(text: str, max_chars: int = 300) -> list[str]:
    """Pieces of `text`, each at most `max_chars` characters, cut at sentence ends where possible.

    Short text comes back as one piece. Empty text is an InputError.
    """
    _check(text)
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
        raise InputError(f"max_chars must be a positive int, got {max_chars!r}")
    pieces: list[str] = []
    for paragraph in _paragraphs(text):
        units = [p for s in split_sentences(paragraph) for p in _fit(s, max_chars)]
        pieces.extend(_pack(units, max_chars))
    return pieces
