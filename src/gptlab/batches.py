"""The (x, y) batches of a training run: drawn at random, or read in order through the train split.

    --data.order=random      nanoGPT's sampler: B windows at random offsets, from a generator whose state is
                             checkpointed (every rank draws the same global batch and takes its rows)
    --data.order=sequential  build-nanogpt's DataLoaderLite / llm.c's dataloader: the train tokens read front to
                             back, B*T at a time, wrapping around at the end of an epoch; the position is checkpointed

Both are independent of the number of processes: a step's global micro-batch is the same rows whether one
process or N compute it; with N, rank r takes the r-th share of the rows. Sequentially that is build-nanogpt's
stride: rank r reads the r-th block of B*T+1 tokens of the step (B rows per rank), the next step starts where the
last rank stopped, so no two ranks ever read the same window.

`estimate_loss` averages the loss over fixed random batches of each split. Also the batch arithmetic a run starts
with: gradient accumulation from --trainer.micro_batch_size, steps from --trainer.max_tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import distributed
from .data import DataError
from .options import UsageError


@dataclass
class Batches:
    """(x, y) batches for one rank: `get` draws random windows (eval, and training in random order), `next_train`
    gives the next training micro-batch in the run's order."""

    data: Any  # gptlab.data.TokenData (train/val: a uint16 memmap, or shards.ShardedTokens)
    micro_batch: int  # rows per micro-step over all ranks
    block_size: int
    info: distributed.DistInfo
    order: str = "random"  # --data.order
    position: int = 0  # sequential: the next train token to read (rank 0's first), in the whole train split
    epoch: int = 0  # sequential: how many times the train split was read through

    def get(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows. Every rank draws the same global batch (same generator state), so the run does not
        depend on the number of processes: with N processes each computes the loss on 1/N of the same rows."""
        x, y = self.data.get_batch(split, self.micro_batch, self.block_size, generator)
        rows = slice(self.info.rank * self.per_rank, (self.info.rank + 1) * self.per_rank)
        return self._to_device(x[rows], y[rows])

    def next_train(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training micro-batch: random windows, or the next B*T tokens of each rank in order."""
        if self.order == "random":
            return self.get("train", generator)
        T, train = self.block_size, self.data.train
        step_tokens = self.micro_batch * T  # all ranks together
        if self.position + step_tokens + 1 > len(train):  # too few left for a whole step: the next epoch
            self.position, self.epoch = 0, self.epoch + 1
        start = self.position + self.info.rank * self.per_rank * T
        # B*T+1 tokens: x is the first B*T, y the same shifted by one (the +1 is the next rank's first token).
        buf = torch.from_numpy(np.asarray(train[start : start + self.per_rank * T + 1]).astype(np.int64))
        self.position += step_tokens
        return self._to_device(buf[:-1].view(self.per_rank, T), buf[1:].view(self.per_rank, T))

    @property
    def per_rank(self) -> int:
        return self.micro_batch // self.info.world_size

    def check(self) -> None:
        """Sequential order needs one whole step of train tokens; DataError (one line) otherwise."""
        need = self.micro_batch * self.block_size + 1
        if self.order == "sequential" and len(self.data.train) < need:
            raise DataError(f"--data.order=sequential reads {self.micro_batch} x {self.block_size} + 1 = {need:,} "
                            f"train tokens a micro-step; the train split has {len(self.data.train):,}: use more data "
                            "or a smaller batch")

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.info.device.type == "cuda":  # pinned memory: the copy overlaps with compute
            return (x.pin_memory().to(self.info.device, non_blocking=True),
                    y.pin_memory().to(self.info.device, non_blocking=True))
        return x.to(self.info.device), y.to(self.info.device)

    # ------------------------------------------------------------------ the position, in checkpoints

    def state(self) -> dict[str, Any] | None:
        """The sequential position for a checkpoint: shard file and offset in it (readable, and checked on resume
        against the shards there then), and the epoch. None in random order (the generator's state is saved)."""
        if self.order == "random":
            return None
        shard, offset, name = self._locate(self.position)
        return {"order": "sequential", "epoch": self.epoch, "shard": shard, "offset": offset, "file": name}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Continue at a checkpoint's position (a run that was in random order starts its sequential read at 0)."""
        if self.order == "random" or not state:
            return
        paths = getattr(self.data.train, "paths", None)
        if paths is not None and (state["shard"] >= len(paths) or paths[state["shard"]].name != state["file"]):
            raise DataError(f"the checkpoint was reading train shard {state['file']} (number {state['shard']}), which "
                            "is not there now: the shards changed since; resume with the shards it trained on")
        starts = getattr(self.data.train, "starts", [0])
        self.position, self.epoch = int(starts[state["shard"]]) + state["offset"], state["epoch"]

    def _locate(self, position: int) -> tuple[int, int, str | None]:
        """(shard index, offset in it, its file name) of a position in the train split (one file: 0, position)."""
        starts, paths = getattr(self.data.train, "starts", None), getattr(self.data.train, "paths", None)
        if starts is None or paths is None:
            return 0, position, None
        shard = int(np.searchsorted(starts, position, side="right")) - 1
        shard = min(shard, len(paths) - 1)  # the end of the split: past the last shard's last token
        return shard, position - int(starts[shard]), paths[shard].name


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, batches: Batches, eval_iters: int, seed: int, autocast: Callable, grad_accum: int = 1
) -> dict[str, float]:
    """Mean loss over eval_iters full batches of each split, each in grad_accum micro-batches as in training.
    The same rows every time (a fixed seed) whatever grad_accum and the number of processes, so eval losses
    are comparable across evals and runs; evaluating never disturbs the training RNGs."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(seed)
        total = torch.zeros((), device=batches.info.device)
        for _ in range(eval_iters * grad_accum):
            x, y = batches.get(split, generator)
            with autocast():
                _, loss = model(x, y)
            total += loss.float()
        out[split] = distributed.all_reduce_mean(total / (eval_iters * grad_accum)).item()
    model.train()
    return out


# ------------------------------------------------------------------------------------ the batch arithmetic


def grad_accum_for(t: Any, world_size: int) -> int:
    """Micro-steps per optimizer step: --trainer.grad_accum, or batch_size / (micro_batch_size x processes) when
    --trainer.micro_batch_size is set (the gpt2-124m preset: 512 rows = 64 x 8 steps on 1 GPU, 64 x 1 on 8)."""
    if t.micro_batch_size is None:
        return t.grad_accum
    per_step = t.micro_batch_size * world_size
    if t.batch_size % per_step:
        raise UsageError(f"--trainer.batch_size={t.batch_size} must be a multiple of --trainer.micro_batch_size="
                         f"{t.micro_batch_size} x processes ({world_size}) = {per_step}")
    return t.batch_size // per_step


def steps_for_tokens(max_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps of a --trainer.max_tokens budget (whole steps: build-nanogpt's 10B / 524,288 = 19,073)."""
    steps = max_tokens // tokens_per_step
    if steps < 1:
        raise UsageError(f"--trainer.max_tokens={max_tokens:,} is less than one step ({tokens_per_step:,} tokens = "
                         "batch_size x block_size); raise it or lower --trainer.batch_size")
    return steps


def describe_step(t: Any, block_size: int, world_size: int, order: str) -> str:
    """The start-up line of a run's step: 'tokens per step: 524,288 = 64 rows x 1024 tokens x 8 accumulation x 1
    process, 19,073 steps for --trainer.max_tokens=10,000,000,000; batches in order, each process its own block'."""
    rows = t.batch_size // (t.grad_accum * world_size)
    budget = f", {t.max_iters:,} steps for --trainer.max_tokens={t.max_tokens:,}" if t.max_tokens else ""
    how = "in order, each process its own block" if order == "sequential" else "at random"
    return (f"tokens per step: {t.batch_size * block_size:,} = {rows} rows x {block_size} tokens x {t.grad_accum} "
            f"accumulation x {world_size} process{'es' if world_size > 1 else ''}{budget}; batches {how}")
