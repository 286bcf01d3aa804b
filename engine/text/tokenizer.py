"""The text side of a prompt: the Llama-3 tokenizer CSM uses, and a tiny one in the same format.

CSM tokenizes each segment as `"[{speaker}]{text}"` with BOS before and EOS after. Llama-3's own
`tokenizer.json` only adds BOS (its post-processor is `<|begin_of_text|> $A`); Sesame's reference
replaces the post-processor to add both. We do the same thing explicitly: encode without the
file's post-processor, then put the BOS / EOS ids (found by their token names) around the ids.

As in the reference, special-token strings typed inside the text (e.g. "<|end_of_text|>") are
matched as special tokens by the `tokenizers` library.

`normalize_text` (spoken forms) and `split_text` (long text into pieces) live beside this file, in
normalize.py and split.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.errors import InputError, WeightsError
from engine.option_checks import check_option

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"

# Llama-3's pre-tokenizer split pattern (contractions, letters, 1-3 digit groups, punctuation runs,
# newlines, spaces), followed by byte-level mapping without its own regex.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The named special tokens Llama-3.2 puts right after its BPE vocabulary (ids 128000..128010);
# the rest of its 256 special ids are <|reserved_special_token_N|>.
LLAMA3_NAMED_SPECIALS = [
    BOS_TOKEN,
    EOS_TOKEN,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
_FIRST_FREE_RESERVED = 3  # reserved_special_token_0..2 are already named above

class TextTokenizer:
    """Llama-3 tokenizer for CSM prompts: `encode_segment(speaker, text)` -> BOS ids EOS."""

    def __init__(self, tokenizer: Tokenizer, source: str = "<memory>"):
        self._tok = tokenizer
        self.source = source
        self.bos_id = self._special_id(BOS_TOKEN)
        self.eos_id = self._special_id(EOS_TOKEN)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Load a `tokenizer.json` (or a folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise WeightsError(
                f"No tokenizer file at {path}. CSM needs the Llama-3 `tokenizer.json` "
                "(the model repo usually ships it; unsloth/Llama-3.2-1B has an ungated copy)."
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise WeightsError(f"Could not read the tokenizer file {path}: {exc}") from exc
        return cls(tokenizer, source=str(path))

    def _special_id(self, name: str) -> int:
        token_id = self._tok.token_to_id(name)
        if token_id is None:
            raise WeightsError(
                f"The tokenizer {self.source} has no {name} token; CSM needs a Llama-3 "
                f"tokenizer with {BOS_TOKEN} and {EOS_TOKEN} (e.g. unsloth/Llama-3.2-1B)."
            )
        return int(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the largest id + 1 for Llama-style files)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Plain token ids of `text` — no BOS/EOS, no post-processing."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_segment(self, speaker: int, text: str) -> list[int]:
        """Ids of one CSM text segment: BOS + tokens("[speaker]text") + EOS."""
        speaker = check_option("speaker", speaker)
        return [self.bos_id, *self.encode(f"[{speaker}]{text}"), self.eos_id]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (special tokens kept unless asked otherwise)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"TextTokenizer({self.source!r}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------------
# A tiny tokenizer in Llama-3's format, for tests and the offline `tiny-random` model.
# --------------------------------------------------------------------------------------------

_TINY_CORPUS = """\
Hello from Sesame. Hey, how are you doing? Pretty good, pretty good. How about you?
I'm great! So happy to be speaking with you today. Me too! This is some cool stuff, isn't it?
The quick brown fox jumps over the lazy dog, and then it runs back into the forest.
We talked for hours about music, books, travel and the weather; nobody noticed the time.
She said she'd call at three thirty, but the phone didn't ring until a quarter past five.
They're going to the market tomorrow morning to buy apples, bread, cheese and coffee.
It was the first time I'd heard that song, and I've loved it ever since.
Can you believe it costs twenty dollars and fifty cents? That's one hundred percent too much.
Doctor Smith and Mister Jones met on the second of March in nineteen ninety nine.
Well, I think we should start again from the beginning, just to be sure we understand.
Speech sounds natural when the rhythm, the pauses and the melody of the voice fit the words.
You know, like, it's really hard to say what you mean when everyone is talking at once.
Numbers like 1, 2, 3, 42, 100, 2024 and 3.14 show up in text all the time.
Good morning! Good evening! Good night, and see you later, my friend.
What would you like to talk about? Anything at all: the news, your day, or a story.
[0] [1] [2] [3] <tag> (parentheses) "quotes" 'single' - dash -- double; semi: colon...
"""


def _tiny_corpus() -> list[str]:
    lines = [line for line in _TINY_CORPUS.splitlines() if line.strip()]
    # lower- and upper-cased copies give the trainer more pairs to merge, deterministically
    return lines + [line.lower() for line in lines] + [line.upper() for line in lines]


def _llama3_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                pattern=_regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def _regex(pattern: str):
    return Regex(pattern)


def _special_names(count: int) -> list[str]:
    names = list(LLAMA3_NAMED_SPECIALS[:count])
    n = _FIRST_FREE_RESERVED
    while len(names) < count:
        names.append(f"<|reserved_special_token_{n}|>")
        n += 1
    return names


def build_tiny_tokenizer(path: str | os.PathLike, vocab_size: int = 512, num_special: int = 16) -> Path:
    """Write a small byte-level BPE `tokenizer.json` in Llama-3's format and return its path.

    Structure as in Llama-3.2's file: the Llama-3 split regex + ByteLevel pre-tokenizer, a BPE
    model with `ignore_merges`, the special tokens (<|begin_of_text|>, <|end_of_text|>, ...,
    reserved ones) as added tokens right after the BPE vocabulary, a post-processor
    Sequence[ByteLevel, TemplateProcessing("<|begin_of_text|> $A")] that adds BOS only (as
    Llama-3's does), and a ByteLevel decoder. Ids run 0..vocab_size-1 exactly (the BPE part is
    trained on a small built-in English text; reserved tokens fill any gap), so a model with
    `text_vocab_size >= vocab_size` covers every id. Deterministic: same arguments, same bytes.

    `path` may be a file name or a folder (then `tokenizer.json` inside it).
    """
    if num_special < 2:
        raise InputError("num_special must be at least 2 (BOS and EOS)")
    min_size = 256 + num_special + 16
    if vocab_size < min_size:
        raise InputError(f"vocab_size must be at least {min_size} (256 bytes + specials + merges)")
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / "tokenizer.json"

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _llama3_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - num_special,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    spec = json.loads(tok.to_str())

    base = len(spec["model"]["vocab"])
    names = _special_names(vocab_size - base)  # fill every id up to vocab_size
    spec["added_tokens"] = [
        {
            "id": base + i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, name in enumerate(names)
    ]
    bos_id = base + names.index(BOS_TOKEN)
    spec["normalizer"] = None
    spec["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [
                    {"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": BOS_TOKEN, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {
                    BOS_TOKEN: {"id": BOS_TOKEN, "ids": [bos_id], "tokens": [BOS_TOKEN]}
                },
            },
        ],
    }
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    spec["model"]["ignore_merges"] = True

    text = json.dumps(spec, ensure_ascii=False, indent=2)
    loaded = Tokenizer.from_str(text)  # the file must load before we write it
    if loaded.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise RuntimeError("tiny tokenizer ended up with the wrong vocabulary size")  # pragma: no cover
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
