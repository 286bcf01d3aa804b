"""Loading Mimi weights: Kyutai's original layout or transformers' MimiModel layout.

    load_mimi("kyutai/mimi")                       # hub: transformers layout (config.json + model.safetensors)
    load_mimi("kyutai/moshiko-pytorch-bf16")       # hub: Kyutai file tokenizer-e351c8d8-checkpoint125.safetensors
    load_mimi("path/to/folder")                    # config.json (optional for Kyutai) + *.safetensors
    load_mimi("path/to/tokenizer.safetensors")     # config: `<name>.json` beside it, a Mimi config.json
                                                   # beside it, else moshi's defaults fitted to the shapes
    mimi_from_weights(weights, config)             # e.g. the codec_model.* tensors of a transformers CSM

A folder or hub repo of a transformers CSM checkpoint works too: its `codec_model.*` tensors and
`codec_config` are used. Missing, unexpected or misshapen tensors raise WeightsError naming them.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from engine.errors import WeightsError, short_listing
from engine.files import hub_snapshot, indexed_shards, read_json, safetensors_keys

from .codec import Mimi
from .config import MimiConfig
from .conv import CausalConv1d, CausalConvTranspose1d
from .layouts import detect_layout, kyutai_to_canonical, strip_prefix, transformers_to_canonical

KYUTAI_REPO_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --- public entry points ----------------------------------------------------------------------------
def load_mimi(source, config: dict | MimiConfig | None = None) -> Mimi:
    """A Mimi codec from a folder, a .safetensors file or a hub id (see the module docstring)."""
    path = _resolve(str(source))
    files, found_config = _files_and_config(path)
    weights = {}
    for f in files:
        weights.update(_read_codec_tensors(f))
    if config is None:
        config = found_config
    return mimi_from_weights(weights, config, where=str(source))


def mimi_from_weights(weights: dict, config: dict | MimiConfig | None = None, where: str = "the weights") -> Mimi:
    """Build a Mimi from tensors in either layout (NumPy or MLX arrays, any float dtype; a `codec_model.`
    prefix is removed). `config`: a MimiConfig or transformers-style dict; None = moshi's defaults fitted
    to the tensors' shapes (the attention head count cannot be read from shapes: 64-wide heads assumed)."""
    weights = strip_prefix(weights)
    layout = detect_layout(weights)
    cfg = MimiConfig.from_dict(config) if config is not None else None
    if layout == "kyutai":
        canonical, origin, unknown = kyutai_to_canonical(weights)
    else:
        if cfg is None:
            cfg = infer_config(transformers_to_canonical(weights, 1)[0])
        canonical, origin = transformers_to_canonical(weights, cfg.num_heads)
        unknown = []
    if cfg is None:
        cfg = infer_config(canonical)
    model = Mimi(cfg)
    model.set_weights(_to_model(model, canonical, origin, unknown, layout, where))
    return model


def infer_config(canonical: dict) -> MimiConfig:
    """Moshi's defaults with every size the shapes tell (canonical names, torch shapes)."""
    shape = {k: tuple(v.shape) for k, v in canonical.items()}
    try:
        first = shape["encoder.layers.0.conv.weight"]  # (filters, channels, kernel)
        plain = sorted(int(m.group(1)) for k in shape
                       if (m := re.match(r"^encoder\.layers\.(\d+)\.conv\.weight$", k)))
        strided = plain[1:-1]
        ratios = tuple(shape[f"encoder.layers.{i}.conv.weight"][2] // 2 for i in reversed(strided))
        hidden = shape["decoder.layers.0.conv.weight"][1]
        res = shape["encoder.layers.1.block.1.conv.weight"]  # (dim / compress, dim, k)
        sem = [k for k in shape if re.match(r"^quantizer\.semantic_residual_vector_quantizer\.layers\.\d+\.codebook\.embed_sum$", k)]
        aco = [k for k in shape if re.match(r"^quantizer\.acoustic_residual_vector_quantizer\.layers\.\d+\.codebook\.embed_sum$", k)]
        bins, dim = shape[sem[0]]
        layers = {int(m.group(1)) for k in shape if (m := re.match(r"^decoder_transformer\.layers\.(\d+)\.", k))}
        ffn = shape["decoder_transformer.layers.0.mlp.fc1.weight"][0]
        stride = shape["downsample.conv.weight"][2] // 2 if "downsample.conv.weight" in shape else 1
        groups = hidden // shape["upsample.conv.weight"][1] if "upsample.conv.weight" in shape else hidden
    except (KeyError, IndexError) as err:
        raise WeightsError(f"cannot work out the Mimi configuration from these weights (no {err}); "
                           "pass a config (a transformers MimiModel config.json)") from err
    base = MimiConfig()
    heads = base.num_heads if hidden == base.hidden_size else max(1, hidden // 64)
    return base.replace(
        channels=first[1], num_filters=first[0], kernel_size=first[2], ratios=ratios,
        num_residual_layers=strided[0] - 2 if strided else 1,
        last_kernel_size=shape[f"encoder.layers.{plain[-1]}.conv.weight"][2],
        residual_kernel_size=res[2], compress=res[1] // res[0], hidden_size=hidden,
        codebook_size=bins, codebook_dim=dim, num_semantic_quantizers=len(sem), num_quantizers=len(sem) + len(aco),
        num_layers=len(layers), num_heads=heads, head_dim=hidden // heads, intermediate_size=ffn,
        frame_rate=base.sample_rate / (math.prod(ratios) * stride), upsample_groups=groups,
    )


# --- canonical names -> the model's parameters ---------------------------------------------------------
_TO_MODEL = [
    (re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.block\.(\d+)\.conv\."), r"\1.layers.\2.block.\3."),
    (re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.conv\."), r"\1.layers.\2."),
    (re.compile(r"^(downsample|upsample)\.conv\."), r"\1."),
]


def _model_name(key: str) -> str:
    for pattern, repl in _TO_MODEL:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def _model_array(key: str, value, module) -> mx.array:
    """torch shapes -> ours: conv weights through their module's `from_torch`; 1x1-conv projections
    (out, in, 1) -> Linear (out, in); everything else as it is. Always float32."""
    a = value if isinstance(value, mx.array) else mx.array(value)
    a = a.astype(mx.float32)
    if key.endswith(("input_proj.weight", "output_proj.weight")) and a.ndim == 3:
        return a[:, :, 0]
    if module is not None and key.endswith(".weight") and a.ndim == 3:
        try:
            return module.from_torch(a)
        except ValueError:  # wrong size for the reshape: reported as misshapen below
            return a
    return a


def _to_model(model: Mimi, canonical: dict, origin: dict, unknown: list, layout: str, where: str) -> dict:
    expected = dict(tree_flatten(model.parameters()))
    convs = {f"{name}.weight": module for name, module in model.named_modules() if hasattr(module, "from_torch")}
    out, misshapen, extra = {}, [], list(unknown)
    for key, value in canonical.items():
        name = _model_name(key)
        if name not in expected:
            extra.append(origin.get(key, key))
            continue
        array = _model_array(key, value, convs.get(name))
        if array.shape != expected[name].shape:
            want = _torch_shape(key, convs.get(name), expected[name])
            misshapen.append(f"{origin.get(key, key)}: {tuple(value.shape)} (expected {want})")
            continue
        out[name] = array
    given = {_model_name(c) for c in canonical}
    missing = [k for k in expected if k not in given]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) (transformers MimiModel names): {short_listing(_canonical_names(missing))}")
    if misshapen:
        problems.append(f"{len(misshapen)} with the wrong shape: {short_listing(misshapen)}")
    if problems:
        raise WeightsError(f"{where} does not fit the Mimi configuration ({layout} layout): " + "; ".join(problems)
                           + ". Is the config (config.json / codec_config) the one these weights were saved with?")
    if extra:
        warnings.warn(f"{where}: {len(extra)} tensor(s) not used by Mimi: {short_listing(extra)}", stacklevel=3)
    return out


def _torch_shape(key: str, module, param: mx.array) -> tuple:
    if key.endswith(("input_proj.weight", "output_proj.weight")):
        return tuple(param.shape) + (1,)
    if isinstance(module, CausalConvTranspose1d):
        return (module.cin, module.cout // module.groups, module.kernel_size)
    if isinstance(module, CausalConv1d):
        return (module.cout, module.cin, module.kernel_size)
    return tuple(param.shape)


def _canonical_names(names: list[str]) -> list[str]:
    out = []
    for n in names:
        n = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.block\.(\d+)\.", r"\1.layers.\2.block.\3.conv.", n)
        n = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.(weight|bias)$", r"\1.layers.\2.conv.\3", n)
        n = re.sub(r"^(downsample|upsample)\.weight$", r"\1.conv.weight", n)
        out.append(n)
    return out


# --- files ---------------------------------------------------------------------------------------------
def _resolve(source: str) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return _download(source)
    raise WeightsError(f"no Mimi weights at {source!r}: not a file, a folder or a hub id (like kyutai/mimi)")


def _download(repo: str) -> Path:
    """Fetch only what the codec needs (huggingface_hub shows progress and caches)."""
    folder = Path(hub_snapshot(repo, ["config.json", "tokenizer-*.safetensors"], "the Mimi codec"))
    kyutai = sorted(folder.glob("tokenizer-*.safetensors"))
    if kyutai:
        return kyutai[0]
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if config.get("model_type") != "mimi" and "codec_config" not in config:
        raise WeightsError(f"hub repo {repo} holds neither a Mimi codec (config.json with model_type "
                           f"'mimi') nor a Kyutai tokenizer-*.safetensors file")
    return Path(hub_snapshot(repo, ["config.json", "*.safetensors", "*.safetensors.index.json"],
                             "the Mimi codec"))


def _is_mimi_config(d: dict) -> bool:
    return d.get("model_type") == "mimi" or "upsampling_ratios" in d


def _files_and_config(path: Path) -> tuple[list[Path], dict | None]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path}: Mimi weights must be a .safetensors file")
        for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
            if candidate.is_file():
                d = read_json(candidate)
                if _is_mimi_config(d):
                    return [path], d
        return [path], None
    config = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if config is not None and not _is_mimi_config(config):
        config = config.get("codec_config")  # a transformers CSM folder
    files = indexed_shards(path)
    if files is None:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path} holds no .safetensors weights")
    return files, config


def _read_codec_tensors(file: Path) -> dict:
    """Every tensor of a codec file; from a bigger checkpoint only the `codec_model.*` ones."""
    try:
        keys = safetensors_keys(file)
        weights = mx.load(str(file))
    except WeightsError:
        raise
    except Exception as err:
        raise WeightsError(f"{file} could not be read as safetensors: {err}") from err
    if any(k.startswith("codec_model.") for k in keys):
        return {k: v for k, v in weights.items() if k.startswith("codec_model.")}
    return weights

