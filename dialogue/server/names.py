"""Names that end up in file names and URLs (voices, sessions): a safe alphabet, nothing else.

Letters, digits, '_' and '-', starting with a letter or digit, at most 64 characters. No dots,
slashes, spaces or control characters, so a name can never climb out of a folder ("../x"),
hide a file (".x"), or name a device.
"""

from __future__ import annotations

import re

from .errors import APIError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RULE = ("letters, digits, '_' and '-' only, starting with a letter or digit, "
             "at most 64 characters")


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: str, what: str, param: str) -> str:
    """`name` if it is safe, else a 400 saying what a name may contain."""
    if not is_safe_name(name):
        raise APIError(400, f"invalid {what} name {name!r}: use {NAME_RULE}", param=param,
                       code="invalid_name")
    return name
