"""What users touch: conversations, podcast scripts, the `csm` command and the server.

    from dialogue import Conversation, Segment, load_model

Names are imported on first use, so `import dialogue` (and `csm --help`) stays fast.
"""

import importlib

_EXPORTS = {
    "Conversation": "dialogue.conversation",
    "Turn": "dialogue.conversation",
    "Segment": "engine.segment",
    "load_model": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dialogue' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
