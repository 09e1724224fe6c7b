"""A Hugging Face checkpoint's files: a local directory or a Hub download, config.json, and the weights
(model.safetensors, sharded safetensors, or pytorch_model.bin read with torch.load(weights_only=True), which is
designed not to run code). hf.py maps what these return onto GPT; every problem is a one-line CheckpointError.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, BIN_NAME, BIN_INDEX_NAME)
# A Hugging Face directory's tokenizer, copied along when gptlab rewrites its model (convert, export).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                      "vocab.json", "merges.txt", "generation_config.json")


_LOCAL_HINT = "pass a local directory containing config.json and model.safetensors"



def one_line(e: BaseException | str) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def resolve(path_or_name: str | Path) -> Path:
    """A local checkpoint directory: path_or_name itself, or a Hugging Face Hub download."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a file, not a checkpoint directory; pass the directory that holds config.json "
                "and the weights"
            )
        return path
    name = str(path_or_name)
    looks_local = (
        isinstance(path_or_name, Path)
        or name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or (name.count("/") == 1 and Path(name.split("/")[0]).is_dir())  # out/typo: a local folder's child
        or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?", name)
    )
    if looks_local:
        raise CheckpointError(
            f"checkpoint directory {name} does not exist; {_LOCAL_HINT} (or a Hugging Face Hub id such as 'gpt2')"
        )
    return _download(name)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _download(repo_id: str) -> Path:
    """config.json and the weights of a Hub repo (model*.safetensors, else pytorch_model*.bin)."""

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(
            f"no local directory {repo_id!r}, and it could not be fetched from the Hugging Face Hub ({reason}); "
            f"check the path, or {_LOCAL_HINT}"
        )

    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise fail("huggingface_hub is not installed") from None
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    kwargs = dict(local_files_only=offline, etag_timeout=5)
    try:
        local = Path(snapshot_download(
            repo_id, allow_patterns=[CONFIG_NAME, "model*.safetensors", SAFETENSORS_INDEX_NAME], **kwargs
        ))
        if not (local / SAFETENSORS_NAME).exists() and not (local / SAFETENSORS_INDEX_NAME).exists():
            local = Path(snapshot_download(
                repo_id, allow_patterns=[CONFIG_NAME, "pytorch_model*.bin", BIN_INDEX_NAME], **kwargs
            ))
    except Exception as e:  # offline, unknown repo, gated repo, network errors: all one short message
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

        if offline:
            reason = "offline (HF_HUB_OFFLINE is set) and not in the local cache"
        elif isinstance(e, GatedRepoError):
            reason = "gated: accept its terms on the Hub, then `hf auth login`"
        elif isinstance(e, RepositoryNotFoundError):
            reason = "no such repository, or a private one"
        elif isinstance(e, LocalEntryNotFoundError):  # what a failed connection surfaces as
            reason = "the Hub could not be reached and it is not in the local cache"
        else:
            reason = one_line(e)
        raise fail(reason) from None
    return local


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        runs = [directory / d for d in ("best", "last") if (directory / d / CONFIG_NAME).is_file()]
        if runs:  # a `gptlab train` work dir: its checkpoints are one level down
            raise CheckpointError(f"{directory} is a training run; load one of its checkpoints: {runs[0]}")
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME}; a checkpoint directory needs config.json next to the weights "
            "(save it with save_pretrained)"
        )
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({one_line(e)}); restore or re-save it") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(hf).__name__}")
    return hf


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete, re-download or re-save it") from None
    except Exception as e:  # SafetensorError and friends: truncated header, data past the end, garbage
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({one_line(e)}); it is truncated or corrupt, "
            "re-download or re-save it"
        ) from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete, re-download or re-save it") from None
    except Exception as e:  # UnpicklingError beyond plain tensors; corrupt zip; EOF. re.sub: drop torch's bold codes
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} cannot be loaded safely with torch.load(weights_only=True) ({one_line(first)}); "
            "it is corrupt or holds more than tensors (possibly code); convert it to model.safetensors "
            "from a trusted source"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(
            f"{path} does not hold a flat state dict (name -> tensor); save model.state_dict() there"
        )
    return obj


def _load_index(path: Path, loader: Callable[[Path], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        files = sorted(set(weight_map.values()))
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a valid shard index ({one_line(e)}); it needs a \"weight_map\" of tensor -> file"
        ) from None
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        shard = path.parent / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{path} names shard {name!r} outside the checkpoint directory")
        tensors.update(loader(shard))
    return tensors


def load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHT_NAMES:
        path = directory / name
        if path.is_file():
            if name == SAFETENSORS_NAME:
                return _load_safetensors(path), path
            if name == SAFETENSORS_INDEX_NAME:
                return _load_index(path, _load_safetensors), path
            if name == BIN_NAME:
                return _load_bin(path), path
            return _load_index(path, _load_bin), path
    raise CheckpointError(
        f"{directory} has no weights file (looked for {', '.join(WEIGHT_NAMES)}); put the weights there "
        "as model.safetensors"
    )
