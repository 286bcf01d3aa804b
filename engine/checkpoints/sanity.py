"""What a model folder may say: hyperparameters within sane bounds, and weights of the right kind.

A config.json with nonsense in it (a negative size, `max_position_embeddings: 1e9`, heads that do not
divide) would otherwise build a network that allocates hundreds of GiB or fails deep inside MLX; a
weight file with integer or NaN tensors would load and then speak noise or crash. Each is a
WeightsError naming the field (in config.json's own spelling) or the tensors.
"""

from __future__ import annotations

import math
import numbers

import mlx.core as mx

from engine.constants import NUM_CODEBOOKS
from engine.errors import WeightsError, short_listing

MAX_POSITIONS = 32_768  # CSM-1B has 2048; a KV cache this long is ~1 GiB per stream at full size
# (field, lowest, highest) of one Llama stack, our names; the config's own names are given too.
_STACK_BOUNDS = {
    "dim": (1, 16_384), "n_layers": (1, 256), "n_heads": (1, 1024), "n_kv_heads": (1, 1024),
    "head_dim": (2, 1024), "hidden_dim": (1, 131_072), "max_seq_len": (1, MAX_POSITIONS),
}
CONFIG_NAMES = {  # ours -> transformers config.json
    "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
    "hidden_dim": "intermediate_size", "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
}


def whole(value, field: str, where: str = "config.json") -> int:
    """A config value that must be a whole number (an int, or a float like 2048.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WeightsError(f"{where}: {field} must be a whole number, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise WeightsError(f"{where}: {field} must be a whole number, got {value!r}")
    return int(value)


def real(value, field: str, where: str = "config.json") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise WeightsError(f"{where}: {field} must be a finite number, got {value!r}")
    return float(value)


def check_stack(args, part: str, named: bool) -> None:
    """One Llama stack's hyperparameters (`named`: use transformers' field names in messages)."""
    def label(field: str) -> str:
        return f"{part}{CONFIG_NAMES[field] if named else field}"

    for field, (low, high) in _STACK_BOUNDS.items():
        value = whole(getattr(args, field), label(field))
        if not low <= value <= high:
            raise WeightsError(f"config.json: {label(field)} is {value}; it must be from {low} to "
                               f"{high}")
    if args.n_heads % args.n_kv_heads:
        raise WeightsError(f"config.json: {label('n_heads')} ({args.n_heads}) must be a multiple "
                           f"of {label('n_kv_heads')} ({args.n_kv_heads})")
    if args.head_dim % 2:
        raise WeightsError(f"config.json: {label('head_dim')} ({args.head_dim}) must be even "
                           "(RoPE rotates pairs)")
    eps = real(args.norm_eps, label("norm_eps"))
    if not 0 < eps < 1:
        raise WeightsError(f"config.json: {label('norm_eps')} is {eps}; it must be above 0 and "
                           "below 1")
    theta = real(args.rope_theta, label("rope_theta"))
    if not theta > 1:
        raise WeightsError(f"config.json: {label('rope_theta')} is {theta}; it must be above 1")
    for key, value in (args.rope_scaling or {}).items():
        if key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if not real(value, f"{part}rope_scaling.{key}") > 0:
                raise WeightsError(f"config.json: {part}rope_scaling.{key} must be above 0, got "
                                   f"{value!r}")


def check_config(config, named: bool) -> None:
    """A CSMConfig built from config.json: every size within bounds (WeightsError naming it)."""
    check_stack(config.backbone, "", named)
    check_stack(config.decoder, "depth_decoder_config." if named else "decoder ", named)
    vocab_names = (("text_vocab_size", "text_vocab_size"),
                   ("audio_vocab_size", "vocab_size" if named else "audio_vocab_size"))
    for field, name in vocab_names:
        value = whole(getattr(config, field), name)
        if not 1 <= value <= 1_048_576:
            raise WeightsError(f"config.json: {name} is {value}; it must be from 1 to 1048576")
    codebooks = whole(config.audio_num_codebooks, "num_codebooks" if named else "audio_num_codebooks")
    if codebooks != NUM_CODEBOOKS:
        raise WeightsError(f"config.json: {'num_codebooks' if named else 'audio_num_codebooks'} is "
                           f"{codebooks}; the Mimi codec makes {NUM_CODEBOOKS}")
    if config.decoder.max_seq_len < codebooks:
        raise WeightsError(f"config.json: the depth decoder's max_position_embeddings "
                           f"({config.decoder.max_seq_len}) must be at least num_codebooks "
                           f"({codebooks})")


def check_tensors(weights: dict, expected: dict, source: dict) -> None:
    """Weights of the kind the network holds: float where it computes in float (not integer), the
    integer words of quantized layers where it is quantized, and no NaN or infinity anywhere."""
    wrong_kind = []
    for name, value in weights.items():
        want = expected.get(name)
        if want is None:
            continue
        if mx.issubdtype(want.dtype, mx.floating) != mx.issubdtype(value.dtype, mx.floating):
            wrong_kind.append(f"{source.get(name, name)} ({value.dtype}, expected "
                              f"{'a float type' if mx.issubdtype(want.dtype, mx.floating) else want.dtype})")
    if wrong_kind:
        raise WeightsError("the weights have the wrong type: " + short_listing(wrong_kind)
                           + ". The file is not a CSM checkpoint, or it was damaged when written.")
    floats = [(name, value) for name, value in weights.items() if mx.issubdtype(value.dtype, mx.floating)]
    if not floats:
        return
    finite = mx.stack([mx.all(mx.isfinite(value)) for _, value in floats])
    bad = [source.get(name, name) for (name, _), ok in zip(floats, finite.tolist()) if not ok]
    if bad:
        raise WeightsError("the weights hold NaN or infinite values: " + short_listing(bad)
                           + ". The checkpoint is damaged (or was saved from a diverged run); "
                           "download or convert it again.")
