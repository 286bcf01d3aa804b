"""Checkpoints: model names -> folders (resolve.py), reading files and the hub (files.py), the key
layouts that exist (layouts.py), loading a network (load.py), converting and quantizing (convert.py)
and the tiny random models in the real formats (tiny.py). Arrows point from here toward the network
(engine/csm.py, engine/llama.py), never back."""

from engine.files import safetensors_keys
from .layouts import detect_layout, source_name
from .load import build_csm, check_weights, load_csm
from .resolve import CodecSource, codec_source, load_tokenizer_path, resolve_model

__all__ = [
    "CodecSource", "build_csm", "check_weights", "codec_source", "detect_layout", "load_csm",
    "load_tokenizer_path", "resolve_model", "safetensors_keys", "source_name",
]
