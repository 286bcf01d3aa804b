"""Reading model files: safetensors headers and weights, config.json, and the hub (downloads with
progress, errors turned into one clear WeightsError)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
from huggingface_hub import errors as hf_errors, hf_hub_download, snapshot_download

from engine.constants import CODEC_FALLBACK_FILE
from engine.errors import WeightsError

GATED_REPOS = {"sesame/csm-1b"}


def looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name)) and not name.endswith(".")


def hub_error(repo_id: str, what: str, err: Exception) -> WeightsError:
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


def hub_snapshot(repo_id: str, patterns: list[str], what: str = "the model files") -> str:
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)  # shows tqdm progress bars
    except Exception as err:  # huggingface_hub raises many types; all become one clear message
        raise hub_error(repo_id, what, err) from err


def hub_file(repo_id: str, filename: str) -> Path:
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as err:
        raise hub_error(repo_id, filename, err) from err



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


def read_json(file: Path) -> dict:
    """A JSON file's object; WeightsError when it cannot be read."""
    try:
        return json.loads(Path(file).read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{file} is not readable JSON: {err}") from err


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise WeightsError(f"{path} has no config.json; is it a CSM model folder?")
    return read_json(f)


def indexed_shards(path: Path) -> list[Path] | None:
    """The shards that model.safetensors.index.json lists (all present), or None without an index."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return None
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise WeightsError(f"{index} has no weight_map")
    files = [path / s for s in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise WeightsError(f"{path}: shards listed in {index.name} are missing: {', '.join(missing)}")
    return files


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of the network (sharded or not), codec-only files left out."""
    files = indexed_shards(path)
    if files is not None:
        return files
    files = sorted(f for f in path.glob("*.safetensors") if f.name != CODEC_FALLBACK_FILE)
    if not files:
        pts = [f.name for f in path.glob("*.pt")]
        extra = f" (found {', '.join(pts)}: convert it to safetensors)" if pts else ""
        raise WeightsError(f"{path} has no .safetensors weights{extra}")
    return files


def read_weights(path: Path) -> dict[str, mx.array]:
    weights = {}
    for f in weight_files(path):
        try:
            weights.update(mx.load(str(f)))
        except Exception as err:  # a truncated or foreign file
            raise WeightsError(f"{f} could not be read as safetensors: {err}") from err
    return weights
