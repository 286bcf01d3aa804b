"""Golden files for the Mimi codec, from transformers' MimiModel (cross-checked against moshi 0.2.2).

Run once with the reference environment (torch CPU, transformers 5.x, moshi 0.2.2):

    REFVENV/bin/python tests/golden/make_mimi_golden.py

It builds the tiny random codec of `engine.mimi.testing` (real frame structure: ratios 8,6,5,4,
1920 samples per frame, 32 codebooks of 2048 split 1 + 31, a 250-position window; small widths;
codebooks, LayerScale and norms drawn at random, since transformers' init leaves codebooks at zero),
loads it into transformers' MimiModel from the transformers layout on disk, and saves

  mimi_tiny/config.json, mimi_tiny/model.safetensors   the weights (float16: every value is exact)
  mimi_golden.npz
    codes_40 (32, 40), latent_40 (40, hidden), audio_40 (76800,)   a 40-frame clip: codes, the
                                       pre-quantizer latent, and the decode of those codes
    codes_ragged (32, 40)              a clip 777 samples short of 40 frames (padded inside the convs)
    codes_long (32, 140), latent_long (140, hidden)    a 140-frame clip (280 positions at 25 Hz,
                                       past the 250-position window)
    decode_codes (32, 140)             random codes; their decoder-transformer output
    decode_hidden (280, hidden) and the last two frames of their audio, decode_tail (3840,)

Before saving it checks that moshi 0.2.2, fed the same weights converted to Kyutai's layout by
`engine.mimi.layouts.transformers_to_kyutai`, gives the same codes and audio.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.mimi.config import MimiConfig  # noqa: E402  (NumPy-only modules: no MLX needed)
from engine.mimi.layouts import transformers_to_kyutai  # noqa: E402
from engine.mimi.testing import tiny_test_signal, write_tiny_mimi  # noqa: E402

OUT = Path(__file__).resolve().parent
SEED = 0


def transformers_model(folder: Path):
    from transformers import MimiModel

    model, info = MimiModel.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager",
                                            output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.endswith("initialized")]
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def moshi_model(weights: dict, cfg: MimiConfig):
    import importlib.util
    import types

    if importlib.util.find_spec("bitsandbytes") is None:  # moshi imports it on every linear; unused unquantized
        sys.modules["bitsandbytes"] = types.ModuleType("bitsandbytes")
    from moshi.models.compression import MimiModel
    from moshi.modules import SEANetDecoder, SEANetEncoder, transformer
    from moshi.quantization import SplitResidualVectorQuantizer

    seanet = dict(channels=1, dimension=cfg.hidden_size, causal=True, n_filters=cfg.num_filters,
                  n_residual_layers=cfg.num_residual_layers, activation="ELU", compress=cfg.compress,
                  dilation_base=cfg.dilation_growth_rate, disable_norm_outer_blocks=0, kernel_size=cfg.kernel_size,
                  residual_kernel_size=cfg.residual_kernel_size, last_kernel_size=cfg.last_kernel_size,
                  norm="none", pad_mode="constant", ratios=list(cfg.ratios), true_skip=True)
    tr = dict(d_model=cfg.hidden_size, num_heads=cfg.num_heads, num_layers=cfg.num_layers, causal=True,
              layer_scale=0.01, context=cfg.sliding_window, conv_layout=True, max_period=cfg.rope_theta,
              gating="none", norm="layer_norm", positional_embedding="rope", dim_feedforward=cfg.intermediate_size,
              input_dimension=cfg.hidden_size, output_dimensions=[cfg.hidden_size])
    encoder, decoder = SEANetEncoder(**seanet), SEANetDecoder(**seanet)
    model = MimiModel(
        encoder, decoder,
        SplitResidualVectorQuantizer(dimension=cfg.codebook_dim, n_q=cfg.num_quantizers, bins=cfg.codebook_size,
                                     input_dimension=cfg.hidden_size, output_dimension=cfg.hidden_size),
        channels=1, sample_rate=cfg.sample_rate, frame_rate=cfg.frame_rate,
        encoder_frame_rate=cfg.sample_rate / encoder.hop_length, causal=True, resample_method="conv",
        encoder_transformer=transformer.ProjectedTransformer(**tr),
        decoder_transformer=transformer.ProjectedTransformer(**tr),
    )
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in transformers_to_kyutai(weights, cfg).items()}
    result = model.load_state_dict(state, strict=False)
    assert all(k.endswith("_initialized") for k in result.missing_keys), result.missing_keys
    assert not result.unexpected_keys, result.unexpected_keys
    model.set_num_codebooks(cfg.num_quantizers)
    return model.eval()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        weights, config = write_tiny_mimi(Path(tmp), layout="transformers", seed=SEED, dtype="float16")
        model = transformers_model(Path(tmp))
    cfg = MimiConfig.from_dict(config)
    assert cfg.frame_size == 1920 and model.config.frame_size == 1920 and model.config.frame_rate == 12.5

    def as_input(audio):
        return torch.from_numpy(audio)[None, None]

    out = {}
    with torch.no_grad():
        clip = tiny_test_signal(40 * cfg.frame_size)
        out["codes_40"] = model.encode(as_input(clip)).audio_codes[0].numpy()
        out["latent_40"] = model.encoder(as_input(clip)).latents[0].T.numpy()
        out["audio_40"] = model.decode(torch.from_numpy(out["codes_40"])[None]).audio_values[0, 0].numpy()

        ragged = tiny_test_signal(40 * cfg.frame_size - 777)
        out["codes_ragged"] = model.encode(as_input(ragged)).audio_codes[0].numpy()

        long = tiny_test_signal(140 * cfg.frame_size)
        out["codes_long"] = model.encode(as_input(long)).audio_codes[0].numpy()
        out["latent_long"] = model.encoder(as_input(long)).latents[0].T.numpy()

        rng = np.random.default_rng(1)
        codes = rng.integers(0, cfg.codebook_size, (cfg.num_quantizers, 140))
        latent = model.quantizer.decode(torch.from_numpy(codes)[None])
        up = model.decoder.upsample(latent)
        hidden = model.decoder.decoder_transformer(up.transpose(1, 2)).last_hidden_state
        audio = model.decoder.decoder_seanet(hidden.transpose(1, 2))[0, 0].numpy()
        out["decode_codes"] = codes
        out["decode_hidden"] = hidden[0].numpy()
        out["decode_tail"] = audio[-2 * cfg.frame_size:]
        full = model.decode(torch.from_numpy(codes)[None]).audio_values[0, 0].numpy()
        assert np.array_equal(full, audio)

        # moshi 0.2.2 on the same weights in Kyutai's layout
        moshi = moshi_model(weights, cfg)
        for name, audio in (("codes_40", clip), ("codes_ragged", ragged), ("codes_long", long)):
            theirs = moshi.encode(as_input(audio))[0].numpy()
            where = np.argwhere(theirs != out[name]).tolist()
            assert not where, f"moshi disagrees on {name} at (codebook, frame) {where}"
        theirs = moshi.decode(torch.from_numpy(out["codes_40"])[None])[0, 0].numpy()
        err = np.abs(theirs - out["audio_40"]).max() / np.abs(out["audio_40"]).max()
        print(f"moshi vs transformers: codes equal; 40-frame decode max error {err:.2e} of peak")
        theirs = moshi.decode(torch.from_numpy(codes)[None])[0, 0].numpy()[-2 * cfg.frame_size:]
        err = np.abs(theirs - out["decode_tail"]).max() / np.abs(out["decode_tail"]).max()
        print(f"moshi vs transformers: 140-frame decode tail max error {err:.2e} of peak")
        assert err < 1e-4

    distinct = [len(np.unique(out["codes_40"][k])) for k in range(cfg.num_quantizers)]
    print(f"distinct codes per codebook over 40 frames: min {min(distinct)}, max {max(distinct)}")
    print(f"audio_40 peak {np.abs(out['audio_40']).max():.3f}, latent rms {np.sqrt((out['latent_40'] ** 2).mean()):.3f}")
    last_differs = (out["codes_ragged"][:, -1] != out["codes_40"][:, -1]).sum()
    print(f"ragged clip: {last_differs} of 32 last-frame codes differ from the full clip's; "
          f"earlier frames equal: {np.array_equal(out['codes_ragged'][:, :-1], out['codes_40'][:, :-1])}")

    write_tiny_mimi(OUT / "mimi_tiny", layout="transformers", seed=SEED, dtype="float16")
    arrays = {k: (v.astype(np.int16) if k.startswith(("codes", "decode_codes")) else v.astype(np.float32))
              for k, v in out.items()}
    np.savez(OUT / "mimi_golden.npz", **arrays)
    (OUT / "mimi_golden.json").write_text(json.dumps({
        "made_by": "tests/golden/make_mimi_golden.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "moshi": __import__("moshi").__version__,
        "seed": SEED,
    }, indent=2) + "\n")
    for f in sorted(OUT.glob("mimi*")):
        size = sum(p.stat().st_size for p in f.rglob("*")) if f.is_dir() else f.stat().st_size
        print(f"{f.relative_to(ROOT)}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
