"""Key layouts of the public Mimi checkpoints, and the maps between them.

Two layouts exist (facts from the public checkpoints):

* Kyutai's original (`tokenizer-e351c8d8-checkpoint125.safetensors` in kyutai/moshiko-pytorch-bf16):
  `encoder.model.N.conv.conv.weight`, `decoder.model.N.convtr.convtr.weight`,
  `{encoder,decoder}_transformer.transformer.layers.L.self_attn.in_proj_weight` (q, k, v stacked;
  RoPE on adjacent pairs), `norm1/norm2`, `linear1/linear2`, `layer_scale_{1,2}.scale`,
  `quantizer.rvq_{first,rest}.vq.layers.I._codebook.{embedding_sum,cluster_usage}`,
  `downsample.conv.conv.conv.weight`, `upsample.convtr.convtr.convtr.weight`.
* transformers' MimiModel as saved on disk (kyutai/mimi; `codec_model.*` in transformers CSM):
  `encoder.layers.N.conv.weight`, `{encoder,decoder}_transformer.layers.L.self_attn.{q,k,v,o}_proj`
  (q/k rows permuted for rotate-half RoPE), `input_layernorm`, `post_attention_layernorm`,
  `mlp.fc{1,2}`, `{self_attn,mlp}_layer_scale.scale`,
  `quantizer.{semantic,acoustic}_residual_vector_quantizer.layers.I.codebook.{embed_sum,cluster_usage}`,
  `downsample.conv.weight`, `upsample.conv.weight`. (transformers 5.x names the modules
  `encoder.encoder_seanet.layers...` etc. in memory; those names are read too.)

The loader maps both to one canonical form: transformers' on-disk names, torch shapes, and q/k rows
for adjacent-pair RoPE (Kyutai's convention; transformers' rows are un-permuted). Pure Python: works on NumPy or MLX arrays.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import WeightsError
from .config import MimiConfig

# Buffers that carry no information for inference.
IGNORED_SUFFIXES = ("._initialized", ".initialized", ".codebook.initialized")


# --- the flat SEANet index structure shared by both layouts ------------------------------------------
def seanet_encoder_plan(cfg: MimiConfig) -> list[tuple[int, str, dict]]:
    """(index, kind, args) of the encoder's flat layer list; kinds: conv, res, elu."""
    plan = [(0, "conv", dict(cin=cfg.channels, cout=cfg.num_filters, k=cfg.kernel_size))]
    mult = 1
    for ratio in reversed(cfg.ratios):
        dim = mult * cfg.num_filters
        for j in range(cfg.num_residual_layers):
            plan.append((len(plan), "res", dict(dim=dim, dilation=cfg.dilation_growth_rate ** j)))
        plan.append((len(plan), "elu", {}))
        plan.append((len(plan), "conv", dict(cin=dim, cout=dim * 2, k=2 * ratio, stride=ratio)))
        mult *= 2
    plan.append((len(plan), "elu", {}))
    plan.append((len(plan), "conv", dict(cin=mult * cfg.num_filters, cout=cfg.hidden_size, k=cfg.last_kernel_size)))
    return plan


def seanet_decoder_plan(cfg: MimiConfig) -> list[tuple[int, str, dict]]:
    """(index, kind, args) of the decoder's flat layer list; kinds: conv, convtr, res, elu."""
    mult = 2 ** len(cfg.ratios)
    plan = [(0, "conv", dict(cin=cfg.hidden_size, cout=mult * cfg.num_filters, k=cfg.kernel_size))]
    for ratio in cfg.ratios:
        dim = mult * cfg.num_filters
        plan.append((len(plan), "elu", {}))
        plan.append((len(plan), "convtr", dict(cin=dim, cout=dim // 2, k=2 * ratio, stride=ratio)))
        for j in range(cfg.num_residual_layers):
            plan.append((len(plan), "res", dict(dim=dim // 2, dilation=cfg.dilation_growth_rate ** j)))
        mult //= 2
    plan.append((len(plan), "elu", {}))
    plan.append((len(plan), "conv", dict(cin=cfg.num_filters, cout=cfg.channels, k=cfg.last_kernel_size)))
    return plan


# --- RoPE conventions -------------------------------------------------------------------------------
def to_rotate_half(w, heads: int):
    """Rows of a q/k projection for adjacent-pair RoPE -> rows for rotate-half RoPE (transformers)."""
    out_dim, in_dim = w.shape
    hd = out_dim // heads
    return w.reshape(heads, hd // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def from_rotate_half(w, heads: int):
    """The inverse of `to_rotate_half`: transformers' q/k rows -> adjacent-pair RoPE rows."""
    out_dim, in_dim = w.shape
    hd = out_dim // heads
    return w.reshape(heads, 2, hd // 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


# --- finding the codec's keys -----------------------------------------------------------------------
_PREFIXES = ("codec_model.", "model.codec_model.", "mimi.", "model.")
_TRANSFORMERS_NESTED = [  # transformers 5.x in-memory names -> on-disk names
    (r"^encoder\.encoder_seanet\.", "encoder."),
    (r"^encoder\.encoder_transformer\.", "encoder_transformer."),
    (r"^encoder\.downsample\.", "downsample."),
    (r"^decoder\.upsample\.", "upsample."),
    (r"^decoder\.decoder_transformer\.", "decoder_transformer."),
    (r"^decoder\.decoder_seanet\.", "decoder."),
]


def strip_prefix(weights: dict) -> dict:
    """Drop a container prefix (`codec_model.` in transformers CSM checkpoints) when every codec key has it."""
    for prefix in _PREFIXES:
        inner = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if inner and detect_layout(inner, raise_error=False):
            return inner
    return dict(weights)


def detect_layout(weights, raise_error: bool = True) -> str | None:
    keys = list(weights)
    if any(k.startswith(("encoder.model.", "decoder.model.", "quantizer.rvq_first.")) for k in keys):
        return "kyutai"
    if any(k.startswith(("encoder.layers.", "decoder.layers.", "encoder.encoder_seanet.", "decoder.decoder_seanet.",
                         "quantizer.semantic_residual_vector_quantizer.")) for k in keys):
        return "transformers"
    if raise_error:
        sample = ", ".join(sorted(keys)[:5]) or "no keys at all"
        raise WeightsError(f"these weights are not a Mimi codec in a known layout (Kyutai original or transformers "
                           f"MimiModel); first keys: {sample}")
    return None


def _is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES)


# --- Kyutai <-> transformers ------------------------------------------------------------------------
# One list of name pairs, (Kyutai, canonical), read in both directions. `{side}` is encoder|decoder,
# `{n}`/`{m}` a layer index, `{proj}` input_proj|output_proj; a trailing `$` makes a whole-key match,
# otherwise the pair renames a prefix. The SEANet conv pairs are marked one-way: their canonical names
# do not say whether a decoder layer is a transposed conv (`transformers_to_kyutai` asks the plan).
_NAME_PAIRS = [  # (kyutai, canonical, reversible)
    ("{side}.model.{n}.block.{m}.conv.conv.", "{side}.layers.{n}.block.{m}.conv.", False),
    ("{side}.model.{n}.conv.conv.", "{side}.layers.{n}.conv.", False),
    ("decoder.model.{n}.convtr.convtr.", "decoder.layers.{n}.conv.", False),
    ("downsample.conv.conv.conv.", "downsample.conv.", True),
    ("upsample.convtr.convtr.convtr.", "upsample.conv.", True),
    ("{side}_transformer.transformer.layers.{n}.self_attn.out_proj.", "{side}_transformer.layers.{n}.self_attn.o_proj.", True),
    ("{side}_transformer.transformer.layers.{n}.norm1.", "{side}_transformer.layers.{n}.input_layernorm.", True),
    ("{side}_transformer.transformer.layers.{n}.norm2.", "{side}_transformer.layers.{n}.post_attention_layernorm.", True),
    ("{side}_transformer.transformer.layers.{n}.linear1.", "{side}_transformer.layers.{n}.mlp.fc1.", True),
    ("{side}_transformer.transformer.layers.{n}.linear2.", "{side}_transformer.layers.{n}.mlp.fc2.", True),
    ("{side}_transformer.transformer.layers.{n}.layer_scale_1.", "{side}_transformer.layers.{n}.self_attn_layer_scale.", True),
    ("{side}_transformer.transformer.layers.{n}.layer_scale_2.", "{side}_transformer.layers.{n}.mlp_layer_scale.", True),
    ("quantizer.rvq_first.vq.layers.{n}._codebook.embedding_sum$",
     "quantizer.semantic_residual_vector_quantizer.layers.{n}.codebook.embed_sum$", True),
    ("quantizer.rvq_first.vq.layers.{n}._codebook.cluster_usage$",
     "quantizer.semantic_residual_vector_quantizer.layers.{n}.codebook.cluster_usage$", True),
    ("quantizer.rvq_rest.vq.layers.{n}._codebook.embedding_sum$",
     "quantizer.acoustic_residual_vector_quantizer.layers.{n}.codebook.embed_sum$", True),
    ("quantizer.rvq_rest.vq.layers.{n}._codebook.cluster_usage$",
     "quantizer.acoustic_residual_vector_quantizer.layers.{n}.codebook.cluster_usage$", True),
    ("quantizer.rvq_first.{proj}.", "quantizer.semantic_residual_vector_quantizer.{proj}.", True),
    ("quantizer.rvq_rest.{proj}.", "quantizer.acoustic_residual_vector_quantizer.{proj}.", True),
]
_FIELDS = {"side": "encoder|decoder", "n": r"\d+", "m": r"\d+", "proj": "input_proj|output_proj"}


def _rule(source: str, target: str) -> tuple[re.Pattern, str]:
    """A name pair as (regex over the source form, replacement template in the target form)."""
    whole = source.endswith("$")
    pattern = re.escape(source.rstrip("$"))
    for field, alternatives in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>{alternatives})")
    return re.compile("^" + pattern + ("$" if whole else "")), target.rstrip("$")


def _rename(rules: list[tuple[re.Pattern, str]], key: str) -> str | None:
    """`key` renamed by the first rule that matches it, or None."""
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict()) + key[m.end():]
    return None


_TO_CANONICAL = [_rule(kyutai, canonical) for kyutai, canonical, _ in _NAME_PAIRS]
_TO_KYUTAI = [_rule(canonical, kyutai) for kyutai, canonical, reversible in _NAME_PAIRS if reversible]
_IN_PROJ = re.compile(r"^(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.self_attn\.in_proj_weight$")


def kyutai_to_canonical(weights: dict) -> tuple[dict, dict, list[str]]:
    """Kyutai keys -> transformers' on-disk names, q/k rows left for adjacent-pair RoPE (as Kyutai has them).
    Returns (weights, {new name: source name}, source keys that matched no rule)."""
    out, origin, unknown = {}, {}, []
    for key, value in weights.items():
        if _is_ignored(key):
            continue
        m = _IN_PROJ.match(key)
        if m:
            if value.ndim != 2 or value.shape[0] % 3:
                raise WeightsError(f"{key}: shape {tuple(value.shape)} is not q, k and v stacked")
            d = value.shape[0] // 3
            base = f"{m.group(1)}_transformer.layers.{m.group(2)}.self_attn."
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[base + name + ".weight"] = value[i * d:(i + 1) * d]
                origin[base + name + ".weight"] = key
            continue
        new = _rename(_TO_CANONICAL, key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
            origin[new] = key
    return out, origin, unknown


_QK = re.compile(r"^(encoder|decoder)_transformer\.layers\.\d+\.self_attn\.[qk]_proj\.weight$")


def transformers_to_canonical(weights: dict, heads: int) -> tuple[dict, dict]:
    """transformers weights (on-disk or 5.x in-memory names) -> on-disk names, q/k rows un-permuted to
    adjacent-pair RoPE. Returns (weights, {new name: source name})."""
    out, origin = {}, {}
    for key, value in weights.items():
        if _is_ignored(key):
            continue
        new = key
        for pattern, repl in _TRANSFORMERS_NESTED:
            new = re.sub(pattern, repl, new)
        if _QK.match(new):
            if value.ndim != 2 or value.shape[0] % (2 * heads):
                raise WeightsError(f"{key}: shape {tuple(value.shape)} does not split into {heads} heads")
            value = from_rotate_half(value, heads)
        out[new] = value
        origin[new] = key
    return out, origin


def normalize_transformers(weights: dict) -> dict:
    """transformers weights under the on-disk names (maps the 5.x in-memory names), buffers dropped."""
    out = {}
    for key, value in weights.items():
        if _is_ignored(key):
            continue
        for pattern, repl in _TRANSFORMERS_NESTED:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def transformers_to_kyutai(weights: dict, cfg: MimiConfig) -> dict:
    """transformers on-disk weights -> Kyutai's original layout (used to build test checkpoints)."""
    convtr = {i for i, kind, _ in seanet_decoder_plan(cfg) if kind == "convtr"}
    weights = normalize_transformers(weights)
    out = {}
    attn: dict[str, dict[str, object]] = {}
    for key, value in weights.items():
        m = re.match(r"^(encoder|decoder)_transformer\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight$", key)
        if m:
            attn.setdefault(f"{m.group(1)}_transformer.transformer.layers.{m.group(2)}.self_attn.in_proj_weight",
                            {})[m.group(3)] = value
            continue
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(block\.\d+\.)?conv\.(weight|bias)$", key)
        if m:
            side, idx, block, what = m.group(1), int(m.group(2)), m.group(3) or "", m.group(4)
            if side == "decoder" and not block and idx in convtr:
                new = f"decoder.model.{idx}.convtr.convtr.{what}"
            else:
                new = f"{side}.model.{idx}.{block}conv.conv.{what}"
        else:
            new = _rename(_TO_KYUTAI, key)
            if new is None:
                raise WeightsError(f"no Kyutai name for {key}")
        out[new] = value
    for key, parts in attn.items():
        q = from_rotate_half(np.asarray(parts["q"]), cfg.num_heads)
        k = from_rotate_half(np.asarray(parts["k"]), cfg.num_heads)
        out[key] = np.concatenate([q, k, np.asarray(parts["v"])], axis=0)
    return out
