"""Weight quantization of a CSM model (MLX affine quantization, as mlx-community conversions do).

`quantize_csm(model, bits)` swaps every Linear and Embedding whose input width is a multiple of the
group size for its quantized form (`nn.quantize`), in place. The depth decoder's `audio_head`
(K-1, Dd, V) is a plain array used as `h @ audio_head[i-1]` and stays in float, as in the MLX
community conversions. The result is recorded the way those conversions record it, in config.json:
`"quantization": {"group_size": 64, "bits": 4}`; the loader (engine/weights.py) quantizes the modules
whose `<path>.scales` are present in the file before loading the weights.

`write_quantized_model(src, out, bits)` writes such a folder (see dialogue/cli/convert.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import InputError

DEFAULT_GROUP_SIZE = 64
SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
WEIGHTS_FILE = "model.safetensors"


def check_bits(bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> None:
    if bits not in SUPPORTED_BITS:
        raise InputError(f"--quantize takes one of {', '.join(map(str, SUPPORTED_BITS))} bits, got {bits}")
    if group_size not in (32, 64, 128):
        raise InputError(f"the group size must be 32, 64 or 128, got {group_size}")


def quantizable(group_size: int):
    """class_predicate for nn.quantize: layers that can be quantized with this group size."""

    def predicate(path: str, module: nn.Module) -> bool:
        if not hasattr(module, "to_quantized") or isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return False
        weight = getattr(module, "weight", None)
        return weight is not None and weight.shape[-1] % group_size == 0

    return predicate


def quantize_csm(model: nn.Module, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Quantize `model` in place; return the config entry {"group_size", "bits"}."""
    check_bits(bits, group_size)
    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=quantizable(group_size))
    mx.eval(model.parameters())
    return {"group_size": group_size, "bits": bits}


def quantized_paths(model: nn.Module) -> list[str]:
    """Module paths that hold quantized weights (those with `.scales`)."""
    return sorted(k[: -len(".scales")] for k, _ in tree_flatten(model.parameters()) if k.endswith(".scales"))


def apply_quantization(model: nn.Module, quantization: dict, weight_names) -> None:
    """Make `model` ready to receive quantized weights: quantize (in place) every module whose
    `<path>.scales` is among `weight_names`. For loaders reading a quantized folder."""
    names = set(weight_names)
    group_size = int(quantization.get("group_size", DEFAULT_GROUP_SIZE))
    bits = int(quantization["bits"])

    def predicate(path: str, module: nn.Module) -> bool:
        return hasattr(module, "to_quantized") and f"{path}.scales" in names

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)


def write_quantized_model(source, out, bits: int, group_size: int = DEFAULT_GROUP_SIZE, progress=print) -> Path:
    """Load the model at `source` (name or folder), quantize it and write a model folder at `out`.

    The folder holds model.safetensors (our parameter names, quantized layers with .scales/.biases),
    config.json (the source's config plus "quantization") and every other file of the source
    (tokenizer, codec weights, voice prompts) copied unchanged.
    """
    from .weights import load_csm, resolve_model  # noqa: PLC0415 (CORE's loader; imported when used)

    check_bits(bits, group_size)
    src = resolve_model(str(source))
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise InputError("the output folder must differ from the source model folder")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty: choose a new folder")
    progress(f"loading {src}")
    model = load_csm(src)
    progress(f"quantizing to {bits} bits (group size {group_size})")
    entry = quantize_csm(model, bits, group_size)
    out.mkdir(parents=True, exist_ok=True)
    _copy_extras(Path(src), out)
    weights = dict(tree_flatten(model.parameters()))
    weights.update(_codec_weights(Path(src)))
    mx.save_safetensors(str(out / WEIGHTS_FILE), weights, metadata={"format": "mlx"})
    config = _read_config(Path(src))
    config["quantization"] = entry
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    progress(f"wrote {out}")
    return out


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _copy_extras(src: Path, out: Path) -> None:
    """Everything but the CSM weights and config: tokenizer, codec, prompts, README..."""
    for item in src.iterdir():
        if item.name == "config.json" or (item.suffix == ".safetensors" and item.name.startswith("model")):
            continue
        if item.name.endswith(".safetensors.index.json") or item.name.startswith("."):
            continue
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)


def _codec_weights(src: Path) -> dict:
    """Codec tensors stored beside the CSM weights (transformers layout: `codec_model.*`), kept as is."""
    found = {}
    for f in sorted(src.glob("model*.safetensors")):
        for k, v in mx.load(str(f)).items():
            if k.startswith("codec_model."):
                found[k] = v
    return found


def frame_logits_probe(model, tokens, mask, codes) -> mx.array:
    """Teacher-forced logits of one frame after a prompt: (1, K, V) float32. For comparing a model with
    its quantized self: rows (T, K+1) and mask, then the frame's codes (K,)."""
    h = model.backbone(model.embed_rows(mx.array(tokens)[None], mx.array(mask)[None]))  # (1, T, Db)
    return model.frame_logits(h[:, -1, :], mx.array(codes)[None]).astype(mx.float32)


def logit_error(reference: mx.array, other: mx.array) -> dict:
    """How far `other` logits (B, K, V) moved from `reference`: codebook 0 and all codebooks."""

    def stats(ref, oth):
        diff = mx.abs(ref - oth)
        max_abs = diff.max().item()
        return {
            "max_abs": max_abs,
            "rel": max_abs / max(mx.abs(ref).max().item(), 1e-12),
            "rms_rel": (mx.sqrt((diff * diff).mean()) / mx.sqrt((ref * ref).mean())).item(),
            "argmax_agree": (mx.argmax(ref, -1) == mx.argmax(oth, -1)).astype(mx.float32).mean().item(),
        }

    return {"codebook0": stats(reference[:, 0], other[:, 0]), "all": stats(reference, other)}
