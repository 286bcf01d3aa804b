"""Converting a model folder: `write_quantized_model(src, out, bits)` loads a CSM, quantizes it
(engine/quantize.py) and writes a folder in our layout (see dialogue/cli/convert.py).

The result is recorded the way mlx-community conversions record it, in config.json:
`"quantization": {"group_size": 64, "bits": 4}`; the loader (load.py) quantizes the modules
whose `<path>.scales` are present in the file before loading the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from engine.errors import InputError
from engine.quantize import DEFAULT_GROUP_SIZE, check_bits, quantize_csm, quantized_paths

from .load import load_csm
from .resolve import resolve_model

WEIGHTS_FILE = "model.safetensors"


def write_quantized_model(source, out, bits: int, group_size: int = DEFAULT_GROUP_SIZE, progress=print) -> Path:
    """Load the model at `source` (name or folder), quantize it and write a model folder at `out`.

    The folder holds model.safetensors (our parameter names, quantized layers with .scales/.biases),
    config.json (the source's config plus "quantization") and every other file of the source
    (tokenizer, codec weights, voice prompts) copied unchanged.
    """
    check_bits(bits, group_size)
    src = resolve_model(str(source))
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise InputError("the output folder must differ from the source model folder")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty: choose a new folder")
    _refuse_quantized(_read_config(Path(src)).get("quantization")
                      or _read_config(Path(src)).get("quantization_config"), src)
    progress(f"loading {src}")
    model = load_csm(src)
    if quantized_paths(model):  # quantized weights whatever the config says
        _refuse_quantized({}, src)
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


def _refuse_quantized(entry, src) -> None:
    """A quantized model is not quantized again: its layers would keep their old bits while the
    new config claimed others (and re-quantizing quantized weights compounds the error)."""
    if entry is None:
        return
    bits = f" to {entry['bits']} bits" if isinstance(entry, dict) and "bits" in entry else ""
    raise InputError(f"the model at {src} is already quantized{bits}; convert the float model it "
                     "was made from instead (e.g. csm convert --model sesame/csm-1b --quantize 4 "
                     "-o csm-1b-4bit)")


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
