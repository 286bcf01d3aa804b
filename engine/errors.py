"""The package's own exception types.

Every error a user can cause (bad text, bad audio, unknown voice, a context that cannot fit,
missing or mismatched weights) is raised as one of these, with a message that says what to do.
"""


class CSMError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(CSMError, ValueError):
    """The caller passed something we cannot use (empty text, bad options, ...)."""


class AudioError(InputError):
    """An audio file or array could not be read or is unusable."""


class VoiceError(InputError):
    """An unknown voice preset, or a voice prompt that is incomplete."""


class ContextTooLongError(InputError):
    """The prompt (context plus the frames to generate) does not fit the backbone's positions."""


class WeightsError(CSMError):
    """Model files are missing, unreadable, or do not match the expected layout and shapes."""


def short_listing(names, limit: int = 8) -> str:
    """Names for an error message: sorted, the first `limit`, and how many more."""
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")

