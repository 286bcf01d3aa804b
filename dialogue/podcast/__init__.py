"""Podcasts: a YAML script of lines by two (or more) speakers, rendered into one WAV.

    from dialogue.podcast import load_script, render
    script = load_script("show.yaml")            # ScriptError lists every problem with its line
    result = render(script, model, db="show.db", output="show.wav")

Rendering goes line by line through a `Conversation` stored in SQLite, so each line hears the show
so far, and a stopped render picks up where it left off.
"""

from .mix import Chapter, chapters_path_for
from .render import RenderResult, line_seed, render
from .script import Line, Script, ScriptError, Speaker, load_script, parse_script

__all__ = [
    "Chapter",
    "Line",
    "RenderResult",
    "Script",
    "ScriptError",
    "Speaker",
    "chapters_path_for",
    "line_seed",
    "load_script",
    "parse_script",
    "render",
]
