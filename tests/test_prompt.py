"""Prompt rows and masks: exact layouts, the prefix property, voice matching, errors."""

import numpy as np
import pytest

from engine.errors import InputError
from engine.generator import common_prefix_length
from engine.prompt import (
    audio_rows,
    build_prompt,
    build_voice_match_prompt,
    count_rows,
    segment_rows,
    text_rows,
    voice_match_text,
)
from engine.segment import Segment
from engine.text import TextTokenizer, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return TextTokenizer.from_file(build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), 512))


def codes_of(frames, seed=0):
    return np.random.default_rng(seed).integers(0, 2048, size=(frames, 32)).astype(np.int32)


def test_text_rows_exact():
    tokens, mask = text_rows([7, 8, 9])
    expected = np.zeros((3, 33), np.int32)
    expected[:, 32] = [7, 8, 9]
    expected_mask = np.zeros((3, 33), bool)
    expected_mask[:, 32] = True
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(mask, expected_mask)


def test_audio_rows_exact_with_and_without_eos():
    codes = np.arange(64, dtype=np.int64).reshape(2, 32)
    tokens, mask = audio_rows(codes)
    expected = np.zeros((3, 33), np.int32)
    expected[:2, :32] = codes
    expected_mask = np.zeros((3, 33), bool)
    expected_mask[:, :32] = True  # EOS row is all-zero codes, masked on
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(mask, expected_mask)
    tokens2, mask2 = audio_rows(codes, eos=False)
    np.testing.assert_array_equal(tokens2, expected[:2])
    np.testing.assert_array_equal(mask2, expected_mask[:2])


def test_segment_rows_known_segment(tok):
    codes = codes_of(3)
    seg = Segment(1, "Hi there.", codes=codes)
    ids = tok.encode_segment(1, "Hi there.")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    tokens, mask = segment_rows(seg, tok)
    n = len(ids)
    assert tokens.shape == mask.shape == (n + 3 + 1, 33)
    expected = np.zeros((n + 4, 33), np.int32)
    expected[:n, 32] = ids
    expected[n : n + 3, :32] = codes
    expected_mask = np.zeros((n + 4, 33), bool)
    expected_mask[:n, 32] = True
    expected_mask[n:, :32] = True
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(mask, expected_mask)
    assert count_rows(seg, tok) == n + 4


def test_build_prompt_layout(tok):
    a = Segment(0, "Hello.", codes=codes_of(2, 1))
    b = Segment(1, "Hey!", codes=codes_of(4, 2))
    tokens, mask = build_prompt([a, b], 0, "How are you?", tok)
    ra, rb = segment_rows(a, tok), segment_rows(b, tok)
    new = text_rows(tok.encode_segment(0, "How are you?"))
    np.testing.assert_array_equal(tokens, np.concatenate([ra[0], rb[0], new[0]]))
    np.testing.assert_array_equal(mask, np.concatenate([ra[1], rb[1], new[1]]))
    # the same with a text-only segment for the new line
    t2, m2 = build_prompt([a, b], Segment(0, "How are you?"), tok)
    np.testing.assert_array_equal(t2, tokens)
    np.testing.assert_array_equal(m2, mask)


def test_prompt_without_context_is_just_text(tok):
    tokens, mask = build_prompt([], 3, "Hello from Sesame.", tok)
    ids = tok.encode_segment(3, "Hello from Sesame.")
    np.testing.assert_array_equal(tokens[:, 32], ids)
    assert not mask[:, :32].any() and mask[:, 32].all()


def test_growing_conversation_prompts_are_prefixes(tok):
    turns = [Segment(i % 2, f"Turn number {i}.", codes=codes_of(2 + i, i)) for i in range(5)]
    previous = None
    for n in range(len(turns) + 1):
        tokens, mask = build_prompt(turns[:n], n % 2, "Next line.", tok)
        context_rows = sum(count_rows(s, tok) for s in turns[:n])
        assert tokens.shape[0] == context_rows + len(tok.encode_segment(n % 2, "Next line."))
        if previous is not None:
            # the previous prompt minus its new-line text rows is an exact prefix of this one
            prev_tokens, prev_mask, prev_ctx = previous
            np.testing.assert_array_equal(tokens[:prev_ctx], prev_tokens[:prev_ctx])
            np.testing.assert_array_equal(mask[:prev_ctx], prev_mask[:prev_ctx])
        previous = (tokens, mask, context_rows)


def test_generated_frames_reenter_as_cached_rows(tok):
    """What the generator puts in the cache (prompt + generated frames as audio rows) is a prefix
    of the next prompt once the turn is stored with those codes."""
    ctx = [Segment(0, "Hello.", codes=codes_of(3, 5))]
    prompt = build_prompt(ctx, 1, "Hi, nice to meet you.", tok)
    generated = codes_of(6, 9)
    cached = (
        np.concatenate([prompt[0], audio_rows(generated, eos=False)[0]]),
        np.concatenate([prompt[1], audio_rows(generated, eos=False)[1]]),
    )
    turn = Segment(1, "Hi, nice to meet you.", codes=generated)
    nxt = build_prompt(ctx + [turn], 0, "Likewise.", tok)
    assert common_prefix_length(*cached, *nxt) == cached[0].shape[0]


def test_voice_match_layout(tok):
    ctx = [Segment(1, "Earlier turn.", codes=codes_of(2, 3))]
    ref_codes = codes_of(5, 4)
    ref = Segment(0, "like a super Mario level", codes=ref_codes)
    tokens, mask = build_voice_match_prompt(ctx, ref, "Hello from Sesame.", tok)
    ctx_rows = segment_rows(ctx[0], tok)
    ids = tok.encode_segment(0, "like a super Mario level Hello from Sesame.")
    n_ctx, n_txt = ctx_rows[0].shape[0], len(ids)
    assert tokens.shape == (n_ctx + n_txt + 5, 33)
    np.testing.assert_array_equal(tokens[:n_ctx], ctx_rows[0])  # context works normally
    np.testing.assert_array_equal(mask[:n_ctx], ctx_rows[1])
    np.testing.assert_array_equal(tokens[n_ctx : n_ctx + n_txt, 32], ids)  # one text segment
    assert mask[n_ctx : n_ctx + n_txt, 32].all() and not mask[n_ctx : n_ctx + n_txt, :32].any()
    np.testing.assert_array_equal(tokens[n_ctx + n_txt :, :32], ref_codes)  # reference audio...
    assert mask[n_ctx + n_txt :, :32].all() and not mask[n_ctx + n_txt :, 32].any()
    assert tokens[-1, :32].any()  # ...with no all-zero EOS row after it
    # speaker override, and the joined text
    t2, _ = build_voice_match_prompt([], ref, "Hi.", tok, speaker=2)
    np.testing.assert_array_equal(t2[: len(tok.encode_segment(2, "like a super Mario level Hi.")), 32],
                                  tok.encode_segment(2, "like a super Mario level Hi."))
    assert voice_match_text("  ends here ", " next ") == "ends here next"


def test_voice_match_errors(tok):
    with pytest.raises(InputError, match="transcript"):
        build_voice_match_prompt([], Segment(0, "  ", codes=codes_of(2)), "Hi.", tok)
    with pytest.raises(InputError, match="Encode it first"):
        build_voice_match_prompt([], Segment(0, "ref", audio=np.zeros(4800, np.float32)), "Hi.", tok)
    with pytest.raises(InputError, match="no audio"):
        build_voice_match_prompt([], Segment(0, "ref"), "Hi.", tok)


def test_audio_without_codes_is_a_clear_error(tok):
    seg = Segment(0, "Recorded.", audio=np.zeros(24000, np.float32))
    with pytest.raises(InputError, match="encode_audio"):
        build_prompt([seg], 1, "Reply.", tok)
    # counting works before encoding: ceil(24000 / 1920) = 13 frames + EOS
    assert count_rows(seg, tok) == len(tok.encode_segment(0, "Recorded.")) + 13 + 1


def test_text_only_context_segment_gives_text_rows(tok):
    seg = Segment(0, "Just text.")
    tokens, mask = segment_rows(seg, tok)
    np.testing.assert_array_equal(tokens[:, 32], tok.encode_segment(0, "Just text."))
    assert count_rows(seg, tok) == tokens.shape[0]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_new_text_is_an_input_error(tok, text):
    with pytest.raises(InputError, match="empty"):
        build_prompt([], 0, text, tok)


def test_bad_inputs(tok):
    with pytest.raises(InputError):
        build_prompt(["not a segment"], 0, "Hi.", tok)
    with pytest.raises(InputError):
        build_prompt([], -1, "Hi.", tok)
    with pytest.raises(InputError, match=r"\(frames, 32\)"):
        audio_rows(np.zeros((32, 10), np.int32))


def test_common_prefix_length_of_prompts():
    a = text_rows([1, 2, 3])
    b = text_rows([1, 2, 4, 5])
    assert common_prefix_length(*a, *b) == 2
    assert common_prefix_length(*a, *a) == 3
    assert common_prefix_length(*a, *text_rows([])) == 0
