"""Make the golden files for the CSM network from transformers' CsmForConditionalGeneration.

Run once with the reference venv (REFVENV: a virtualenv with torch 2.13 CPU + transformers 5.24), from the repo root:

    REFVENV/bin/python tests/golden/make_csm_golden.py

It writes, beside this script:
  csm_tiny/            the tiny random model as transformers saves it (save_pretrained: config.json,
                       generation_config.json, model.safetensors with codec_model.* included)
  csm_tiny_sesame/     the same weights in Sesame's original layout (keys renamed by hand here, q/k
                       rows permuted back to the interleaved RoPE order, flavours in config.json)
  csm_golden.npz       prompt rows/mask, hidden states and codebook-0 logits over the prompt,
                       teacher-forced frame logits, 20 greedy frames from model.generate
CI only reads these files; it never needs PyTorch.

The tiny config keeps what matters real: >= 2 layers in backbone and depth decoder, grouped-query
attention, Llama-3 RoPE scaling as the published config writes it, 32 codebooks. To keep files
small the audio vocabulary is 67 (real: 2051) and the text vocabulary 160. Weights are
re-randomised at a unit scale (transformers' std 0.02 init makes attention near uniform, which would
hide RoPE mistakes) and norms are random so a swapped norm shows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CsmConfig, CsmDepthDecoderConfig, CsmForConditionalGeneration, MimiConfig

HERE = Path(__file__).resolve().parent
SEED = 1234
TEXT_VOCAB = 160
AUDIO_VOCAB = 67
CODEBOOKS = 32
GREEDY_FRAMES = 20

BACKBONE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8)
DECODER = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8)
# As in the published sesame/csm-1b config (transformers form of Sesame's factor 32, low 1, high 4, 8192).
BACKBONE_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 0.125,
                 "high_freq_factor": 0.5, "original_max_position_embeddings": 1024}
DECODER_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1 / 512,
                "high_freq_factor": 1 / 128, "original_max_position_embeddings": 16}
SESAME_ROPE = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}


def tiny_codec_config() -> MimiConfig:
    ratios = [2, 2]
    return MimiConfig(
        hidden_size=16, num_filters=4, upsampling_ratios=ratios, upsample_groups=16, codebook_size=16,
        codebook_dim=8, vector_quantization_hidden_dimension=8, num_quantizers=CODEBOOKS,
        num_semantic_quantizers=1, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8, intermediate_size=32, sampling_rate=24000,
        frame_rate=24000 / (math.prod(ratios) * 2),
    )


def tiny_config() -> CsmConfig:
    decoder = CsmDepthDecoderConfig(backbone_hidden_size=BACKBONE["hidden_size"], vocab_size=AUDIO_VOCAB,
                                    num_codebooks=CODEBOOKS, rope_parameters=DECODER_ROPE, **DECODER)
    return CsmConfig(
        text_vocab_size=TEXT_VOCAB, vocab_size=AUDIO_VOCAB, num_codebooks=CODEBOOKS,
        rope_parameters=BACKBONE_ROPE, depth_decoder_config=decoder.to_dict(),
        codec_config=tiny_codec_config().to_dict(), **BACKBONE,
    )


def randomise(model: CsmForConditionalGeneration, gen: torch.Generator) -> None:
    """Unit-scale random weights for the CSM part (the codec keeps its init; it is not tested here)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("codec_model."):
                continue
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif "embed" in name and "projector" not in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name == "depth_decoder.codebooks_head.weight":  # (K-1, Dd, V): h @ W[i]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:  # nn.Linear (out, in)
                scale = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def prompt_rows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Text rows, audio rows + the all-zero EOS row, then the next segment's text rows."""
    K = CODEBOOKS
    text1 = rng.integers(0, TEXT_VOCAB, size=7)
    audio = rng.integers(0, AUDIO_VOCAB, size=(9, K))
    text2 = rng.integers(0, TEXT_VOCAB, size=6)
    rows, mask = [], []
    for t in text1:
        r = np.zeros(K + 1, np.int32); r[K] = t; rows.append(r)
        m = np.zeros(K + 1, bool); m[K] = True; mask.append(m)
    for frame in list(audio) + [np.zeros(K, np.int64)]:
        r = np.zeros(K + 1, np.int32); r[:K] = frame; rows.append(r)
        m = np.zeros(K + 1, bool); m[:K] = True; mask.append(m)
    for t in text2:
        r = np.zeros(K + 1, np.int32); r[K] = t; rows.append(r)
        m = np.zeros(K + 1, bool); m[K] = True; mask.append(m)
    return np.stack(rows), np.stack(mask)


def embed_rows(model, tokens: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """The prompt embedding transformers builds: text rows from embed_text_tokens, audio rows from the
    backbone's summed codebook embeddings (as _merge_input_ids_with_input_values does)."""
    K = CODEBOOKS
    out = []
    for row, m in zip(tokens, mask):
        if m[K]:
            out.append(model.embed_text_tokens(torch.tensor([row[K]]))[0])
        else:
            codes = torch.tensor(row[:K], dtype=torch.long)[None, None, :]  # (1, 1, K)
            out.append(model.backbone_model.embed_tokens(codes)[0, 0])
    return torch.stack(out)[None]  # (1, T, Db)


def frame_logits(model, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Teacher-forced (B, K, V): lm_head(h), then the depth decoder over [h, c0 .. c_{K-2}]."""
    ids = torch.nn.functional.pad(codes[:, : CODEBOOKS - 1], (1, 0), value=0)  # slot 0 <- h
    dd = model.depth_decoder(input_ids=ids, backbone_last_hidden_state=h, use_cache=False)
    return torch.cat([model.lm_head(h)[:, None, :], dd.logits], dim=1)


def margins(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def to_sesame(state: dict[str, torch.Tensor], config: CsmConfig) -> dict[str, torch.Tensor]:
    """Sesame's original names; q/k rows from rotate-half back to interleaved order."""
    dd = config.depth_decoder_config
    out = {}
    for key, w in state.items():
        if key.startswith("codec_model.") or key == "backbone_model.embed_tokens.embed_audio_tokens.weight":
            continue  # the codec is not part of Sesame's file; the tied audio table is stored once
        name = key
        for old, new in [("backbone_model.", "backbone."), ("depth_decoder.model.", "decoder.")]:
            if name.startswith(old):
                name = new + name[len(old):]
        name = (name.replace(".self_attn.", ".attn.").replace(".o_proj.", ".output_proj.")
                .replace(".gate_proj.", ".w1.").replace(".down_proj.", ".w2.").replace(".up_proj.", ".w3.")
                .replace(".input_layernorm.weight", ".sa_norm.scale")
                .replace(".post_attention_layernorm.weight", ".mlp_norm.scale"))
        name = {"backbone.norm.weight": "backbone.norm.scale", "decoder.norm.weight": "decoder.norm.scale",
                "embed_text_tokens.weight": "text_embeddings.weight",
                "decoder.embed_tokens.weight": "audio_embeddings.weight",
                "lm_head.weight": "codebook0_head.weight",
                "decoder.inputs_embeds_projector.weight": "projection.weight",
                "depth_decoder.codebooks_head.weight": "audio_head"}.get(name, name)
        if ".attn.q_proj." in name or ".attn.k_proj." in name:
            cfg = config if name.startswith("backbone.") else dd
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            hd = w.shape[0] // heads
            w = w.reshape(heads, 2, hd // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)
        out[name] = w.contiguous().clone()
    assert "audio_embeddings.weight" in out and "audio_head" in out
    assert all(k.split(".")[0] in {"backbone", "decoder", "text_embeddings", "audio_embeddings", "projection",
                                   "codebook0_head", "audio_head"} for k in out), sorted(out)
    return out


def sesame_config(config: CsmConfig) -> dict:
    def flavor(c, hidden):
        return {"dim": hidden, "n_layers": c["num_hidden_layers"], "n_heads": c["num_attention_heads"],
                "n_kv_heads": c["num_key_value_heads"], "head_dim": c["head_dim"],
                "hidden_dim": c["intermediate_size"], "norm_eps": 1e-5, "rope_theta": 500000.0,
                "rope_scaling": SESAME_ROPE, "max_seq_len": 2048}
    return {
        "backbone_flavor": "tiny-backbone", "decoder_flavor": "tiny-decoder",
        "flavors": {"tiny-backbone": flavor(BACKBONE, BACKBONE["hidden_size"]),
                    "tiny-decoder": flavor(DECODER, DECODER["hidden_size"])},
        "text_vocab_size": TEXT_VOCAB, "audio_vocab_size": AUDIO_VOCAB, "audio_num_codebooks": CODEBOOKS,
    }


def rope_references() -> dict[str, np.ndarray]:
    """transformers' llama3 inverse frequencies for the published (full-size) configs and a few others."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cases = {
        "rope_backbone_hd64": CsmConfig(hidden_size=2048, num_attention_heads=32, rope_parameters=BACKBONE_ROPE),
        "rope_decoder_hd128": CsmDepthDecoderConfig(hidden_size=1024, num_attention_heads=8,
                                                    rope_parameters=DECODER_ROPE),
        "rope_sesame_hd64": CsmConfig(hidden_size=2048, num_attention_heads=32,
                                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **SESAME_ROPE}),
        "rope_tiny_hd8": CsmConfig(hidden_size=32, num_attention_heads=4, rope_parameters=BACKBONE_ROPE),
        "rope_theta1e4_hd32": CsmConfig(hidden_size=256, num_attention_heads=8, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    }
    return {name: ROPE_INIT_FUNCTIONS["llama3"](cfg)[0].numpy() for name, cfg in cases.items()}


def main() -> None:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = CsmForConditionalGeneration(tiny_config()).eval()
    randomise(model, gen)
    # tied: the backbone's audio table is the depth decoder's
    assert (model.backbone_model.embed_tokens.embed_audio_tokens.weight.data_ptr()
            == model.depth_decoder.model.embed_tokens.weight.data_ptr())
    out_dir = HERE / "csm_tiny"
    model.save_pretrained(out_dir)
    # Everything below runs on the model as read back from disk.
    model = CsmForConditionalGeneration.from_pretrained(out_dir).eval()

    tokens, mask = prompt_rows(rng)
    with torch.no_grad():
        embeds = embed_rows(model, tokens, mask)
        out = model(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][0]  # (T, Db), after the final norm
        c0_logits = out.logits[0]  # (T, V)
        assert torch.allclose(model.lm_head(hidden), c0_logits)

        # teacher forcing: two different backbone states, random codes
        T = tokens.shape[0]
        tf_hidden = hidden[[T - 1, T - 5]]  # (2, Db)
        tf_codes = torch.tensor(rng.integers(0, AUDIO_VOCAB, size=(2, CODEBOOKS)))
        tf_logits = frame_logits(model, tf_hidden, tf_codes)  # (2, K, V)

        gen_out = model.generate(inputs_embeds=embeds, max_new_tokens=GREEDY_FRAMES, do_sample=False,
                                 depth_decoder_do_sample=False, return_dict_in_generate=True,
                                 output_logits=True)
        frames = gen_out.sequences[0]  # (F, K)
        assert frames.shape == (GREEDY_FRAMES, CODEBOOKS), frames.shape  # no early stop (all-zero frame)
        greedy_c0_logits = torch.cat(gen_out.logits, dim=0)  # (F, V)

        # Self-check: recompute every greedy decision teacher-forced from the whole sequence.
        frame_embeds = model.backbone_model.embed_tokens(frames[None])  # (1, F, Db)
        full = torch.cat([embeds, frame_embeds[:, :-1]], dim=1)
        h_all = model(inputs_embeds=full, output_hidden_states=True).hidden_states[-1][0, T - 1:]  # (F, Db)
        tf_all = frame_logits(model, h_all, frames)  # (F, K, V)
        assert torch.equal(tf_all.argmax(-1), frames), "generate() disagrees with teacher forcing"
        assert torch.allclose(tf_all[:, 0], greedy_c0_logits, atol=1e-5)
        min_margin = margins(tf_all).min().item()

    save_file(to_sesame(model.state_dict(), model.config), str(_mkdir(HERE / "csm_tiny_sesame") / "model.safetensors"),
              metadata={"format": "pt"})
    (HERE / "csm_tiny_sesame" / "config.json").write_text(json.dumps(sesame_config(model.config), indent=2) + "\n")

    np.savez_compressed(
        HERE / "csm_golden.npz",
        tokens=tokens.astype(np.int32), mask=mask,
        hidden=hidden.numpy(), c0_logits=c0_logits.numpy(),
        tf_hidden=tf_hidden.numpy(), tf_codes=tf_codes.numpy().astype(np.int32), tf_logits=tf_logits.numpy(),
        greedy_frames=frames.numpy().astype(np.int32), greedy_c0_logits=greedy_c0_logits.numpy(),
        greedy_frame_logits=tf_all.numpy(),
        # the models' own RoPE tables, and transformers' llama3 formula on other configs
        rope_model_backbone=model.backbone_model.rotary_emb.inv_freq.numpy(),
        rope_model_decoder=model.depth_decoder.model.rotary_emb.inv_freq.numpy(),
        **rope_references(),
    )
    print(f"prompt rows {T}, greedy frames {tuple(frames.shape)}, smallest top-1/top-2 logit gap in the "
          f"greedy decisions {min_margin:.4f}")
    for f in sorted(HERE.rglob("*")):
        if f.is_file() and f.suffix != ".py":
            print(f"  {f.relative_to(HERE)}: {f.stat().st_size / 1024:.0f} KiB")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


if __name__ == "__main__":
    main()
