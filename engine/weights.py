"""Finding model files and loading CSM checkpoints in the layouts that exist.

A model argument is `tiny-random` (built offline by engine.testing), a local folder, or a hub id
(downloaded with huggingface_hub, progress shown, cached). `load_csm(folder)` recognises three
layouts by their config and key names and maps them onto our parameter names (mlx-community's):

1. Sesame original: config.json with backbone_flavor / decoder_flavor ("llama-1B", "llama-100M";
   other flavours are defined in the file under "flavors": {name: {LlamaArgs fields}}); keys
   `backbone.layers.N.attn.q_proj.weight`, `.mlp.w1`, `.sa_norm.scale`, `audio_head`, ...
2. transformers (`model_type: "csm"`): `backbone_model.*`, `depth_decoder.model.*`,
   `embed_text_tokens`, `lm_head`, `depth_decoder.codebooks_head`; q/k rows are permuted for
   rotate-half RoPE and are permuted back here; the audio embeddings may be stored only once
   (under `depth_decoder.model.embed_tokens` when tie_codebooks_embeddings); `codec_model.*` (Mimi)
   is left to the codec loader (see `codec_source`).
3. MLX community (mlx-audio): our own names, with or without a `model.` prefix, optionally
   quantized (`.scales` / `.biases` and a `quantization: {group_size, bits}` config entry).

Key names and config form are detected separately: a folder written by engine.quantize has our key
names and the transformers config it came from. Missing, unexpected or misshapen keys raise
WeightsError naming them (in the checkpoint's own spelling).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .csm import CSM, CSMConfig, llama_1b, llama_100m
from .errors import WeightsError
from .llama import LlamaArgs

DEFAULT_MODEL = "sesame/csm-1b"
TINY_MODEL = "tiny-random"
TOKENIZER_FALLBACK_REPO = "unsloth/Llama-3.2-1B"
CODEC_FALLBACK_REPO = "kyutai/moshiko-pytorch-bf16"
CODEC_FALLBACK_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
# What a model repo needs to be run by us (never the multi-GB ckpt.pt duplicates).
MODEL_FILE_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "prompts/*",
]
SESAME_FLAVORS = {"llama-1B": llama_1b, "llama-100M": llama_100m}
GATED_REPOS = {"sesame/csm-1b"}

# ---------------------------------------------------------------------------------------------
# Finding files


def resolve_model(name_or_path: str | Path) -> Path:
    """The local folder of a model: `tiny-random`, a folder, or a hub id (downloaded, cached)."""
    name = str(name_or_path)
    if name == TINY_MODEL:
        from .testing import tiny_random_path

        return tiny_random_path()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise WeightsError(f"{path} is a file; give the folder that holds config.json and the weights")
    if not _looks_like_hub_id(name):
        raise WeightsError(f"no model folder at {path}; give an existing folder, a hub id such as "
                           f"{DEFAULT_MODEL}, or {TINY_MODEL!r}")
    return Path(_hub_snapshot(name, MODEL_FILE_PATTERNS))


def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name)) and not name.endswith(".")


def _hub_error(repo_id: str, what: str, err: Exception) -> WeightsError:
    from huggingface_hub import errors as hf_errors

    if isinstance(err, hf_errors.GatedRepoError) or repo_id in GATED_REPOS and "401" in str(err):
        hint = (f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_id} and log in "
                "with `huggingface-cli login` (or set HF_TOKEN)")
    elif isinstance(err, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
        hint = ("it is not in the local cache and downloading is off or impossible (HF_HUB_OFFLINE=1 or "
                "no network); connect once to download it, or pass a local folder, or use 'tiny-random'")
    elif isinstance(err, hf_errors.RepositoryNotFoundError):
        hint = ("no such repository (or it is private/gated: log in with `huggingface-cli login`); "
                "check the name, or pass a local folder")
    elif isinstance(err, hf_errors.EntryNotFoundError):
        hint = "the repository has no such file"
    else:
        hint = f"{type(err).__name__}: {err}"
    if repo_id in GATED_REPOS and "gated" not in hint:
        hint += f" (note: {repo_id} is gated and needs `huggingface-cli login`)"
    return WeightsError(f"could not get {what} from the hub repo {repo_id}: {hint}")


def _hub_snapshot(repo_id: str, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=patterns)  # shows tqdm progress bars
    except Exception as err:  # huggingface_hub raises many types; all become one clear message
        raise _hub_error(repo_id, "the model files", err) from err


def _hub_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as err:
        raise _hub_error(repo_id, filename, err) from err


def load_tokenizer_path(path: str | Path) -> Path:
    """The model's tokenizer.json, else the public Llama-3.2 one (unsloth/Llama-3.2-1B)."""
    local = Path(path) / "tokenizer.json"
    if local.is_file():
        return local
    return _hub_file(TOKENIZER_FALLBACK_REPO, "tokenizer.json")


@dataclass
class CodecSource:
    """Where the Mimi weights come from. Exactly one of `weights` and `file` is set.

    weights: transformers MimiModel tensors (the `codec_model.` prefix removed) with `config`, the
             checkpoint's `codec_config` dict (transformers MimiConfig fields);
    file:    what engine.mimi.load_mimi reads: a Kyutai-layout Mimi file (the public fallback), or a
             folder holding a codec (`codec/` beside the weights, as engine.testing writes for the
             Sesame and MLX layouts).
    """

    weights: dict[str, mx.array] | None = None
    config: dict | None = None
    file: Path | None = None


CODEC_FOLDER = "codec"


def codec_source(path: str | Path) -> CodecSource:
    """The codec for a model folder, in order: `codec_model.*` inside the checkpoint (transformers),
    a `codec/` folder, a Kyutai Mimi file in the folder, else the public one (kyutai/moshiko-pytorch-bf16)."""
    path = Path(path)
    config = _read_config(path)
    weights = {}
    for f in _weight_files(path):
        if any(k.startswith("codec_model.") for k in safetensors_keys(f)):
            weights.update({k[len("codec_model."):]: v for k, v in mx.load(str(f)).items()
                            if k.startswith("codec_model.")})
    if weights:
        if "codec_config" not in config:
            raise WeightsError(f"{path}: the checkpoint has codec_model.* weights but config.json has no codec_config")
        return CodecSource(weights=weights, config=config["codec_config"])
    if (path / CODEC_FOLDER).is_dir():
        return CodecSource(file=path / CODEC_FOLDER)
    if (path / CODEC_FALLBACK_FILE).is_file():
        return CodecSource(file=path / CODEC_FALLBACK_FILE)
    return CodecSource(file=_hub_file(CODEC_FALLBACK_REPO, CODEC_FALLBACK_FILE))


def safetensors_keys(file: str | Path) -> list[str]:
    """Tensor names of a safetensors file, from its header alone (nothing else is read)."""
    try:
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 1 << 30:
                raise ValueError("bad header size")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as err:
        raise WeightsError(f"{file} is not a readable safetensors file: {err}") from err
    return [k for k in header if k != "__metadata__"]


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint


def _read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise WeightsError(f"{path} has no config.json; is it a CSM model folder?")
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{f} is not readable JSON: {err}") from err


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of the network (sharded or not), codec-only files left out."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{path}: shards listed in {index.name} are missing: {', '.join(missing)}")
        return files
    files = sorted(f for f in path.glob("*.safetensors") if f.name != CODEC_FALLBACK_FILE)
    if not files:
        pts = [f.name for f in path.glob("*.pt")]
        extra = f" (found {', '.join(pts)}: convert it to safetensors)" if pts else ""
        raise WeightsError(f"{path} has no .safetensors weights{extra}")
    return files


def _read_weights(path: Path) -> dict[str, mx.array]:
    weights = {}
    for f in _weight_files(path):
        try:
            weights.update(mx.load(str(f)))
        except Exception as err:  # a truncated or foreign file
            raise WeightsError(f"{f} could not be read as safetensors: {err}") from err
    return weights


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
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 500000.0)))
        scaling = params
    else:
        theta = float(cfg.get("rope_theta", 500000.0))
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
        heads = int(cfg["num_attention_heads"])
        theta, scaling = _hf_rope(cfg, where)
        return LlamaArgs(
            dim=int(cfg["hidden_size"]), n_layers=int(cfg["num_hidden_layers"]), n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            hidden_dim=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=theta, rope_scaling=scaling,
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
        )
    except KeyError as err:
        raise WeightsError(f"{where} lacks {err}") from err


def _transformers_config(config: dict) -> CSMConfig:
    backbone = _hf_llama_args(config, "config.json")
    decoder = _hf_llama_args(config.get("depth_decoder_config") or {}, "config.json depth_decoder_config")
    decoder.max_seq_len = max(decoder.max_seq_len, int(config.get("num_codebooks", 32)))
    return CSMConfig(
        backbone=backbone, decoder=decoder,
        text_vocab_size=int(config.get("text_vocab_size", 128256)),
        audio_vocab_size=int(config.get("vocab_size", 2051)),
        audio_num_codebooks=int(config.get("num_codebooks", 32)),
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
        text_vocab_size=int(config.get("text_vocab_size", 128256)),
        audio_vocab_size=int(config.get("audio_vocab_size", 2051)),
        audio_num_codebooks=int(config.get("audio_num_codebooks", 32)),
        max_seq_len=backbone.max_seq_len,
    )


def csm_config_from(config: dict) -> CSMConfig:
    """Our hyperparameters from either form of config.json."""
    return _transformers_config(config) if config_form(config) == "transformers" else _sesame_config(config)


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


def _unpermute_qk(weights: dict, cfg: CSMConfig) -> dict:
    """transformers' q/k rows back to the interleaved RoPE order (shapes already checked)."""
    out = dict(weights)
    for name, value in weights.items():
        m = re.fullmatch(r"(backbone|decoder)\.layers\.\d+\.self_attn\.(q|k)_proj\.weight", name)
        if m:
            args = cfg.backbone if m.group(1) == "backbone" else cfg.decoder
            out[name] = _unpermute_rows(value, args.n_heads if m.group(2) == "q" else args.n_kv_heads)
    return out


def _map_names(weights: dict, layout: str) -> tuple[dict, dict]:
    """Our names -> arrays, and our names -> the checkpoint's (for error messages)."""
    if layout == "transformers":
        return _map_transformers(weights)
    rename = _sesame_name if layout == "sesame" else (lambda k: k[len("model."):] if k.startswith("model.") else k)
    out, source = {}, {}
    for key, value in weights.items():
        if key.startswith("codec_model."):
            continue  # a codec stored beside the network (e.g. by engine.quantize), read by codec_source
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


# ---------------------------------------------------------------------------------------------
# Loading


def default_dtype():
    """The per-device default chosen by measurement (engine.device): bfloat16 on a GPU and on a CPU
    with engine.cpu_kernels, float32 on other CPUs, `CSM_DTYPE` overriding any."""
    from engine.device import default_dtype as measured_default

    return measured_default()


def short_listing(names, limit: int = 8) -> str:
    """Names for an error message: sorted, the first `limit`, and how many more."""
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _quantization(config: dict) -> dict | None:
    q = config.get("quantization") or config.get("quantization_config")
    if not q:
        return None
    if "group_size" not in q or "bits" not in q:
        raise WeightsError("config.json quantization needs group_size and bits")
    return q


def build_csm(config: dict, weight_names=()) -> CSM:
    """An (uninitialised) CSM for this config, quantized where the checkpoint is."""
    model = CSM(csm_config_from(config))
    q = _quantization(config)
    if q:
        names = set(weight_names)
        prefix = "model." if any(n.startswith("model.") for n in names) else ""
        nn.quantize(
            model, group_size=int(q["group_size"]), bits=int(q["bits"]), mode=q.get("mode", "affine"),
            class_predicate=lambda p, m: hasattr(m, "to_quantized") and f"{prefix}{p}.scales" in names,
        )
    return model


def load_csm(path: str | Path, dtype=None) -> CSM:
    """Load a CSM from a folder (or a model name, resolved with resolve_model), any known layout.

    dtype: of the float parameters; None -> engine.device.default_dtype() (see there).
    """
    path = resolve_model(path)
    config = _read_config(path)
    raw = _read_weights(path)
    layout = detect_layout(config, raw.keys())
    model = build_csm(config, raw.keys())
    weights, source = _map_names(raw, layout)
    check_weights(model, weights, source, layout, where=str(path))
    if layout == "transformers":
        weights = _unpermute_qk(weights, model.config)
    dtype = dtype or default_dtype()
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def check_weights(model: CSM, weights: dict, source: dict, layout: str, where: str = "the checkpoint") -> None:
    """WeightsError naming every missing, unexpected and misshapen key (in the checkpoint's names)."""
    expected = dict(tree_flatten(model.parameters()))
    missing = expected.keys() - weights.keys()
    unexpected = weights.keys() - expected.keys()
    misshapen = sorted(k for k in expected.keys() & weights.keys()
                       if tuple(weights[k].shape) != tuple(expected[k].shape))
    prefix = "model." if any(v.startswith("model.") for v in source.values()) else ""
    problems = []
    if missing:
        problems.append(f"missing keys: {short_listing([source_name(n, layout, prefix) for n in missing])}")
    if unexpected:
        problems.append(f"unexpected keys: {short_listing([source[n] for n in unexpected])}")
    if misshapen:
        problems.append("wrong shapes: " + short_listing(
            [f"{source[k]} {tuple(weights[k].shape)} (expected {tuple(expected[k].shape)})" for k in misshapen]))
    if problems:
        raise WeightsError(f"{where} does not match its config.json ({layout} key names): "
                           + "; ".join(problems))
