"""Text tokenizer (BOS/EOS, the Llama-3 file format), normalisation and splitting."""

import json
import random
import re

import pytest
from tokenizers import Tokenizer

from engine.errors import InputError, WeightsError
from engine.text import TextTokenizer, build_tiny_tokenizer
from engine.text.tokenizer import BOS_TOKEN, EOS_TOKEN


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=512)


@pytest.fixture(scope="module")
def tok(tok_path):
    return TextTokenizer.from_file(tok_path)


# ---------------------------------------------------------------------------- tokenizer

def test_encode_segment_has_bos_and_eos(tok):
    ids = tok.encode_segment(0, "Hello from Sesame.")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == tok.encode("[0]Hello from Sesame.")
    assert tok.decode(ids) == f"{BOS_TOKEN}[0]Hello from Sesame.{EOS_TOKEN}"
    assert tok.encode_segment(1, "Hi")[1:-1] == tok.encode("[1]Hi")


def test_file_post_processor_is_not_used(tok, tok_path):
    # Llama-3's own post-processor adds BOS only; CSM wants BOS ... EOS
    raw = Tokenizer.from_file(str(tok_path))
    file_ids = raw.encode("[0]Hello from Sesame.").ids
    assert file_ids == tok.encode_segment(0, "Hello from Sesame.")[:-1]


def test_tiny_tokenizer_has_llama3_structure(tok_path):
    spec = json.loads(tok_path.read_text())
    assert spec["model"]["type"] == "BPE" and spec["model"]["ignore_merges"] is True
    pre = spec["pre_tokenizer"]
    assert pre["type"] == "Sequence"
    assert [p["type"] for p in pre["pretokenizers"]] == ["Split", "ByteLevel"]
    assert r"\p{N}{1,3}" in pre["pretokenizers"][0]["pattern"]["Regex"]
    assert pre["pretokenizers"][1]["use_regex"] is False
    post = spec["post_processor"]
    assert [p["type"] for p in post["processors"]] == ["ByteLevel", "TemplateProcessing"]
    assert spec["decoder"]["type"] == "ByteLevel"
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert {BOS_TOKEN, EOS_TOKEN, "<|eot_id|>", "<|start_header_id|>"} <= set(added)
    assert all(t["special"] for t in spec["added_tokens"])
    # specials come right after the BPE vocabulary, and ids fill 0..vocab_size-1 exactly
    base = len(spec["model"]["vocab"])
    assert added[BOS_TOKEN] == base and added[EOS_TOKEN] == base + 1
    assert sorted(list(spec["model"]["vocab"].values()) + list(added.values())) == list(range(512))


def test_tiny_tokenizer_is_deterministic(tmp_path, tok_path):
    other = build_tiny_tokenizer(tmp_path / "again.json", vocab_size=512)
    assert other.read_bytes() == tok_path.read_bytes()


@pytest.mark.parametrize("size", [300, 1024])
def test_tiny_tokenizer_sizes(tmp_path, size):
    t = TextTokenizer.from_file(build_tiny_tokenizer(tmp_path, vocab_size=size))
    assert t.vocab_size == size
    assert max(t.bos_id, t.eos_id) < size
    ids = t.encode_segment(2, "Any text at all: 日本語, émigré, 12345!")
    assert max(ids) < size
    assert t.decode(ids[1:-1]) == "[2]Any text at all: 日本語, émigré, 12345!"


def test_tokenizer_from_folder(tok_path):
    assert TextTokenizer.from_file(tok_path.parent).bos_id == TextTokenizer.from_file(tok_path).bos_id


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(WeightsError, match="tokenizer"):
        TextTokenizer.from_file(tmp_path / "nope.json")


def test_tokenizer_without_bos_is_a_clear_error(tmp_path, tok_path):
    spec = json.loads(tok_path.read_text())
    for entry in spec["added_tokens"]:
        if entry["content"] == BOS_TOKEN:
            entry["content"] = "<s>"
    spec["post_processor"] = None
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(WeightsError, match="begin_of_text"):
        TextTokenizer.from_file(path)


def test_bad_speaker(tok):
    with pytest.raises(InputError):
        tok.encode_segment(-1, "hi")
    with pytest.raises(InputError):
        tok.encode_segment(True, "hi")


# ---------------------------------------------------------------------------- normalisation

from engine.text import normalize_text, split_sentences, split_text  # noqa: E402


@pytest.mark.parametrize(
    "written, spoken",
    [
        ("It costs $3.50.", "It costs three dollars and fifty cents."),
        ("$1", "one dollar"),
        ("Only $0.99!", "Only ninety-nine cents!"),
        ("A $1,000,000 prize", "A one million dollars prize"),
        ("$2.5 million", "two point five million dollars"),
        ("£1.01 and €20", "one pound and one penny and twenty euros"),
        ("50% off", "fifty percent off"),
        ("a 3.5% rise", "a three point five percent rise"),
        ("Meet at 3:30 pm today", "Meet at three thirty PM today"),
        ("at 3:30 p.m. Then we left.", "at three thirty PM. Then we left."),
        ("at 7 a.m. on Monday", "at seven AM on Monday"),
        ("at 10:05", "at ten oh five"),
        ("at 9:00", "at nine o'clock"),
        ("15:00 sharp", "fifteen hundred sharp"),
        ("the 1st, 22nd and 103rd", "the first, twenty-second and one hundred and third"),
        ("in 1999 and 2024", "in nineteen ninety-nine and twenty twenty-four"),
        ("the 1990s and the 80s", "the nineteen nineties and the eighties"),
        ("1,234 people", "one thousand two hundred and thirty-four people"),
        ("pi is 3.14", "pi is three point one four"),
        ("it was -5 outside", "it was minus five outside"),
        ("pages 10-20", "pages ten to twenty"),
        ("Call 555-1234.", "Call five five five, one two three four."),
        ("20°C", "twenty degrees Celsius"),
        ("1/2 cup", "one half cup"),
        ("on 2024-03-15 we", "on March fifteenth, twenty twenty-four we"),
        ("Mr. Smith and Dr. Jones", "Mister Smith and Doctor Jones"),
        ("Mrs. Brown met Prof. Plum", "Missus Brown met Professor Plum"),
        ("St. Louis and 5 Main St.", "Saint Louis and five Main Street."),
        ("apples, pears, etc. are fruit", "apples, pears, et cetera are fruit"),
        ("apples, pears, etc. Then more.", "apples, pears, et cetera. Then more."),
        ("cats vs. dogs", "cats versus dogs"),
        ("R&D and Tom & Jerry", "R and D and Tom and Jerry"),
        ("2 + 2 = 4", "two plus two equals four"),
        ("#1 hit", "number one hit"),
        ("agent 007", "agent zero zero seven"),
        ("AT&amp;T", "AT and T"),
    ],
)
def test_normalize_examples(written, spoken):
    assert normalize_text(written) == spoken


@pytest.mark.parametrize(
    "text",
    [
        "Hello there, how are you?",
        "I'm great! So happy to be speaking with you today.",
        "Version v1.2.3 runs on 192.168.0.1, not on mp3 or 4G.",
        "Email me at someone@example.com — or don't.",
        "Dr. Who? The St. is closed.",
    ],
)
def test_normalize_never_eats_words(text):
    out = normalize_text(text)
    for word in re.findall(r"[A-Za-z]{2,}", text):
        if word in {"Dr", "St"} and "Doctor" in out:
            continue
        assert word in out, (word, out)


@pytest.mark.parametrize(
    "text, kept",
    [("ran 1:30:15 today", "fifteen"), ("v1.2.3", "v1.2.3"), ("192.168.0.1", "192.168.0.1"),
     ("at 24:00", "twenty-four"), ("12/25/2024", "twenty-five")],
)
def test_normalize_never_drops_numbers(text, kept):
    assert kept in normalize_text(text)


def test_plain_text_is_unchanged():
    text = "The quick brown fox jumps over the lazy dog."
    assert normalize_text(text) == text


@pytest.mark.parametrize("bad", ["", "   ", "\n\t "])
def test_empty_text_is_an_input_error(bad):
    with pytest.raises(InputError, match="empty"):
        normalize_text(bad)
    with pytest.raises(InputError, match="empty"):
        split_text(bad, 100)


def test_non_string_text():
    with pytest.raises(InputError):
        normalize_text(None)
    with pytest.raises(InputError):
        split_text(42, 100)


# ---------------------------------------------------------------------------- splitting

def _chars(s):
    return "".join(s.split())


def test_sentences():
    text = 'Mr. Smith went to Washington. He said: "Hello!" Then he left... and came back? Yes.'
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.",
        'He said: "Hello!"',
        "Then he left... and came back?",
        "Yes.",
    ]
    assert split_sentences("One line\nanother line") == ["One line", "another line"]


def test_short_text_is_one_piece():
    assert split_text("Hello. How are you?", 300) == ["Hello. How are you?"]


def test_split_prefers_sentence_ends():
    text = "First sentence here. Second one is here. Third goes last."
    assert split_text(text, 45) == ["First sentence here. Second one is here.", "Third goes last."]


def test_split_uses_clauses_then_words():
    text = "This is a long sentence, with several clauses; it keeps going and going and going."
    pieces = split_text(text, 30)
    assert pieces[0] == "This is a long sentence,"
    assert all(len(p) <= 30 for p in pieces)
    assert _chars(" ".join(pieces)) == _chars(text)


def test_paragraphs_start_new_pieces():
    assert split_text("One.\n\nTwo.", 300) == ["One.", "Two."]


def test_giant_word_is_cut_not_dropped():
    word = "x" * 95
    pieces = split_text(f"a {word} b", 20)
    assert all(len(p) <= 20 for p in pieces)
    assert _chars(" ".join(pieces)) == _chars(f"a {word} b")


def test_split_never_loses_text():
    rng = random.Random(0)
    vocab = ["Hello", "world", "Mr.", "Dr.", "it's", "3.50", "a", "b,", "c;", "d:", "e.", "f!",
             "g?", "\n", "\n\n", "—", "...", '"quoted."', "(aside)", "x" * 40, "J.", "etc."]
    for trial in range(200):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 80)))
        if not text.strip():
            continue
        budget = rng.randint(1, 120)
        pieces = split_text(text, budget)
        assert all(0 < len(p) <= budget for p in pieces), (text, budget, pieces)
        assert _chars(" ".join(pieces)) == _chars(text), (text, budget)


def test_bad_budget():
    with pytest.raises(InputError):
        split_text("Hello.", 0)
