"""Several processes, one model: DDP and FSDP2 under torchrun, and plain single-process training.

    torchrun --nproc_per_node=2 -m gptlab train ...                            # DDP (gloo on CPU, NCCL on CUDA)
    torchrun --nproc_per_node=2 -m gptlab train --trainer.strategy=fsdp ...    # FSDP2: parameters sharded

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process and every function here
is a no-op or an identity. The trainer never branches on the strategy except through this file:

* `setup` picks the device (cuda:LOCAL_RANK under torchrun) and joins the process group.
* `wrap` applies DDP (gradients all-reduced) or FSDP2 (`fully_shard` on each Block, then on the root).
* `full_state` gathers the model and optimizer state as full, unsharded, name-keyed CPU tensors, the
  same whatever the strategy, so a checkpoint from a sharded run loads in a single process and vice versa.
* `load_optimizer_state` shards a full optimizer state back onto this process's parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "any_rank",
    "full_state",
    "gather_objects",
    "load_optimizer_state",
    "resolve_device",
    "setup",
    "teardown",
    "wrap",
]


@dataclass
class DistInfo:
    """Where this process stands: rank among world_size processes, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, flag: str = "--trainer.device") -> torch.device:
    """"auto" -> cuda (this process's GPU under torchrun) if there is one, else cpu. ValueError (naming the
    flag the user set) if unusable."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag}: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag}=cuda but torch sees no CUDA GPU; use {flag}=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag}={name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag}=mps but MPS is not available; use {flag}=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag}: unsupported device type {device.type!r}; use cpu, cuda or mps")
    return device


def setup(device: str) -> DistInfo:
    """Join the torchrun process group if there is one (gloo on CPU, NCCL on CUDA) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "mps":
            raise ValueError("multi-process training needs cpu or cuda devices, not mps")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """The model to train: itself (one process), DDP(model), or model sharded in place by FSDP2.

    FSDP2 shards each transformer Block as its own unit (its parameters are gathered just for its forward
    and backward), then the root, which owns the embeddings, the final norm and the lm_head.
    """
    if not info.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"--trainer.strategy must be ddp or fsdp, got {strategy!r}")


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(model state dict, optimizer state dict), full and on CPU, keyed by parameter name.

    A collective under FSDP: every rank must call it; the tensors are only complete on rank 0 (cpu_offload
    keeps the other ranks from holding a full copy). `model` is the unwrapped GPT (sharded in place by FSDP).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return model_state, optim_state


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state (as full_state returns) into this process's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (itself in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank, so that all ranks stop at the same step."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
