"""Loading a CSM network from a model folder in any known layout (see layouts.py), quantized where
the checkpoint is. Missing, unexpected or misshapen keys raise WeightsError naming them (in the
checkpoint's own spelling)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from engine.csm import CSM
from engine.device import default_dtype as measured_default
from engine.errors import WeightsError, short_listing
from engine.files import read_config, read_weights

from .layouts import csm_config_from, detect_layout, map_names, source_name, unpermute_qk
from .resolve import resolve_model
from .sanity import check_tensors


def default_dtype():
    """The per-device default chosen by measurement (engine.device): bfloat16 on a GPU and on a CPU
    where the native CPU backend runs, float32 on other CPUs, `CSM_DTYPE` overriding any."""
    return measured_default()



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
    config = read_config(path)
    raw = read_weights(path)
    layout = detect_layout(config, raw.keys())
    model = build_csm(config, raw.keys())
    weights, source = map_names(raw, layout)
    check_weights(model, weights, source, layout, where=str(path))
    if layout == "transformers":
        weights = unpermute_qk(weights, model.config)
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
    check_tensors(weights, expected, source)
