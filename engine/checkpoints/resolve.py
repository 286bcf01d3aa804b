"""Model names -> local folders: `tiny-random` (built offline), a folder, or a hub id (downloaded,
cached); and where a model's tokenizer and Mimi codec come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from engine.constants import (
    CODEC_FALLBACK_FILE,
    CODEC_FALLBACK_REPO,
    DEFAULT_MODEL,
    TINY_MODEL,
    TOKENIZER_FALLBACK_REPO,
)
from engine.errors import WeightsError
from engine.files import hub_file, hub_snapshot, looks_like_hub_id, read_config, safetensors_keys, weight_files

from .tiny import tiny_random_path

# What a model repo needs to be run by us (never the multi-GB ckpt.pt duplicates).
MODEL_FILE_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "prompts/*",
]


def resolve_model(name_or_path: str | Path) -> Path:
    """The local folder of a model: `tiny-random`, a folder, or a hub id (downloaded, cached)."""
    name = str(name_or_path)
    if name == TINY_MODEL:
        return tiny_random_path()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise WeightsError(f"{path} is a file; give the folder that holds config.json and the weights")
    if not looks_like_hub_id(name):
        raise WeightsError(f"no model folder at {path}; give an existing folder, a hub id such as "
                           f"{DEFAULT_MODEL}, or {TINY_MODEL!r}")
    return Path(hub_snapshot(name, MODEL_FILE_PATTERNS))



def load_tokenizer_path(path: str | Path) -> Path:
    """The model's tokenizer.json, else the public Llama-3.2 one (unsloth/Llama-3.2-1B)."""
    local = Path(path) / "tokenizer.json"
    if local.is_file():
        return local
    return hub_file(TOKENIZER_FALLBACK_REPO, "tokenizer.json")


@dataclass
class CodecSource:
    """Where the Mimi weights come from. Exactly one of `weights` and `file` is set.

    weights: transformers MimiModel tensors (the `codec_model.` prefix removed) with `config`, the
             checkpoint's `codec_config` dict (transformers MimiConfig fields);
    file:    what engine.mimi.load_mimi reads: a Kyutai-layout Mimi file (the public fallback), or a
             folder holding a codec (`codec/` beside the weights, as tiny.py writes for the
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
    config = read_config(path)
    weights = {}
    for f in weight_files(path):
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
    return CodecSource(file=hub_file(CODEC_FALLBACK_REPO, CODEC_FALLBACK_FILE))
