"""The podcast script: the YAML format, read into a validated `Script`.

    title: Morning Coffee                      # optional (default: the file name)
    speakers:                                  # name -> voice, in one of these forms
      alice: conversational_a                  #   a preset or a registered voice; id 0
      bob:                                     #   the long form
        id: 1                                  #   speaker id (default: 0, 1, ... in order)
        ref_audio: bob.wav                     #   a clip (path relative to this file) ...
        ref_text: "What the clip says."        #   ... and its transcript
    defaults:                                  # optional; every key is optional
      temperature: 0.9
      top_k: 50
      seed: 42                                 # the show seed; each line gets its own from it
      pause: 0.5                               # seconds of silence between lines
      max_audio_length_ms: 10000               # the longest a line may run
    lines:
      - alice: Hi there!                       # the short form
      - bob: Hey. So, what's the plan?
        pause: 1.2                             # this line's own pause (after it) or options
      - speaker: alice                         # the long form
        text: Coffee first.
        temperature: 0.7

Everything is checked before anything is generated, and every problem is reported at once with its
line: `ScriptError.errors` is a list of (line, message).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.option_checks import OPTIONS

from .yaml_nodes import (
    MappingNode,
    Node,
    ScalarNode,
    SequenceNode,
    YamlSyntaxError,
    compose,
    line_of,
    mapping_items,
    scalar_text,
    scalar_value,
)

__all__ = ["Line", "Script", "ScriptError", "Speaker", "load_script", "parse_script"]

DEFAULT_PAUSE_S = 0.5
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_K = 50

TOP_KEYS = ("title", "speakers", "defaults", "lines")
SPEAKER_KEYS = ("id", "voice", "ref_audio", "ref_text")
OPTION_KEYS = ("temperature", "top_k", "seed", "max_audio_length_ms")
DEFAULT_KEYS = ("pause", *OPTION_KEYS)
LINE_KEYS = ("speaker", "text", "pause", *OPTION_KEYS)


class ScriptError(InputError):
    """A script that cannot be rendered. `errors`: every problem found, as (line, message), by line.

    `line` is 1-based in the YAML file, or None for a problem with the file as a whole.
    """

    def __init__(self, source: str, errors: list[tuple[int | None, str]]):
        self.source = source
        self.errors = sorted(errors, key=lambda e: (e[0] is not None, e[0] or 0))
        super().__init__(self._describe())

    def _describe(self) -> str:
        count = len(self.errors)
        head = f"{self.source}: {count} problem{'s' if count != 1 else ''} (nothing was generated)"
        rows = [f"  line {line}: {message}" if line else f"  {message}" for line, message in self.errors]
        return "\n".join([head, *rows])


@dataclass(frozen=True)
class Speaker:
    name: str
    id: int
    voice: str | None = None  # a preset or registered voice name
    ref_audio: Path | None = None  # or a reference clip ...
    ref_text: str | None = None  # ... and its transcript
    yaml_line: int = 0
    voice_line: int = 0  # line of the voice / ref_audio key, for errors found at render time


@dataclass(frozen=True)
class Line:
    index: int  # 0-based position in the show
    speaker: str
    text: str
    pause: float  # seconds of silence after this line (0 after the last, unless it sets one)
    temperature: float
    top_k: int
    seed: int | None  # this line's own seed; None: derived from the show seed and the index
    max_audio_length_ms: float | None
    yaml_line: int = 0

    @property
    def number(self) -> int:
        """1-based position in the show."""
        return self.index + 1


@dataclass(frozen=True)
class Script:
    title: str
    speakers: tuple[Speaker, ...]
    lines: tuple[Line, ...]
    seed: int | None = None  # the show seed (defaults.seed)
    source: str = "<string>"

    def speaker(self, name: str) -> Speaker:
        return next(s for s in self.speakers if s.name == name)


def load_script(path: str | Path, *, check=None) -> Script:
    """Read and validate a YAML script; ScriptError lists every problem with its line.
    `check(script) -> [(line, message), ...]`: more problems to look for (see parse_script)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScriptError(str(path), [(None, "the script file does not exist")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScriptError(str(path), [(None, f"cannot read the script: {error}")]) from None
    return parse_script(text, source=str(path), base_dir=path.parent, default_title=path.stem,
                        check=check)


def parse_script(
    text: str,
    *,
    source: str = "<string>",
    base_dir: str | Path = ".",
    default_title: str = "Podcast",
    check=None,
) -> Script:
    """Validate YAML text as a script. Relative `ref_audio` paths are taken from `base_dir`.

    `check(script) -> [(line, message), ...]` looks for more problems (the voices exist, the lines
    fit: dialogue.podcast.preflight); it runs on what could be read even when the script has
    problems of its own, so every problem is reported at once."""
    problems = _Problems()
    try:
        root = compose(text)
    except YamlSyntaxError as error:
        raise ScriptError(source, [(error.line, error.message)]) from None
    if root is None:
        raise ScriptError(source, [(1, "the script is empty; it needs `speakers:` and `lines:`")])
    if not isinstance(root, MappingNode):
        raise ScriptError(source, [(line_of(root), "the script must be a mapping with `speakers:` and `lines:`")])

    fields = _fields(root, TOP_KEYS, problems, "the script")
    title = _title(fields.get("title"), default_title, problems)
    speakers = _speakers(fields.get("speakers"), root, Path(base_dir), problems)
    defaults = _options(fields.get("defaults"), DEFAULT_KEYS, "defaults", problems)
    lines = _lines(fields.get("lines"), root, speakers, defaults, problems)
    script = Script(
        title=title,
        speakers=tuple(speakers.values()),
        lines=tuple(lines),
        seed=defaults.get("seed"),
        source=source,
    )
    if check is not None:
        reported = set(problems.items)
        for line, message in check(script):
            if not any(l == line and "not found" in m for l, m in reported):  # said once
                problems.add(line, message)
    if problems:
        raise ScriptError(source, problems.items)
    return script


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[int | None, str]] = []

    def add(self, where: Node | int | None, message: str) -> None:
        line = line_of(where) if isinstance(where, Node) else where
        self.items.append((line, message))

    def __bool__(self) -> bool:
        return bool(self.items)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_name(key: Node, problems: _Problems) -> str | None:
    name = scalar_text(key)
    if name is None:
        problems.add(key, "a key must be a plain word")
    return name


def _fields(node: MappingNode, allowed, problems: _Problems, where: str) -> dict[str, Node]:
    """The mapping's values by key; unknown and repeated keys are problems."""
    fields: dict[str, Node] = {}
    for key, value in mapping_items(node):
        name = _key_name(key, problems)
        if name is None:
            continue
        if name not in allowed:
            problems.add(key, f"unknown key '{name}' in {where}{_did_you_mean(name, allowed)}; "
                              f"known keys: {', '.join(allowed)}")
        elif name in fields:
            problems.add(key, f"'{name}' is given twice in {where}")
        else:
            fields[name] = value
    return fields


def _title(node: Node | None, default: str, problems: _Problems) -> str:
    if node is None:
        return default
    title = scalar_text(node)
    if title is None or not title.strip():
        problems.add(node, "`title` must be some text")
        return default
    return title.strip()


# --- speakers ----------------------------------------------------------------------------------


def _speakers(node: Node | None, root: Node, base_dir: Path, problems: _Problems) -> dict[str, Speaker]:
    """Speakers by name, ids assigned; both the mapping form and the list form."""
    if node is None:
        problems.add(root, "the script has no `speakers:`; name each speaker and give a voice")
        return {}
    entries: list[tuple[str, Node, Node, Node | None]] = []  # (name, where, name node, spec)
    if isinstance(node, MappingNode):
        for key, value in mapping_items(node):
            name = _key_name(key, problems)
            if name is not None:
                entries.append((name, key, key, value))
    elif isinstance(node, SequenceNode):
        for item in node.value:
            if not isinstance(item, MappingNode):
                problems.add(item, "a speaker in a list needs `name:` (and `voice:` or `ref_audio:`)")
                continue
            pairs = mapping_items(item)
            names = [value for key, value in pairs if scalar_text(key) == "name"]
            name = scalar_text(names[0]) if names else None
            if name is None:
                problems.add(item, "this speaker has no `name:`")
                continue
            if len(names) > 1:
                problems.add(names[1], "'name' is given twice in a speaker")
            rest = [(key, value) for key, value in pairs if scalar_text(key) != "name"]
            spec = MappingNode(item.tag, rest, start_mark=item.start_mark, end_mark=item.end_mark)
            entries.append((name, item, names[0], spec))
    else:
        problems.add(node, "`speakers:` must map each speaker's name to a voice")
        return {}
    if not entries:
        problems.add(node, "`speakers:` is empty; name at least one speaker")

    parsed = []
    for name, where, name_node, spec in entries:
        name = name.strip()
        if not name:
            problems.add(name_node, "a speaker's name must not be empty")
            continue
        if name in LINE_KEYS:
            problems.add(name_node, f"'{name}' cannot be a speaker's name: it is a line option")
            continue
        if any(p[0] == name for p in parsed):
            problems.add(name_node, f"speaker '{name}' is defined twice")
            continue
        parsed.append((name, where, _speaker_spec(name, spec, where, base_dir, problems)))
    return _assign_ids(parsed, problems)


def _speaker_spec(name: str, spec: Node | None, where: Node, base_dir: Path, problems: _Problems) -> dict:
    """{id?, voice?, ref_audio?, ref_text?, voice_line} for one speaker."""
    out: dict = {"voice_line": line_of(where)}
    if spec is None or (isinstance(spec, ScalarNode) and scalar_text(spec) is None):
        return out  # no voice: the model picks one on the first line and the context keeps it
    if isinstance(spec, ScalarNode):
        if not spec.value.strip():
            problems.add(spec, f"the voice of '{name}' is empty; give a voice name")
        else:
            out["voice"] = spec.value.strip()
        out["voice_line"] = line_of(spec)
        return out
    if not isinstance(spec, MappingNode):
        problems.add(spec, f"speaker '{name}' needs a voice name or `voice:` / `ref_audio:` + `ref_text:`")
        return out
    fields = _fields(spec, SPEAKER_KEYS, problems, f"speaker '{name}'")
    if "id" in fields:
        out["id"] = _checked(fields["id"], "id", problems, option="speaker")
        out["id_node"] = fields["id"]
    if "voice" in fields:
        voice = scalar_text(fields["voice"])
        if voice is None or not voice.strip():
            problems.add(fields["voice"], f"`voice:` of '{name}' must be a voice name")
        else:
            out["voice"] = voice.strip()
        out["voice_line"] = line_of(fields["voice"])
    has_audio, has_text = "ref_audio" in fields, "ref_text" in fields
    if "voice" in fields and (has_audio or has_text):
        problems.add(spec, f"speaker '{name}': give either `voice:` or `ref_audio:` + `ref_text:`, not both")
    if has_audio != has_text:
        given, missing = ("ref_audio", "ref_text") if has_audio else ("ref_text", "ref_audio")
        what = "the transcript of the clip" if missing == "ref_text" else "the clip it transcribes"
        problems.add(fields[given], f"speaker '{name}' has `{given}:` but no `{missing}:` ({what})")
    if has_audio:
        out["voice_line"] = line_of(fields["ref_audio"])
        audio = scalar_text(fields["ref_audio"])
        if audio is None or not audio.strip():
            problems.add(fields["ref_audio"], f"`ref_audio:` of '{name}' must be a path to an audio file")
        else:
            path = Path(audio.strip()).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not path.is_file():
                problems.add(fields["ref_audio"], f"voice file not found for '{name}': {path}")
            out["ref_audio"] = path
    if has_text:
        text = scalar_text(fields["ref_text"])
        if text is None or not text.strip():
            problems.add(fields["ref_text"], f"`ref_text:` of '{name}' is empty; write what the clip says")
        else:
            out["ref_text"] = " ".join(text.split())
    return out


def _assign_ids(parsed: list[tuple[str, Node, dict]], problems: _Problems) -> dict[str, Speaker]:
    """Explicit ids must be unique; the others get the smallest free ids, in order."""
    taken: dict[int, str] = {}
    for name, _, spec in parsed:
        speaker_id = spec.get("id")
        if speaker_id is None:
            continue
        if speaker_id in taken:
            problems.add(spec["id_node"], f"speakers '{taken[speaker_id]}' and '{name}' have the same id {speaker_id}")
        taken.setdefault(speaker_id, name)
    speakers: dict[str, Speaker] = {}
    next_free = 0
    for name, where, spec in parsed:
        speaker_id = spec.get("id")
        if speaker_id is None:
            while next_free in taken:
                next_free += 1
            speaker_id = next_free
            taken[speaker_id] = name
        speakers[name] = Speaker(
            name=name,
            id=speaker_id,
            voice=spec.get("voice"),
            ref_audio=spec.get("ref_audio"),
            ref_text=spec.get("ref_text"),
            yaml_line=line_of(where),
            voice_line=spec["voice_line"],
        )
    return speakers


# --- options -------------------------------------------------------------------------------------


def _shown(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    text = scalar_text(node)
    return "nothing" if text is None else repr(text)


def _checked(node: Node, key: str, problems: _Problems, option: str | None = None):
    """The value of `node` checked as the option `option` (default `key`) exactly as the Python
    API and the command line check it (engine.option_checks); None after reporting a problem."""
    spec = OPTIONS[option or key]
    value = scalar_value(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.add(node, f"`{key}` must be {spec.describe()}, not {_shown(node)}")
        return None
    try:
        return spec.check(value, f"`{key}`")
    except InputError as error:
        problems.add(node, str(error))
        return None


_OPTION_KEYS_CHECKED = ("pause", "temperature", "top_k", "seed", "max_audio_length_ms")


def _option_values(fields: dict[str, Node], problems: _Problems) -> dict:
    values = {}
    for key, node in fields.items():
        if key in _OPTION_KEYS_CHECKED:
            value = _checked(node, key, problems)
            if value is not None:
                values[key] = value
    return values


def _options(node: Node | None, allowed, where: str, problems: _Problems) -> dict:
    if node is None or (isinstance(node, ScalarNode) and scalar_text(node) is None):
        return {}
    if not isinstance(node, MappingNode):
        problems.add(node, f"`{where}:` must be a mapping of options ({', '.join(allowed)})")
        return {}
    return _option_values(_fields(node, allowed, problems, f"`{where}`"), problems)


# --- lines ---------------------------------------------------------------------------------------


def _lines(node: Node | None, root: Node, speakers: dict[str, Speaker], defaults: dict, problems: _Problems) -> list[Line]:
    if node is None:
        problems.add(root, "the script has no `lines:`; add lines like `- alice: Hi there`")
        return []
    if not isinstance(node, SequenceNode):
        problems.add(node, "`lines:` must be a list, one `- speaker: text` per line")
        return []
    if not node.value:
        problems.add(node, "`lines:` is empty; add lines like `- alice: Hi there`")
    parsed = [_line(item, speakers, problems) for item in node.value]
    lines = []
    for index, (item, fields) in enumerate(zip(node.value, parsed)):
        if fields is None:
            continue
        is_last = index == len(parsed) - 1
        pause = fields.get("pause", 0.0 if is_last else defaults.get("pause", DEFAULT_PAUSE_S))
        lines.append(
            Line(
                index=index,
                speaker=fields["speaker"],
                text=fields["text"],
                pause=pause,
                temperature=fields.get("temperature", defaults.get("temperature", DEFAULT_TEMPERATURE)),
                top_k=fields.get("top_k", defaults.get("top_k", DEFAULT_TOP_K)),
                seed=fields.get("seed"),
                max_audio_length_ms=fields.get("max_audio_length_ms", defaults.get("max_audio_length_ms")),
                yaml_line=line_of(item),
            )
        )
    return lines


def _line(item: Node, speakers: dict[str, Speaker], problems: _Problems) -> dict | None:
    """{speaker, text, options...} of one line, or None after reporting its problems."""
    if not isinstance(item, MappingNode):
        problems.add(item, f"a line must say who speaks: `- alice: Hi there`, not {_shown(item)}")
        return None
    before = len(problems.items)
    fields: dict[str, Node] = {}
    speaker_key: Node | None = None
    text_node: Node | None = None
    others: list[tuple[str, Node]] = []
    for key, value in mapping_items(item):
        name = _key_name(key, problems)
        if name is None:
            continue
        if name in fields:
            problems.add(key, f"'{name}' is given twice in this line")
        elif name in LINE_KEYS:
            fields[name] = value
        else:
            others.append((name, key))
            fields.setdefault(name, value)

    if "speaker" in fields:
        speaker_name = scalar_text(fields["speaker"])
        speaker_key, text_node = fields["speaker"], fields.get("text")
        for name, key in others:
            problems.add(key, f"unknown key '{name}' in a line{_did_you_mean(name, LINE_KEYS)}")
        if speaker_name is None:
            problems.add(speaker_key, "`speaker:` must name a speaker")
    else:
        known = [(name, key) for name, key in others if name in speakers]
        if len(known) > 1:
            problems.add(item, "one line has one speaker; found " + " and ".join(n for n, _ in known)
                         + ": put each on its own `- name: text` line")
            return None
        elif len(known) == 1:
            speaker_name, speaker_key = known[0]
            text_node = fields[speaker_name]
            for name, key in others:
                if name != speaker_name:
                    problems.add(key, f"unknown key '{name}' in a line"
                                      f"{_did_you_mean(name, [*LINE_KEYS, *speakers])}")
        elif len(others) == 1:
            speaker_name, speaker_key = others[0]
            text_node = fields[speaker_name]
        else:
            for name, key in others:
                problems.add(key, f"unknown speaker or key '{name}'{_did_you_mean(name, [*LINE_KEYS, *speakers])}")
            if not others:
                problems.add(item, "this line has no speaker: write `- alice: Hi there`")
            return None
        if isinstance(text_node, MappingNode) and "text" not in fields:
            # `- alice: {text: "Hi", pause: 1}`: the line's fields nested under its speaker
            nested = _fields(text_node, [k for k in LINE_KEYS if k != "speaker"], problems, "a line")
            text_node = nested.get("text", text_node)
            if "text" not in nested:
                problems.add(fields[speaker_name], "this line has no `text:`")
                text_node = None
            for key, value in nested.items():
                if key != "text" and key in fields:
                    problems.add(value, f"'{key}' is given twice in this line")
                fields.setdefault(key, value)
        elif "text" in fields:
            problems.add(fields["text"], f"give the text once: `- {speaker_name}: text` or `text:`")

    if speaker_name is not None and speaker_name not in speakers:
        problems.add(speaker_key, f"unknown speaker '{speaker_name}'{_did_you_mean(speaker_name, speakers)}; "
                                  f"speakers: {', '.join(speakers) or 'none'}")
    text = _line_text(text_node, speaker_key, speaker_name, problems)
    options = _option_values({k: v for k, v in fields.items() if k in DEFAULT_KEYS}, problems)
    if len(problems.items) > before or speaker_name is None or text is None:
        return None
    return {"speaker": speaker_name, "text": text, **options}


def _line_text(node: Node | None, speaker_key: Node | None, speaker: str | None, problems: _Problems) -> str | None:
    if node is None:
        if speaker_key is not None:
            problems.add(speaker_key, f"the line of '{speaker}' has no text")
        return None
    if not isinstance(node, ScalarNode):
        problems.add(node, f"the text of a line must be text, not {_shown(node)}")
        return None
    text = scalar_text(node)
    text = " ".join(text.split()) if text is not None else ""
    if not text:
        problems.add(node, f"empty text for '{speaker}'; write what they say, or remove the line")
        return None
    return text
