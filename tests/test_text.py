"""Text tokenizer (BOS/EOS, the Llama-3 file format), normalisation and splitting."""

import json

import pytest
from tokenizers import Tokenizer

from engine.errors import InputError, WeightsError
from engine.text import BOS_TOKEN, EOS_TOKEN, TextTokenizer, build_tiny_tokenizer


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
