"""Checkpoint layouts: which one a folder uses, its config.json -> our hyperparameters, and its key
names <-> ours (mlx-community's), read in both directions.

1. Sesame original: config.json with backbone_flavor / decoder_flavor ("llama-1B", "llama-100M";
   other flavours are defined in the file under "flavors": {name: {LlamaArgs fields}}); keys
   `backbone.layers.N.attn.q_proj.weight`, `.mlp.w1`, `.sa_norm.scale`, `audio_head`, ...
2. transformers (`model_type: "csm"`): `backbone_model.*`, `depth_decoder.model.*`,
   `embed_text_tokens`, `lm_head`, `depth_decoder.codebooks_head`; q/k rows are permuted for
   rotate-half RoPE and are permuted back here; the audio embeddings may be stored only once
   (under `depth_decoder.model.embed_tokens` when tie_codebooks_embeddings); `codec_model.*` (Mimi)
   is left to the codec loader (see resolve.codec_source).
3. MLX community (mlx-audio): our own names, with or without a `model.` prefix, optionally
   quantized (`.scales` / `.biases` and a `quantization: {group_size, bits}` config entry).

Key names and config form are detected separately: a folder written by engine.checkpoints.convert
has our key names and the transformers config it came from.
"""

from __future__ import annotations

import re

import mlx.core as mx

from engine.constants import NUM_CODEBOOKS
from engine.csm import CSMConfig, llama_1b, llama_100m
from engine.errors import WeightsError
from engine.llama import LlamaArgs

from .sanity import check_config, real, whole

SESAME_FLAVORS = {"llama-1B": llama_1b, "llama-100M": llama_100m}


def detect_layout(config: dict, keys) -> str:
    """How the weights are named: 'transformers' | 'sesame' | 'mlx' (ours, maybe under `model.`)."""
    keys = [k for k in keys if not k.startswith("codec_model.")]
    if any(k.startswith("backbone_model.") or k.startswith("depth_decoder.") for k in keys):
        return "transformers"
    if any(".attn." in k or k.endswith(".scale") for k in keys):
        return "sesame"
    if any(re.match(r"(model\.)?(backbone|decoder)\.layers\.", k) for k in keys):
        return "mlx"
    raise WeightsError("unknown checkpoint layout: the weights are named neither as Sesame's "
                       "(backbone.layers.N.attn.*), transformers' (backbone_model.*) nor MLX community's "
                       "(backbone.layers.N.self_attn.*)")


def config_form(config: dict) -> str:
    """How config.json gives the hyperparameters: 'flavors' (Sesame / MLX community) or 'transformers'."""
    if "backbone_flavor" in config:
        return "flavors"
    if "depth_decoder_config" in config:
        return "transformers"
    raise WeightsError("unknown config.json: it has neither backbone_flavor / decoder_flavor (Sesame, MLX "
                       "community) nor a depth_decoder_config (transformers, model_type 'csm')")



# ---------------------------------------------------------------------------------------------
# Config -> CSMConfig


def _hf_rope(cfg: dict, where: str) -> tuple[float, dict | None]:
    params = cfg.get("rope_parameters")
    if params:
        theta = real(params.get("rope_theta", cfg.get("rope_theta", 500000.0)), "rope_theta", where)
        scaling = params
    else:
        theta = real(cfg.get("rope_theta", 500000.0), "rope_theta", where)
        scaling = cfg.get("rope_scaling")
    if not scaling:
        return theta, None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise WeightsError(f"{where}: RoPE type {rope_type!r} is not supported (only llama3 and default)")
    try:
        return theta, {k: float(scaling[k]) for k in
                       ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    except KeyError as err:
        raise WeightsError(f"{where}: llama3 RoPE scaling lacks {err}") from err


def _hf_llama_args(cfg: dict, where: str) -> LlamaArgs:
    try:
        def field(name, default=None):
            value = cfg[name] if default is None else cfg.get(name, default)
            return whole(value, f"{prefix}{name}")

        prefix = "" if where == "config.json" else "depth_decoder_config."
        heads = field("num_attention_heads")
        if heads < 1:
            raise WeightsError(f"config.json: {prefix}num_attention_heads is {heads}; it must be "
                               "at least 1")
        theta, scaling = _hf_rope(cfg, where)
        return LlamaArgs(
            dim=field("hidden_size"), n_layers=field("num_hidden_layers"), n_heads=heads,
            n_kv_heads=whole(cfg.get("num_key_value_heads") or heads, f"{prefix}num_key_value_heads"),
            head_dim=whole(cfg.get("head_dim") or field("hidden_size") // heads, f"{prefix}head_dim"),
            hidden_dim=field("intermediate_size"),
            norm_eps=real(cfg.get("rms_norm_eps", 1e-5), f"{prefix}rms_norm_eps"),
            rope_theta=theta, rope_scaling=scaling,
            max_seq_len=field("max_position_embeddings", 2048),
        )
    except KeyError as err:
        raise WeightsError(f"{where} lacks {err}") from err


def _transformers_config(config: dict) -> CSMConfig:
    backbone = _hf_llama_args(config, "config.json")
    decoder = _hf_llama_args(config.get("depth_decoder_config") or {}, "config.json depth_decoder_config")
    decoder.max_seq_len = max(decoder.max_seq_len, whole(config.get("num_codebooks", NUM_CODEBOOKS), "num_codebooks"))
    return CSMConfig(
        backbone=backbone, decoder=decoder,
        text_vocab_size=whole(config.get("text_vocab_size", 128256), "text_vocab_size"),
        audio_vocab_size=whole(config.get("vocab_size", 2051), "vocab_size"),
        audio_num_codebooks=whole(config.get("num_codebooks", NUM_CODEBOOKS), "num_codebooks"),
        max_seq_len=backbone.max_seq_len,
    )


def _flavor_args(config: dict, part: str) -> LlamaArgs:
    flavor = config.get(f"{part}_flavor")
    defined = config.get("flavors") or {}
    if flavor in defined:
        try:
            return LlamaArgs(**defined[flavor])
        except TypeError as err:
            raise WeightsError(f"config.json flavors[{flavor!r}]: {err}") from err
    if flavor in SESAME_FLAVORS:
        return SESAME_FLAVORS[flavor]()
    raise WeightsError(f"config.json: unknown {part}_flavor {flavor!r}; known: {', '.join(SESAME_FLAVORS)} "
                       "(or define it under \"flavors\")")


def _sesame_config(config: dict) -> CSMConfig:
    backbone = _flavor_args(config, "backbone")
    decoder = _flavor_args(config, "decoder")
    return CSMConfig(
        backbone=backbone, decoder=decoder,
        text_vocab_size=whole(config.get("text_vocab_size", 128256), "text_vocab_size"),
        audio_vocab_size=whole(config.get("audio_vocab_size", 2051), "audio_vocab_size"),
        audio_num_codebooks=whole(config.get("audio_num_codebooks", NUM_CODEBOOKS), "audio_num_codebooks"),
        max_seq_len=backbone.max_seq_len,
    )


def csm_config_from(config: dict) -> CSMConfig:
    """Our hyperparameters from either form of config.json, each within sane bounds (sanity.py:
    WeightsError naming the field otherwise)."""
    named = config_form(config) == "transformers"
    try:
        built = _transformers_config(config) if named else _sesame_config(config)
    except (TypeError, ValueError, AttributeError) as err:  # a mapping where a number goes, ...
        raise WeightsError(f"config.json has a value of the wrong type: {err}") from None
    check_config(built, named)
    return built


# ---------------------------------------------------------------------------------------------
# Key names -> ours

_SESAME_RULES = [
    (r"\.attn\.", ".self_attn."), (r"\.output_proj\.", ".o_proj."),
    (r"\.mlp\.w1\.", ".mlp.gate_proj."), (r"\.mlp\.w2\.", ".mlp.down_proj."), (r"\.mlp\.w3\.", ".mlp.up_proj."),
    (r"\.sa_norm\.scale$", ".input_layernorm.weight"),
    (r"\.mlp_norm\.scale$", ".post_attention_layernorm.weight"),
    (r"^(backbone|decoder)\.norm\.scale$", r"\1.norm.weight"),
]
_HF_NAMES = {
    "embed_text_tokens.weight": "text_embeddings.weight",
    "backbone_model.embed_tokens.embed_audio_tokens.weight": "audio_embeddings.weight",
    "depth_decoder.model.embed_tokens.weight": "audio_embeddings.weight",
    "lm_head.weight": "codebook0_head.weight",
    "depth_decoder.model.inputs_embeds_projector.weight": "projection.weight",
    "depth_decoder.codebooks_head.weight": "audio_head",
}
_HF_PREFIXES = [("backbone_model.", "backbone."), ("depth_decoder.model.", "decoder.")]


def _sesame_name(key: str) -> str:
    for pattern, repl in _SESAME_RULES:
        key = re.sub(pattern, repl, key)
    return key


def _hf_name(key: str) -> str:
    if key in _HF_NAMES:
        return _HF_NAMES[key]
    for old, new in _HF_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Rotate-half q/k rows -> interleaved: (H*hd, D) viewed (H, 2, hd/2, D), swap the middle axes."""
    rows, D = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, D).transpose(0, 2, 1, 3).reshape(rows, D)


def _map_transformers(weights: dict) -> tuple[dict, dict]:
    out, source = {}, {}
    audio_keys = [k for k in ("backbone_model.embed_tokens.embed_audio_tokens.weight",
                              "depth_decoder.model.embed_tokens.weight") if k in weights]
    if len(audio_keys) == 2 and (weights[audio_keys[0]].shape != weights[audio_keys[1]].shape or
                                 not mx.array_equal(weights[audio_keys[0]], weights[audio_keys[1]]).item()):
        raise WeightsError("the backbone's and the depth decoder's audio embeddings differ (untied); "
                           "this engine shares one audio embedding table, as Sesame's model does")
    for key, value in weights.items():
        if key.startswith("codec_model."):
            continue  # the codec's, read by codec_source
        name = _hf_name(key)
        out[name] = value
        source.setdefault(name, key)
    return out, source


def unpermute_qk(weights: dict, cfg: CSMConfig) -> dict:
    """transformers' q/k rows back to the interleaved RoPE order (shapes already checked)."""
    out = dict(weights)
    for name, value in weights.items():
        m = re.fullmatch(r"(backbone|decoder)\.layers\.\d+\.self_attn\.(q|k)_proj\.weight", name)
        if m:
            args = cfg.backbone if m.group(1) == "backbone" else cfg.decoder
            out[name] = _unpermute_rows(value, args.n_heads if m.group(2) == "q" else args.n_kv_heads)
    return out


def map_names(weights: dict, layout: str) -> tuple[dict, dict]:
    """Our names -> arrays, and our names -> the checkpoint's (for error messages)."""
    if layout == "transformers":
        return _map_transformers(weights)
    rename = _sesame_name if layout == "sesame" else (lambda k: k[len("model."):] if k.startswith("model.") else k)
    out, source = {}, {}
    for key, value in weights.items():
        if key.startswith("codec_model."):
            continue  # a codec stored beside the network (e.g. by convert.py), read by codec_source
        name = rename(key)
        out[name] = value
        source[name] = key
    return out, source


def source_name(name: str, layout: str, mlx_prefix: str = "") -> str:
    """Our parameter name as the checkpoint's layout spells it (for messages about missing keys)."""
    if layout == "mlx":
        return mlx_prefix + name
    if layout == "sesame":
        for ours, theirs in [(".self_attn.", ".attn."), (".o_proj.", ".output_proj."),
                             (".gate_proj.", ".w1."), (".down_proj.", ".w2."), (".up_proj.", ".w3."),
                             (".input_layernorm.weight", ".sa_norm.scale"),
                             (".post_attention_layernorm.weight", ".mlp_norm.scale")]:
            name = name.replace(ours, theirs)
        return re.sub(r"^(backbone|decoder)\.norm\.weight$", r"\1.norm.scale", name)
    reverse = {v: k for k, v in _HF_NAMES.items()}  # audio embeddings -> the depth decoder's copy
    if name in reverse:
        return reverse[name]
    for theirs, ours in _HF_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name

