"""How every command shows a warning: `warning: <message>` on stderr, one line, each message once.

Python's default shows the file, the line number and the source line of wherever the warning was
raised; a user of `csm` wants the message. The same message (the watermark notice, a clip that is
too short) is shown once per run, however often it is raised.
"""

from __future__ import annotations

import sys
import warnings

_shown: set[str] = set()


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    if text in _shown:
        return
    _shown.add(text)
    stream = file or sys.stderr
    try:
        stream.write(f"warning: {text}\n")
    except (OSError, ValueError):  # a closed stderr: nothing to tell
        pass


def install() -> None:
    """Show every warning in the one-line form, once per message (called by the `csm` group)."""
    _shown.clear()  # once per run (a process may run several commands: tests, notebooks)
    warnings.showwarning = _show
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    warnings.simplefilter("always")  # _show dedupes by message, not by the code location
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
