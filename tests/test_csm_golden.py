"""Our CSM network computes what transformers' CsmForConditionalGeneration computes.

Golden files: tests/golden/make_csm_golden.py (a tiny random model, GQA, Llama-3 RoPE scaling,
2 layers each in backbone and depth decoder, a prompt with text and audio rows). The same weights
are loaded from the transformers layout and from the Sesame original layout, and written by
engine.checkpoints.tiny in the MLX community layout (plain and quantized).
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import checkpoints as weights_mod
from engine.checkpoints import load as load_mod
from engine.csm import CSM
from engine.sampling import make_sampler
from engine.checkpoints.tiny import save_csm
from engine.checkpoints import load_csm

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-4  # max abs error, float32
LAYOUT_FOLDERS = {"transformers": GOLDEN / "csm_tiny", "sesame": GOLDEN / "csm_tiny_sesame"}


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "csm_golden.npz"))


@pytest.fixture(scope="module", params=list(LAYOUT_FOLDERS))
def model(request) -> CSM:
    return load_csm(LAYOUT_FOLDERS[request.param], dtype=mx.float32)


def prompt_hidden(model: CSM, golden, cache=None) -> mx.array:
    embeds = model.embed_rows(golden["tokens"][None], golden["mask"][None])  # (1, T, D)
    return model.backbone(embeds, cache)


def greedy_frames(model: CSM, golden, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n greedy frames (no suppression: the reference has none) and each step's c0 logits."""
    sampler = make_sampler(temperature=0, suppress_undecodable=False)
    cache = model.new_backbone_cache()
    h = prompt_hidden(model, golden, cache)[:, -1, :]
    frames, c0 = [], []
    for _ in range(n):
        c0.append(np.array(model.codebook0_head(h)[0]))
        codes = model.generate_frame(h, sampler)  # (1, 32)
        frames.append(np.array(codes[0]))
        h = model.backbone(model.frame_embedding(codes), cache)[:, -1, :]
    return np.stack(frames), np.stack(c0)


def max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def test_prompt_hidden_and_codebook0_logits(model, golden):
    hidden = prompt_hidden(model, golden)
    assert max_err(hidden[0], golden["hidden"]) <= TOL
    assert max_err(model.codebook0_head(hidden)[0], golden["c0_logits"]) <= TOL


def test_teacher_forced_frame_logits(model, golden):
    logits = model.frame_logits(mx.array(golden["tf_hidden"]), mx.array(golden["tf_codes"]))
    assert logits.shape == golden["tf_logits"].shape  # (2, 32, V): a batch of two
    assert max_err(logits, golden["tf_logits"]) <= TOL


def test_greedy_frames_identical(model, golden):
    frames, c0 = greedy_frames(model, golden, len(golden["greedy_frames"]))
    np.testing.assert_array_equal(frames, golden["greedy_frames"])
    assert max_err(c0, golden["greedy_c0_logits"]) <= TOL


def test_teacher_forced_over_generated_frames(model, golden):
    """Backbone fed the generated frames one at a time (KV cache) == the reference's logits."""
    frames = golden["greedy_frames"]
    cache = model.new_backbone_cache()
    h = prompt_hidden(model, golden, cache)[:, -1, :]
    hs = [h]
    for f in frames[:-1]:
        hs.append(model.backbone(model.frame_embedding(mx.array(f)[None]), cache)[:, -1, :])
    logits = model.frame_logits(mx.concatenate(hs, axis=0), mx.array(frames))
    assert max_err(logits, golden["greedy_frame_logits"]) <= TOL


def test_frame_embedding_is_an_audio_row(model, golden):
    codes = golden["greedy_frames"][:3]  # (3, 32)
    tokens = np.zeros((1, 3, 33), np.int32)
    tokens[0, :, :32] = codes
    mask = np.zeros((1, 3, 33), bool)
    mask[0, :, :32] = True
    rows = model.embed_rows(tokens, mask)
    frames = model.frame_embedding(mx.array(codes))  # (3, 1, D)
    assert max_err(rows[0], frames[:, 0]) <= 1e-6


def test_embed_rows_is_the_masked_sum(model, monkeypatch):
    """Masked-out columns do not count, whatever they hold; long prompts are embedded in chunks."""
    import engine.csm

    rng = np.random.default_rng(0)
    K, V = 32, model.config.audio_vocab_size
    tokens = np.concatenate([rng.integers(0, V, (1, 7, K)), rng.integers(0, 160, (1, 7, 1))], axis=2)
    mask = rng.random((1, 7, K + 1)) < 0.5
    table = np.array(model.audio_embeddings.weight)
    text = np.array(model.text_embeddings.weight)
    want = np.zeros((7, table.shape[1]), np.float32)
    for t in range(7):
        for k in range(K):
            if mask[0, t, k]:
                want[t] += table[k * V + tokens[0, t, k]]
        if mask[0, t, K]:
            want[t] += text[tokens[0, t, K]]
    junk = np.where(mask, tokens, -5).astype(np.int32)  # garbage where masked out
    assert max_err(model.embed_rows(junk, mask)[0], want) <= 1e-5
    monkeypatch.setattr(engine.csm, "EMBED_CHUNK_ROWS", 3)  # 7 rows -> chunks of 3, 3, 1
    assert max_err(model.embed_rows(junk, mask)[0], want) <= 1e-5


@pytest.mark.parametrize("prefix", ["model.", ""])
def test_mlx_layout_loads_identically(tmp_path, golden, prefix):
    ours = load_csm(LAYOUT_FOLDERS["transformers"], dtype=mx.float32)
    folder = save_csm(tmp_path / "mlx", ours, ours.config, layout="mlx", prefix=prefix)
    keys = weights_mod.safetensors_keys(folder / "model.safetensors")
    assert all(k.startswith(prefix) for k in keys) and any(".self_attn." in k for k in keys)
    again = load_csm(folder, dtype=mx.float32)
    np.testing.assert_array_equal(np.array(prompt_hidden(again, golden)), np.array(prompt_hidden(ours, golden)))
    frames, _ = greedy_frames(again, golden, 3)
    np.testing.assert_array_equal(frames, golden["greedy_frames"][:3])


def test_quantized_mlx_layout_loads(tmp_path, golden):
    ours = load_csm(LAYOUT_FOLDERS["transformers"], dtype=mx.float32)
    folder = save_csm(tmp_path / "q8", ours, ours.config, layout="mlx", quantize={"group_size": 32, "bits": 8})
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 8}
    q = load_csm(folder, dtype=mx.float32)
    assert isinstance(q["backbone"].layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(q.audio_embeddings, nn.QuantizedEmbedding)
    logits = np.array(q.codebook0_head(prompt_hidden(q, golden))[0])
    want = golden["c0_logits"]
    # 8-bit weights: close to the float model, not equal
    assert np.isfinite(logits).all()
    assert max_err(logits, want) < 0.1 * np.abs(want).max()
    assert np.corrcoef(logits.ravel(), want.ravel())[0, 1] > 0.999
    codes = q.generate_frame(prompt_hidden(q, golden)[:, -1, :], make_sampler(0, suppress_undecodable=False))
    assert codes.shape == (1, 32) and codes.dtype == mx.int32


# ---- the comparison is sharp: the mistakes it exists to catch do show ---------------------------


def test_golden_catches_missing_rope_scaling(tmp_path, golden):
    folder = tmp_path / "noscale"
    shutil.copytree(LAYOUT_FOLDERS["transformers"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    config["depth_decoder_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    (folder / "config.json").write_text(json.dumps(config))
    wrong = load_csm(folder, dtype=mx.float32)
    assert max_err(wrong.codebook0_head(prompt_hidden(wrong, golden))[0], golden["c0_logits"]) > 100 * TOL


def test_golden_catches_rotate_half_weights_left_permuted(monkeypatch, golden):
    monkeypatch.setattr(load_mod, "unpermute_qk", lambda w, cfg: w)
    wrong = load_csm(LAYOUT_FOLDERS["transformers"], dtype=mx.float32)
    assert max_err(wrong.codebook0_head(prompt_hidden(wrong, golden))[0], golden["c0_logits"]) > 100 * TOL


# ---- execution paths ----------------------------------------------------------------------------


def test_compiled_and_plain_frames_draw_the_same(golden):
    from engine.backends import Draw
    from engine.backends.mlx import MLXBackend

    model = load_csm(LAYOUT_FOLDERS["transformers"], dtype=mx.float32)
    h = prompt_hidden(model, golden)[0, -2:, :]  # a batch of two states
    draws = [Draw(0.9, 20, False, 11, f) for f in range(2)]
    runs = {}
    for compiled in (True, False):
        backend = MLXBackend(model, compile_frames=compiled)
        runs[compiled] = [np.array(backend.frames_from_hidden([h[0], h[1]], [d.at(f) for d in draws]))
                          for f in range(3)]
    np.testing.assert_array_equal(np.stack(runs[True]), np.stack(runs[False]))
    assert len({r.tobytes() for r in runs[True]}) == 3  # it does sample


def test_compiled_frames_follow_new_weights(golden):
    from engine.backends import Draw
    from engine.backends.mlx import MLXBackend

    model = load_csm(LAYOUT_FOLDERS["transformers"], dtype=mx.float32)
    backend = MLXBackend(model, compile_frames=True)
    h = prompt_hidden(model, golden)[0, -1, :]
    greedy = [Draw(0.0, 0, False, 0, 0)]
    before = np.array(backend.frames_from_hidden([h], greedy))
    head = model.audio_head
    model.update({"audio_head": -head})  # compiled graphs must not keep the old weights
    after = np.array(backend.frames_from_hidden([h], greedy))
    assert before[0, 0] == after[0, 0] and (before[0, 1:] != after[0, 1:]).any()
