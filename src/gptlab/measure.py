"""What `gptlab compare` measures of its trained variants: val loss at 1x, 2x and 4x the context, decode speed,
and (once every run is done) train and decode speed of all variants side by side."""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import hardware
from .info import model_stats
from .model import GPT
from .rundir import read_metrics
from .train import TrainerConfig, make_optimizer


def device_name(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


@torch.no_grad()
def eval_loss(model: GPT, data: Any, context: int, batches: int, batch_size: int, seed: int = 0) -> float | None:
    """Mean val loss on fixed random windows of `context` tokens; None where the model cannot see that far."""
    c = model.config
    if c.pos_emb == "learned" and context > c.block_size:
        return None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = data.get_batch("val", batch_size, context, gen, device)
        total += model(x, y)[1].item()
    return total / batches


@torch.no_grad()
def decode_tokens_per_s(model: GPT, n: int) -> float:
    """Tokens/s generating n tokens (batch 1, KV cache, greedy) after a one-token prompt."""
    c = model.config
    n = min(n, c.block_size - 1) if c.pos_emb == "learned" else n
    device = next(model.parameters()).device
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    model.generate(idx, min(n, 8), temperature=0.0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(idx, n, temperature=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def measure(work_dir: Path, data: Any, eval_batches: int, decode_tokens: int, batch_size: int,
            peak_mem: int | None, device: torch.device) -> dict[str, Any]:
    """result.json of a finished run: losses, extrapolation, speeds, sizes."""
    loaded = ckpt.load_checkpoint(work_dir / "last", with_optimizer=False)
    model = GPT(loaded.config)
    model.load_state_dict(loaded.model_state)
    model.to(device).eval()
    c = model.config
    rows = read_metrics(work_dir)
    evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
    speed = [(r["elapsed_s"], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
    stats = model_stats(c, batch=batch_size)
    extrap = {
        f"{m}x": eval_loss(model, data, m * c.block_size, eval_batches, max(1, batch_size // m)) for m in (1, 2, 4)
    }
    return {
        "config": c.to_dict(),
        "iters": loaded.state.get("iter"),
        "final_val_loss": evals[-1][1] if evals else None,
        # How each loss was measured: the trainer's last eval averages eval_iters batches; the extrapolation
        # columns average eval_batches batches of other windows. Neither is the whole split (`gptlab eval`).
        "eval_iters": loaded.state.get("train_config", {}).get("trainer.eval_iters"),
        "eval_batches": eval_batches,
        "val_curve": evals,
        "tokens_per_s_curve": speed,
        "train_tokens_per_s": statistics.median(s for _, s in speed) if speed else None,
        "decode_tokens_per_s": decode_tokens_per_s(model, decode_tokens),
        "params": stats.total_params,
        "non_embedding_params": stats.non_embedding_params,
        "active_params": stats.active_params,  # what a token runs through: less than params with experts
        "kv_bytes_per_token": stats.kv_bytes_per_token,
        "flops_per_token": stats.flops_forward_per_token,
        "peak_memory_bytes": peak_mem,
        "est_train_memory_bytes": stats.train_memory_bytes,
        "extrapolation": extrap,
        **moe_balance(rows),
    }


def moe_balance(rows: list[dict[str, Any]], last: int = 5) -> dict[str, Any]:
    """Where training left the routers of an MoE run: the fraction of routing slots per expert (moe_load) and the
    load-balancing loss, each the mean of the last `last` logged steps (one step's batch is noisy); {} if dense."""
    logged = [r for r in rows if "moe_load" in r][-last:]
    if not logged:
        return {}
    return {"moe_load": [statistics.fmean(col) for col in zip(*(r["moe_load"] for r in logged), strict=True)],
            "moe_aux_loss": statistics.fmean(r["moe_aux_loss"] for r in logged)}


def measure_speeds(out: Path, grid: dict[str, dict[str, Any]], preset: dict[str, Any], device: torch.device,
                   rounds: int = 9, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train-step and decode tokens/s of every variant (seed 0's trained weights), measured round-robin.

    Each run's own tokens/s is logged while the machine does whatever else it does; a speed compared across
    variants must be measured under the same conditions, so every round times each variant once, in turn,
    and the report takes the median over rounds. Training: forward + backward + AdamW on one batch of the
    preset's shape, on a copy of the weights. Decoding: greedy with the KV cache from a one-token prompt.
    """
    batch, tokens = int(preset["trainer"]["batch_size"]), int(preset["decode_tokens"])
    # The step in the dtype the runs trained in (what --trainer.dtype=auto picks on this device, or as given).
    dtype = str(preset["trainer"].get("dtype", "auto"))
    bf16 = dtype == "bfloat16" or (dtype == "auto" and hardware.bf16_autocast_pays(device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    lasts = {name: out / "runs" / f"{name}-s0" / "last" for name in grid}
    trained = {name: GPT.from_pretrained(last).to(device).eval() for name, last in lasts.items() if last.is_dir()}
    # One decode length for all: learned positions stop at block_size.
    n = min([tokens] + [m.config.block_size - 1 for m in trained.values() if m.config.pos_emb == "learned"])
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    steps: dict[str, Callable[[], None]] = {}
    decodes: dict[str, Callable[[], None]] = {}
    train_tokens: dict[str, int] = {}
    for name, model in trained.items():
        c = model.config
        learner = copy.deepcopy(model).train()
        opt = make_optimizer(learner, TrainerConfig(), fused=True)  # as the trainer does
        gen = torch.Generator().manual_seed(0)
        x, y = (torch.randint(0, c.vocab_size, (batch, c.block_size), generator=gen).to(device) for _ in range(2))

        def step(m: GPT = learner, o: torch.optim.Optimizer = opt, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = m(x, y)[1]
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)

        steps[name], train_tokens[name] = step, batch * c.block_size
        decodes[name] = lambda m=model: m.generate(prompt, n, temperature=0.0)
    if not steps:
        return {}
    say(f"[compare] speed: {len(steps)} variants side by side, {rounds} rounds")
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "decode": []} for name in steps}
    for fns in (steps, decodes):  # warm-up: allocator, thread pools, first-call kernel choices
        for f in fns.values():
            f()
    for _ in range(rounds):
        for name in steps:
            for kind, f in (("train", steps[name]), ("decode", decodes[name])):
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                times[name][kind].append(time.perf_counter() - t0)
    result = {}
    for name, t in times.items():
        result[name] = {
            "train_tokens_per_s": train_tokens[name] / statistics.median(t["train"]),
            "decode_tokens_per_s": n / statistics.median(t["decode"]),
            "train_tokens_per_step": train_tokens[name], "decode_tokens": n,
        }
    return {"rounds": rounds, "load_average": list(os.getloadavg()), "threads": torch.get_num_threads(),
            "device": device_name(device) + (", bf16 autocast" if bf16 else ""), "variants": result}
