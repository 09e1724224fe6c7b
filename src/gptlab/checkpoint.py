"""Training checkpoints: safetensors + JSON, written so that a kill at any moment loses nothing.

A checkpoint is a directory (`work_dir/last/`, `work_dir/best/`):

    config.json            {"model_type": "gptlab", "gptlab": {GPTConfig fields}}: GPT.from_pretrained loads it
    model.safetensors      the model's state dict with our own key names; a tied lm_head is not stored
    tokenizer.json         the tokenizer the model was trained with (gptlab.tokenizer.save_tokenizer)
    optimizer.safetensors  AdamW's per-parameter tensors, as "<parameter name>/<exp_avg|exp_avg_sq|step>"
    state.json             iteration, best val loss, optimizer hyperparameters, RNG states, train config

A model derived from a checkpoint without training (`gptlab convert`) has no state.json; its data.json keeps
the source run's data settings, so `gptlab eval` still finds the val split the model's numbers refer to.

Nothing is unpickled: loading reads safetensors and JSON only.

Atomicity. The whole checkpoint is first written to `last.new/`, then published with two renames:
`last/` -> `last.old/`, `last.new/` -> `last/`, and `last.old/` is removed. A rename is atomic, so at every
moment either `last/` or `last.old/` holds a complete checkpoint. Readers (sampling while a run trains) only
read: `published()` gives `last/`, or `last.old/` in the instant between the renames. Only the process that
holds the run's lock repairs: `recover()` renames `last.old/` back if a kill fell between the two renames, and
deletes a half-written `last.new/`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from .config import GPTConfig
from .model import GPT
from .options import UsageError
from .tokenizer import Tokenizer, load_tokenizer, save_tokenizer, tokenizer_for_model

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "RunLock",
    "checkpoint_iter",
    "copy_checkpoint",
    "data_reference",
    "find_checkpoint",
    "flatten_optimizer_state",
    "load_checkpoint",
    "load_model",
    "model_config",
    "read_config",
    "read_json",
    "lock_held",
    "published",
    "recover",
    "rng_state_from_json",
    "rng_state_to_json",
    "save_checkpoint",
    "unflatten_optimizer_state",
]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "state.json"
TOKENIZER_NAME = "tokenizer.json"
DATA_REF_NAME = "data.json"
# What locates a run's data (and its val split).
DATA_KEYS = ("data.path", "data.tokenizer", "data.cache_dir", "data.shards")
GPT2_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # hub ids whose config gptlab knows offline


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file or tensor and what to do.

    One type for every unusable checkpoint, gptlab's or Hugging Face's (gptlab.hf raises it too)."""


@dataclass
class Checkpoint:
    """Everything in a checkpoint directory, on CPU."""

    config: GPTConfig
    model_state: dict[str, torch.Tensor]  # includes lm_head.weight (re-tied) so load_state_dict(strict) works
    tokenizer: Tokenizer | None
    optimizer_state: dict[str, Any] | None = None  # torch's {"state": {name: {...}}, "param_groups": [...]}
    state: dict[str, Any] = field(default_factory=dict)  # state.json
    path: Path | None = None


# --------------------------------------------------------------------------------------------------------
# Small pieces: RNG states and optimizer state as safetensors + JSON
# --------------------------------------------------------------------------------------------------------


def rng_state_to_json(state: torch.Tensor) -> str:
    """A torch RNG state (a uint8 tensor) as base64 text, for state.json."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def rng_state_from_json(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def flatten_optimizer_state(optim_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a name-keyed optimizer state dict into (tensors for safetensors, the rest for JSON).

    optim_state is what torch.distributed.checkpoint.state_dict.get_optimizer_state_dict returns: per-parameter
    state keyed by parameter name, so it does not depend on parameter order or on how the model was sharded.
    """
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for name, per_param in optim_state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(name, {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()} for group in optim_state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "non_tensor_state": extra}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of flatten_optimizer_state."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, item = key.rpartition("/")
        state.setdefault(name, {})[item] = value
    for name, items in meta.get("non_tensor_state", {}).items():
        state.setdefault(name, {}).update(items)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _old(final: Path) -> Path:
    return final.with_name(final.name + ".old")


def _settle(final: Path) -> None:
    """Undo what a kill between a publish's renames left: `.old` is the checkpoint if `final` is missing, and
    a stale copy if `final` exists."""
    old = _old(final)
    if not final.exists() and old.is_dir():
        os.rename(old, final)
    elif old.exists() and final.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """Replace directory `final` by `tmp` so that a complete checkpoint exists at every instant (see top)."""
    _settle(final)  # never delete `.old` while it is the only complete copy
    old = _old(final)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _test_pause() -> None:
    """Test hook: GPTLAB_TEST_SLOW_SAVE=SECONDS sleeps between the files of a checkpoint write, so that
    tests/test_reliability.py can land SIGKILLs in the middle of one. Unset (always, outside tests): no-op."""
    seconds = os.environ.get("GPTLAB_TEST_SLOW_SAVE")
    if seconds:
        time.sleep(float(seconds))


def save_checkpoint(
    directory: str | Path,
    *,
    config: GPTConfig,
    model_state: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    optimizer_state: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (via `<directory>.new/`). Returns the directory."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".new")
    if tmp.exists():  # a half-written checkpoint from a killed run
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        if config.tie_embeddings:
            weights.pop("lm_head.weight", None)  # the same tensor as transformer.wte.weight
        _write_safetensors(tmp / MODEL_NAME, weights)
        _test_pause()
        _write_json(tmp / CONFIG_NAME, {"model_type": "gptlab", "architectures": ["GPT"], "gptlab": config.to_dict()})
        save_tokenizer(tokenizer, tmp / TOKENIZER_NAME)
        full_state = {"format_version": FORMAT_VERSION, **(state or {})}
        if optimizer_state is not None:
            tensors, meta = flatten_optimizer_state(optimizer_state)
            _write_safetensors(tmp / OPTIMIZER_NAME, tensors)
            full_state["optimizer"] = meta
        _test_pause()
        _write_json(tmp / STATE_NAME, full_state)  # written last: a checkpoint with state.json is complete
        for f in tmp.iterdir():
            f.chmod(0o644)  # ordinary files (safetensors and mkstemp create them owner-only)
        _fsync_dir(tmp)
        _test_pause()
        _publish(tmp, final)
    except OSError as e:  # disk full, read-only file system: one line saying what failed and that nothing is lost
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            e.errno, f"cannot write checkpoint {final} ({e.strerror or e}); the previous checkpoint there, if any, "
            "is intact: free some space or fix the permissions, then continue with --trainer.resume=True"
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy checkpoint directory src to dst with the same atomic publish (used for `best/`)."""
    src, final = Path(src), Path(dst)
    tmp = final.with_name(final.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(src, tmp)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def recover(directory: str | Path) -> None:
    """Finish or undo a publish that a kill interrupted (see the module docstring). Only for the holder of the
    run's lock: a reader repairing would race the writer (use published())."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".new")
    _settle(final)
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


def published(directory: str | Path) -> Path:
    """Where the checkpoint published as `directory` is now, without changing anything: the directory, or its
    `.old` twin while a publish is between its two renames (or was killed there)."""
    final = Path(directory)
    return _old(final) if not final.exists() and _old(final).is_dir() else final


def checkpoint_iter(directory: str | Path) -> int | None:
    """The training iteration a published checkpoint holds, or None (no checkpoint, or not a training one)."""
    path = published(directory) / STATE_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("iter")
    except (OSError, ValueError, AttributeError):
        return None


def find_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best", "last")) -> Path:
    """The checkpoint directory for `path`: itself if it holds config.json, else its first of `prefer`.

    CheckpointError when there is none.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; pass a run directory or a checkpoint directory")
    if (path / CONFIG_NAME).is_file():
        return path
    for name in prefer:
        found = published(path / name)
        if (found / CONFIG_NAME).is_file():
            return found
    raise CheckpointError(
        f"{path} holds no checkpoint (no config.json, and no {' or '.join(n + '/' for n in prefer)} inside); "
        "pass a run directory written by gptlab train or a model directory"
    )


def data_reference(directory: str | Path) -> dict[str, Any] | None:
    """The data settings a checkpoint's model was trained on ({"data.path": ..., ...}, None meaning the
    default), from its state.json or, for a converted model, its data.json; None when it has neither."""
    directory = Path(directory)
    if (directory / STATE_NAME).is_file():
        saved = read_json(directory / STATE_NAME).get("train_config", {})
        return {key: saved.get(key) for key in DATA_KEYS}
    if (directory / DATA_REF_NAME).is_file():
        saved = read_json(directory / DATA_REF_NAME)
        return {key: saved.get(key) for key in DATA_KEYS}
    return None


def read_json(path: Path) -> Any:
    """A checkpoint's JSON file; CheckpointError naming the file when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")  # CPU first: never straight onto a GPU (nanoGPT #158)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete") from None
    except Exception as e:  # truncated or corrupt file: safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is corrupt") from None


def config_from_json(raw: Any, path: Path) -> GPTConfig:
    """The GPTConfig a config.json holds (read from `path`, which errors name): gptlab's, a Hugging Face one
    (gpt2, llama, mistral, qwen3; see hf.config_from_hf), or the bare fields GPTConfig.save writes."""
    from .hf import config_from_hf  # here: hf imports this module (CheckpointError), so not at the top

    try:
        if isinstance(raw, dict) and "model_type" not in raw:  # GPTConfig.save: the fields alone
            return GPTConfig.from_dict(raw)
        return config_from_hf(raw)
    except (ValueError, TypeError) as e:  # CheckpointError, or GPTConfig's checks of the bare fields
        raise CheckpointError(f"{path}: {e}") from None


def read_config(directory: str | Path) -> GPTConfig:
    """The GPTConfig of a checkpoint directory's config.json (see config_from_json)."""
    path = Path(directory) / CONFIG_NAME
    return config_from_json(read_json(path), path)  # read_json's errors name the file already


def model_config(
    source: str | Path, prefer: tuple[str, ...] = ("best", "last"), hub: bool = True
) -> tuple[GPTConfig, Path | None]:
    """(GPTConfig, the checkpoint directory it came from) for any model a user may name, without reading weights:
    a run directory (its first checkpoint of `prefer`), a checkpoint or gptlab export directory, a Hugging Face
    directory, a config.json file, or, when `hub`, a Hugging Face hub id (GPT-2's sizes known offline, with directory
    None; others downloaded, with the download's folder). `gptlab info`, `train --init` and `runs` find a model's
    config here; load_model, which every command that loads weights uses, finds the same directory (find_checkpoint)
    and reads the same config.json with the same config_from_json. CheckpointError, one line, for a path that is none
    of these."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        return config_from_json(read_json(path), path), path.parent
    if path.exists() or not hub:
        directory = find_checkpoint(path, prefer)
        return read_config(directory), directory
    name = str(source).removeprefix("openai-community/")
    if name in GPT2_HUB_IDS:
        return GPTConfig.from_preset(name), None  # the hub's GPT-2 configs: vocab 50257, block 1024
    from .hf_files import resolve  # here: hf_files imports this module (CheckpointError)

    directory = resolve(str(source))  # a hub download, or one line saying the directory does not exist
    return read_config(directory), directory


def load_model(
    source: str | Path,
    which: Literal["best", "last"] = "best",
    device: torch.device | str | None = None,
    need_tokenizer: bool = True,
    flag: str | None = None,
    hint: str = "",
) -> tuple[GPT, Tokenizer | None, Path | None]:
    """(GPT in eval mode on `device` (default CPU), its tokenizer, its checkpoint directory or None) for any model a
    user may name: a run directory (its `which` checkpoint, else the other), a checkpoint, gptlab export or Hugging
    Face directory (found as model_config finds them), or a hub id (directory None). A model without a tokenizer
    gptlab can use comes with None if not need_tokenizer, else is refused in one line: a CheckpointError, or, for
    the value of a command-line `flag` (train's --init), a UsageError naming the flag and ending with `hint`."""
    path = Path(source).expanduser()
    other = "last" if which == "best" else "best"
    directory = find_checkpoint(path, (which, other)) if path.exists() else None
    model = GPT.from_pretrained(directory or str(source), device=device)  # a hub id: CheckpointError when offline
    try:
        name = f"{flag}={source}" if flag else str(source)  # how a refusal names the model
        tokenizer = tokenizer_for_model(directory, model.config.vocab_size, name)
    except ValueError as e:
        if need_tokenizer:
            raise (UsageError if flag else CheckpointError)(f"{e}; {hint}" if hint else str(e)) from None
        tokenizer = None
    return model, tokenizer, directory


def load_checkpoint(directory: str | Path, with_optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint directory written by save_checkpoint, on CPU. CheckpointError if it is unusable."""
    directory = published(directory)
    if not directory.is_dir():  # say so, rather than "config.json is missing; the checkpoint is incomplete"
        raise CheckpointError(f"checkpoint directory {directory} does not exist; check the path (a run's last/)")
    config = read_config(directory)
    weights = _read_safetensors(directory / MODEL_NAME)
    if config.tie_embeddings and "transformer.wte.weight" in weights:
        weights["lm_head.weight"] = weights["transformer.wte.weight"]
    tokenizer = None
    if (directory / TOKENIZER_NAME).is_file():
        try:
            tokenizer = load_tokenizer(directory / TOKENIZER_NAME)
        except ValueError as e:
            raise CheckpointError(f"{directory / TOKENIZER_NAME}: {e}") from None
    state: dict[str, Any] = {}
    optimizer_state = None
    if (directory / STATE_NAME).is_file():
        state = read_json(directory / STATE_NAME)
        if with_optimizer and "optimizer" in state:
            tensors = _read_safetensors(directory / OPTIMIZER_NAME)
            optimizer_state = unflatten_optimizer_state(tensors, state["optimizer"])
    return Checkpoint(config, weights, tokenizer, optimizer_state, state, directory)


# --------------------------------------------------------------------------------------------------------
# One process per run directory
# --------------------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on `work_dir/.lock` (fcntl.flock), held while a run trains there.

    The kernel drops the lock when the process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, work_dir: str | Path) -> None:
        self.path = Path(work_dir) / ".lock"
        self._file = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the lock is advisory anyway
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lifetime of the run
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise UsageError(
                f"another gptlab process is training in {self.path.parent} (it holds {self.path}); "
                "wait for it, or use another --system.work_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_held(work_dir: str | Path) -> bool:
    """Whether a live process holds `work_dir/.lock` now. Probing takes the lock for an instant, so only probe a
    lock that one long-lived process holds (gptlab compare's), never a run's that trainers take and retake."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock, so no lock is ever held
        return False
    try:
        f = open(Path(work_dir) / ".lock")  # noqa: SIM115 - closed below; read-only: never creates the file
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def maybe_lock(work_dir: str | Path, enabled: bool) -> Iterator[None]:
    """RunLock on rank 0 only (other ranks of a distributed run share rank 0's directory)."""
    if not enabled:
        yield
        return
    with RunLock(work_dir):
        yield
