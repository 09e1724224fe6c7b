"""gptlab train: train a GPT on a text file, on one CPU, one GPU, or many through torchrun.

    gptlab train                                              # char-level Shakespeare, ~5 min on 2 CPU cores
    gptlab train --data.path=input.txt --data.tokenizer=gpt2 --model.preset=gpt2-modern --model.n_layer=6
    gptlab train --system.work_dir=out/demo --trainer.resume=True --trainer.max_iters=5000   # train longer
    torchrun --nproc_per_node=4 -m gptlab train --trainer.strategy=fsdp ...

Read this file top to bottom:

1. The pieces: learning-rate schedule, optimizer, pretrained weights, samples.
2. Training, in phases: prepare the run directory (`rundir.claim`), build the data, model and optimizer
   (`_build`), resume (`_resume`), the loop (`_loop`, one screen), finish (`_finish`).
3. `main`: the `gptlab train` command.

The settings (`TrainConfig`, run presets, flags) are in train_config.py; the run directory (lock, metrics, loss
plot, RNG states) in rundir.py; the batches (random, or in order through the shards) and loss estimates in
batches.py. The training loop is nanoGPT's (AdamW with decay on matrices only, warmup +
cosine, gradient accumulation, clipping, bf16 autocast on CUDA), made resumable to the bit: the batch sampler
and dropout draw from RNGs whose states are checkpointed (a sequential read, its position), so 20 iterations
straight and 10 + resume + 10 give identical losses on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import api, autotune, distributed, hardware, hellaswag, moe, rundir, tracking
from . import checkpoint as ckpt
from .batches import Batches, describe_step, estimate_loss, grad_accum_for, steps_for_tokens
from .config import GPTConfig
from .data import default_data_path, prepare_dataset
from .finetune import crop_state, finetune_config
from .info import model_stats
from .model import GPT
from .options import UsageError, flatten, model_config_from_dict
from .rundir import plot_losses, read_metrics
from .shards import shard_dataset
from .tokenizer import save_tokenizer
from .train_config import (
    RUN_PRESETS,
    TRAIN_OPTIONS,
    DataConfig,
    SystemConfig,
    TrainConfig,
    TrainerConfig,
    check_config,
    data_vocab_size,
    default_cache_dir,
    format_config,
    parse_train_args,
    resume_config,
    train_help,
)

# What `from gptlab.train import ...` has always given: the settings and the run directory's files live in
# train_config.py and rundir.py now.
__all__ = [
    "RUN_PRESETS", "TRAIN_OPTIONS", "Batches", "DataConfig", "GPTConfig", "Run", "SystemConfig", "TrainConfig",
    "TrainerConfig", "check_config", "command", "data_vocab_size", "default_cache_dir", "estimate_loss",
    "learning_rate", "main", "make_optimizer", "model_config_from_dict", "parse_train_args",
    "plot_losses", "read_metrics", "resume_config", "sample_hint", "sample_text",
    "train", "train_help",
]

# ========================================================================================================
# 1. The pieces
# ========================================================================================================


def learning_rate(step: int, t: TrainerConfig) -> float:
    """nanoGPT's schedule: linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat."""
    min_lr = t.learning_rate / 10 if t.min_lr is None else t.min_lr
    decay_iters = t.max_iters if t.lr_decay_iters is None else t.lr_decay_iters
    if step < t.warmup_iters:
        return t.learning_rate * (step + 1) / (t.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - t.warmup_iters) / max(1, decay_iters - t.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.learning_rate - min_lr)


def make_optimizer(model: torch.nn.Module, t: TrainerConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases and norm gains are not pulled towards zero."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights appear once
    decay = [p.dim() >= 2 and not n.endswith("bias") for n, p in params]  # experts' biases are (n_expert, out)
    groups = [
        {"params": [p for (_, p), d in zip(params, decay, strict=True) if d], "weight_decay": t.weight_decay},
        {"params": [p for (_, p), d in zip(params, decay, strict=True) if not d], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=fused or None)


def sample_text(model: GPT, tokenizer: Any, max_new_tokens: int, device: torch.device, seed: int) -> str:
    """A sample from a newline (or token 0), temperature 0.8, top_k 200, no longer than the model was trained
    on (block_size) unless a sliding window makes longer contexts look like the training ones."""
    try:
        prompt = tokenizer.encode("\n") or [0]
    except ValueError:  # a char vocabulary without "\n"
        prompt = [0]
    c, n = model.config, max_new_tokens
    slides = c.pos_emb == "rope" and c.window is not None and c.window <= c.block_size and c.layer_pattern is None
    if not slides:
        n = min(n, c.block_size - len(prompt))
    idx = torch.tensor([prompt], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, n, temperature=0.8, top_k=200, generator=generator)
    return tokenizer.decode(out[0, len(prompt) :].tolist())


def command(*args: str) -> str:
    """A gptlab command line as the shell reads it back (paths with spaces are quoted)."""
    return shlex.join(["gptlab", *args])


def sample_hint(work_dir: Path, config: GPTConfig, tokenizer: Any, max_new_tokens: int = 200) -> str:
    """The `gptlab sample` command printed at the end of a run, which must work as printed: a prompt the
    tokenizer can encode (a char model may never have seen "ROMEO:"), and no more new tokens than a
    learned-position model has positions left after it (`gptlab sample` refuses more)."""
    chars = [tokenizer.decode([0])] if getattr(tokenizer, "name", "") == "char" else []
    for prompt in ("ROMEO:", "\n", *chars):
        try:
            n_prompt = len(tokenizer.encode(prompt))
        except ValueError:
            continue
        room = config.block_size - n_prompt if config.pos_emb == "learned" else max_new_tokens
        if room >= 1:
            flags = [] if prompt == "\n" else [f"--prompt={prompt}"]  # a newline is sample's default prompt
            return command("sample", str(work_dir), *flags, f"--max_new_tokens={min(max_new_tokens, room)}")
    return command("sample", str(work_dir))


# ========================================================================================================
# 2. Training: prepare the run directory, build model and optimizer, resume, the loop, finish
# ========================================================================================================


def train(cfg: TrainConfig) -> int:
    """Train as configured; returns the process exit code (0: finished or interrupted and saved)."""
    info = distributed.setup(cfg.trainer.device)
    try:
        code = _train(cfg, info)
        distributed.barrier()  # every rank done before any closes its connections (gloo aborts otherwise)
        return code
    finally:
        distributed.teardown()


def _train(cfg: TrainConfig, info: distributed.DistInfo) -> int:
    """The phases of a run, in order."""
    hardware.keep_freed_memory()
    t = cfg.trainer
    t.grad_accum = grad_accum_for(t, info.world_size)  # --trainer.micro_batch_size sets it from the processes
    if t.batch_size % (t.grad_accum * info.world_size):
        raise UsageError(
            f"--trainer.batch_size={t.batch_size} must be divisible by grad_accum ({t.grad_accum}) x "
            f"processes ({info.world_size}) = {t.grad_accum * info.world_size}"
        )
    # A new model's config (its real vocab_size comes from the tokenizer): a bad setting fails before the work dir
    # exists.
    new_config = model_config_from_dict(cfg.model, vocab_size=1) if not t.resume and cfg.init is None else None
    work_dir = Path(cfg.system.work_dir)
    with rundir.claim(work_dir, info.is_main, t.resume, cfg.system.overwrite):
        distributed.barrier()  # rank 0 claims the directory; if it fails, torchrun stops the ranks waiting here
        resumed = ckpt.load_checkpoint(work_dir / "last") if t.resume else None
        run = _build(cfg, info, resumed, new_config)
        if resumed:
            _resume(run, resumed)
        del resumed
        with _trackers(run), _stop_on_signal() as stop:
            if not _start(run):
                return 0
            code = _loop(run, stop)
            if code is not None:  # stopped early
                return code
            _finish(run)
        return 0


@contextlib.contextmanager
def _trackers(run: Run) -> Iterator[None]:
    """The live trackers of --trainer.log_to (rank 0), closed however the run ends."""
    names = tracking.parse_log_to(run.cfg.trainer.log_to) if run.info.is_main else []
    settings = {k: v for k, v in flatten(dataclasses.asdict(run.cfg)).items() if k != "trainer.quiet"}
    run.trackers = tracking.open_trackers(names, run.work_dir, settings, run.step)
    try:
        yield
    finally:
        for tracker in run.trackers:
            tracker.close()


@dataclass
class Run:
    """A run being trained: its model and optimizer, its data, and how far it is. The loop is `_loop`; these
    methods are its steps that touch the run directory (log, evaluate, checkpoint, sample)."""

    cfg: TrainConfig
    info: distributed.DistInfo
    config: GPTConfig
    tokenizer: Any
    data: Any  # gptlab.data.TokenData
    data_path: Path
    tok_name: str
    raw: GPT  # the GPT itself: state dicts and sampling (FSDP shards it in place)
    wrapped: torch.nn.Module  # DDP(raw), or raw sharded by FSDP2
    model: torch.nn.Module  # what the loop calls: wrapped, compiled with --trainer.compile
    optimizer: torch.optim.Optimizer
    use_bf16: bool  # bf16 autocast (--trainer.dtype, auto: where the hardware pays for it)
    batch_gen: torch.Generator  # the batch order, the same on all ranks (dropout draws from torch's RNG)
    batches: Batches
    step: int = 0
    best_val: float = math.inf
    best_iter: int | None = None
    last_saved: int | None = None  # the iter of work_dir/last, once this process wrote or resumed it
    elapsed_before: float = 0.0  # seconds the run trained before this process (elapsed_s continues across resume)
    start: float = 0.0  # time.perf_counter() when this process's loop began
    start_step: int = 0
    trackers: list[tracking.Tracker] = field(default_factory=list)  # --trainer.log_to, on rank 0
    peak_flops: float | None = None  # the GPU's bf16 peak, for MFU (None: no MFU shown)
    hellaswag_examples: list[hellaswag.Example] | None = None  # --trainer.hellaswag, tokenized

    @property
    def work_dir(self) -> Path:
        return Path(self.cfg.system.work_dir)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.trainer.batch_size * self.config.block_size

    @property
    def interactive(self) -> bool:  # a progress bar on a terminal; progress lines in a log file
        return self.info.is_main and sys.stderr.isatty()

    @property
    def estimate(self) -> str:
        # Every loss printed says what it is: these are means over a few batches, not over the whole split
        # (`gptlab eval` measures that), so they differ from it by the sampling noise.
        return f"{self.cfg.trainer.eval_iters}-batch estimate"

    def summary(self, losses: dict[str, float]) -> str:
        """What an eval measured: 'train loss 2.0811, val loss 2.1034 (20-batch estimates), HellaSwag ...'."""
        hella = f", HellaSwag acc_norm {losses['hellaswag']:.4f}" if "hellaswag" in losses else ""
        return f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({self.estimate}s){hella}"

    def say(self, msg: str) -> None:
        """Print on rank 0, unless --trainer.quiet (through tqdm, so the progress bar stays at the bottom)."""
        if self.info.is_main and not self.cfg.trainer.quiet:
            tqdm.write(msg, file=sys.stdout)

    def autocast(self) -> contextlib.AbstractContextManager:
        device_type = self.info.device.type
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.use_bf16 else contextlib.nullcontext()

    def no_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces the gradients only on a step's last micro-batch."""
        skip = self.info.distributed and self.cfg.trainer.strategy == "ddp" and not last_micro_step
        return self.wrapped.no_sync() if skip else contextlib.nullcontext()

    def log(self, row: dict[str, Any]) -> None:
        """A metrics.jsonl row (the source of truth), mirrored to the trackers of --trainer.log_to."""
        if self.info.is_main:
            rundir.append_metrics(self.work_dir, row)
            for tracker in self.trackers:
                tracker.log(row)

    def log_progress(self, losses: list[float], since: float, lr: float, bar: Any, extra: dict[str, Any]) -> None:
        """The metrics.jsonl row of the steps since `since` (and the progress line, or the bar's numbers)."""
        now = time.perf_counter()
        tok_s = len(losses) * self.tokens_per_step / (now - since)
        mean_loss = sum(losses) / len(losses)
        row = {"iter": self.step, "loss": mean_loss, "lr": lr, "tokens_per_s": round(tok_s, 1),
               "elapsed_s": round(self.elapsed_before + now - self.start, 2), **extra}
        if self.peak_flops is not None:  # on a known GPU: the share of its peak the model's arithmetic uses
            flops = model_stats(self.config).flops_train_per_token
            row["mfu"] = round(hardware.mfu(tok_s, flops, self.peak_flops, self.info.world_size), 4)
        self.log(row)
        mfu = {"MFU": f"{row['mfu']:.1%}"} if "mfu" in row else {}
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", **mfu)
        if self.info.is_main and not self.interactive and not self.cfg.trainer.quiet:
            print(f"iter {self.step}: loss {mean_loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tokens/s"
                  + (f", MFU {mfu['MFU']}" if mfu else ""), flush=True)

    def evaluate(self) -> dict[str, float]:
        """Train and val loss estimates, logged, and the loss plot redrawn."""
        t = self.cfg.trainer
        losses = estimate_loss(self.model, self.batches, t.eval_iters, self.cfg.system.seed + 1, self.autocast,
                               t.grad_accum)
        row = {"iter": self.step, "train_loss": losses["train"], "val_loss": losses["val"]}
        if self.hellaswag_examples:  # the uncompiled model (any length); under FSDP every rank runs every forward
            split = (0, 1) if t.strategy == "fsdp" else (self.info.rank, self.info.world_size)
            with self.autocast():
                scores = hellaswag.evaluate(self.raw, self.hellaswag_examples, *split)
            losses["hellaswag"] = row["hellaswag_acc_norm"] = scores["acc_norm"]
            row["hellaswag_acc"] = scores["acc"]
        self.log(row)
        if self.info.is_main:
            plot_losses([self.work_dir], self.work_dir / "loss.png")
        return losses

    def save(self) -> None:
        """Write work_dir/last (rank 0), from a full state gathered from all ranks (a collective)."""
        model_state, optim_state = distributed.full_state(self.raw, self.optimizer)
        rng = rundir.rng_states(self.batch_gen, self.info.device)
        kernels = distributed.gather_objects(autotune.pinned())
        if self.info.is_main:
            ckpt.save_checkpoint(
                self.work_dir / "last", config=self.config, model_state=model_state, tokenizer=self.tokenizer,
                optimizer_state=optim_state,
                state={
                    "iter": self.step, "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                    "best_iter": self.best_iter, "world_size": self.info.world_size,
                    "tokens_seen": self.step * self.tokens_per_step, "rng": rng, "autotune": kernels,
                    "data_position": self.batches.state(),  # --data.order=sequential: the next train token
                    "elapsed_s": round(self.elapsed_before + time.perf_counter() - self.start, 2),
                    # quiet is how this command prints, not the run: a resume by hand prints again.
                    "train_config": {k: v for k, v in flatten(dataclasses.asdict(self.cfg)).items()
                                     if k != "trainer.quiet"},
                },
            )
        distributed.barrier()
        self.last_saved = self.step

    def eval_and_checkpoint(self) -> None:
        """Estimate the losses, save last/ (and best/ when val improved), print a sample."""
        losses = self.evaluate()
        improved = losses["val"] < self.best_val
        self.best_val = min(self.best_val, losses["val"])
        self.best_iter = self.step if improved else self.best_iter
        self.save()
        if improved and self.info.is_main:
            ckpt.copy_checkpoint(self.work_dir / "last", self.work_dir / "best")
        self.say(f"iter {self.step}: {self.summary(losses)}" + (" (best)" if improved else ""))
        if self.step < self.cfg.trainer.max_iters:
            self.sample(self.cfg.trainer.sample_tokens, f"sample at iter {self.step}")

    def sample(self, max_new_tokens: int, title: str) -> None:
        t = self.cfg.trainer
        # Under FSDP every rank must run the forward passes (they gather the shards); otherwise rank 0 only.
        if t.sample_tokens and (self.info.is_main or t.strategy == "fsdp"):
            text = sample_text(self.raw, self.tokenizer, max_new_tokens, self.info.device,
                               self.cfg.system.seed + self.step)
            self.say(f"---- {title} ----\n{text}\n----")
            for tracker in self.trackers:
                tracker.text(self.step, "sample", text)


def _build(cfg: TrainConfig, info: distributed.DistInfo, resumed: ckpt.Checkpoint | None,
           new_config: GPTConfig | None) -> Run:
    """The data and the model (the checkpoint being resumed, pretrained weights, or new), with its optimizer."""
    t, device, work_dir = cfg.trainer, info.device, Path(cfg.system.work_dir)
    pretrained, pretrained_tok = None, None
    if cfg.init and not resumed:
        hint = "fine-tune a GPT-2-vocabulary model or a gptlab run"
        pretrained, pretrained_tok, _ = ckpt.load_model(cfg.init, flag="--init", hint=hint)
    if resumed:
        config = resumed.config
    elif pretrained is not None:
        config = finetune_config(pretrained.config, cfg.model)
    else:
        config = new_config
    data, data_path, tok_name = _data(cfg, resumed.tokenizer if resumed else pretrained_tok, config.block_size)
    if not resumed and pretrained is None:  # a new model: the tokenizer gives its vocab_size
        given = cfg.model.get("vocab_size")
        if given is not None and given != data.tokenizer.vocab_size:
            raise UsageError(
                f"--model.vocab_size={given}: the vocabulary size comes from the tokenizer ({tok_name}: "
                f"{data.tokenizer.vocab_size} ids for this text); drop the flag"
            )
        config = config.replace(vocab_size=data.tokenizer.vocab_size)
    if t.moe_bias_update and not config.moe_choice_bias:
        raise UsageError(f"--trainer.moe_bias_update={t.moe_bias_update:g} moves the experts' choice biases: the model "
                         "needs --model.moe_choice_bias=True (with --model.n_expert > 0)")
    if t.max_tokens is not None:  # a token budget: the steps it takes (whole steps)
        t.max_iters = steps_for_tokens(t.max_tokens, t.batch_size * config.block_size)
    batches = Batches(data, t.batch_size // t.grad_accum, config.block_size, info, order=cfg.data.order)
    batches.check()
    examples = hellaswag.load(t.hellaswag, data.tokenizer) if t.hellaswag else None  # a bad file fails now
    if info.is_main and not resumed and cfg.system.overwrite:
        rundir.clear_old_run(work_dir)
    if info.is_main:  # the run directory carries its tokenizer (each checkpoint has a copy too)
        save_tokenizer(data.tokenizer, work_dir / "tokenizer.json")

    torch.manual_seed(cfg.system.seed)  # the same seed on every rank: identical initial weights everywhere
    model = GPT(config)
    if resumed:
        model.load_state_dict(resumed.model_state)  # from CPU tensors, then moved to the device
    elif pretrained is not None:
        model.load_state_dict(crop_state(pretrained.state_dict(), config))
        del pretrained
    model.to(device)
    wrapped = distributed.wrap(model, info, t.strategy)
    # Fused AdamW: one kernel over all parameters (on CPU too: 5x faster than foreach at 10M parameters).
    optimizer = make_optimizer(model, t, fused=device.type in ("cuda", "cpu") and t.strategy != "fsdp")
    if device.type == "cuda" and t.dtype != "float32":  # TF32 matmuls (as nanoGPT), unless fp32 was asked for
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and hardware.bf16_autocast_pays(device))
    batch_gen = torch.Generator().manual_seed(cfg.system.seed)
    torch.manual_seed(cfg.system.seed + info.rank)  # dropout: a different stream on each rank
    return Run(
        cfg, info, config, data.tokenizer, data, data_path, tok_name, raw=model, wrapped=wrapped,
        model=torch.compile(wrapped) if t.compile else wrapped, optimizer=optimizer, use_bf16=use_bf16,
        batch_gen=batch_gen, batches=batches, peak_flops=hardware.training_peak_flops(device, use_bf16),
        hellaswag_examples=examples,
    )


def _data(cfg: TrainConfig, saved_tok: Any, block_size: int) -> tuple[Any, Path, str]:
    """(the tokenized data, its file or shard folder, its tokenizer's name): a text file tokenized once, cached by
    content, or token shards (--data.shards). A model that has a tokenizer (resumed or --init) keeps it."""
    if cfg.data.shards:
        if saved_tok is not None and saved_tok.name != "gpt2":
            raise UsageError(f"--data.shards holds GPT-2 tokens; the model was trained with the {saved_tok.name} "
                             "tokenizer")
        data = shard_dataset(cfg.data.shards)
        return data, data.path, "gpt2"
    tok_name = cfg.data.tokenizer or (saved_tok.name if saved_tok is not None else "char")
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    data_path = Path(cfg.data.path) if cfg.data.path else default_data_path(cache_dir)
    if saved_tok is not None and tok_name != saved_tok.name:
        raise UsageError(
            f"--data.tokenizer={tok_name}: the model was trained with the {saved_tok.name} tokenizer; drop the flag"
        )
    data = prepare_dataset(data_path, tok_name, cache_dir, block_size)
    if saved_tok is not None and data.tokenizer != saved_tok:
        raise UsageError(
            f"{data_path} does not give the char tokenizer the model was trained with ({saved_tok!r}); a char "
            "model can only continue on text with exactly its characters"
        )
    return data, data_path, tok_name


def _resume(run: Run, resumed: ckpt.Checkpoint) -> None:
    """Continue where work_dir/last stopped: progress, optimizer state, kernel choices, RNG streams, metrics."""
    info, t, state = run.info, run.cfg.trainer, resumed.state
    run.step = run.last_saved = state["iter"]
    run.best_iter = state.get("best_iter")
    run.best_val = math.inf if state.get("best_val_loss") is None else state["best_val_loss"]
    if info.is_main and run.best_iter == run.step and ckpt.checkpoint_iter(run.work_dir / "best") != run.step:
        # Killed between saving last/ and copying it to best/: last/ is the best checkpoint.
        ckpt.copy_checkpoint(run.work_dir / "last", run.work_dir / "best")
    distributed.load_optimizer_state(run.raw, run.optimizer, resumed.optimizer_state)
    pinned = state.get("autotune") or []
    if len(pinned) == info.world_size:  # the kernels measured fastest before: the same rounding
        autotune.pin(pinned[info.rank])
    # The saved param_groups carry the old hyperparameters; flags given now win (lr is set every step).
    for group, decay in zip(run.optimizer.param_groups, (t.weight_decay, 0.0), strict=True):
        group["weight_decay"], group["betas"] = decay, (t.beta1, t.beta2)
    rundir.restore_rng(state["rng"], run.batch_gen, info, run.cfg.system.seed, run.step)
    run.batches.load_state(state.get("data_position"))
    rows = [r for r in read_metrics(run.work_dir) if r.get("iter", 0) <= run.step]
    # Checkpoints since this field exists carry it; an older one: the last elapsed_s logged before it.
    run.elapsed_before = state.get("elapsed_s", max((r["elapsed_s"] for r in rows if "elapsed_s" in r), default=0.0))
    if info.is_main:  # forget metrics logged after this checkpoint (a kill between evals)
        rundir.write_metrics(run.work_dir, rows)


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[dict[str, int | None]]:
    """Ctrl-C / SIGTERM set stop["signal"]: the loop finishes its step, saves and exits 0. A second one stops at
    once."""
    stop: dict[str, int | None] = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        stop["signal"] = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _start(run: Run) -> bool:
    """Say what trains, and estimate the losses before the first step; False when there is nothing to train."""
    t, info = run.cfg.trainer, run.info
    if info.is_main:
        n_params = sum(p.numel() for p in run.raw.parameters())
        run.say(
            f"training {n_params / 1e6:.2f}M parameters on {run.data_path.name} ({run.tok_name} tokenizer, "
            f"{len(run.data.train):,} train / {len(run.data.val):,} val tokens), {info.world_size} x {info.device}"
            + (f" ({t.strategy})" if info.distributed else "")
            + (", bf16 autocast" if run.use_bf16 else ", fp32")
            + (f" ({hardware.cpu_isa()})" if info.device.type == "cpu" else "")
            + (f", resuming at iter {run.step}" if run.step else "")
            + f"; writing to {run.work_dir}"
        )
        run.say(describe_step(t, run.config.block_size, info.world_size, run.cfg.data.order))
    if run.step >= t.max_iters:
        run.say(f"the run is already at iter {run.step} = --trainer.max_iters; pass a larger one to train longer")
        return False
    if info.is_main and t.warmup_iters >= t.max_iters:
        # nanoGPT's schedule is kept as it is (a run reproduces nanoGPT's), but a warmup that outlasts the run
        # never reaches the peak learning rate: say so instead of letting the run quietly underperform.
        print(
            f"gptlab: warning: --trainer.warmup_iters={t.warmup_iters} >= --trainer.max_iters={t.max_iters}: "
            f"the learning rate never reaches --trainer.learning_rate={t.learning_rate:g} (it ends at "
            f"{learning_rate(t.max_iters - 1, t):.2e}); lower --trainer.warmup_iters",
            file=sys.stderr, flush=True,
        )
    if run.step == 0:
        losses = run.evaluate()
        run.say(f"iter 0: {run.summary(losses)}")
    return True


def _loop(run: Run, stop: dict[str, int | None]) -> int | None:
    """Train to --trainer.max_iters: forward, backward, step; log, evaluate and checkpoint at their intervals.
    Returns None when done, or the exit code of a run that stopped early (diverged: 1; a signal: 0, saved)."""
    t, model, optimizer = run.cfg.trainer, run.model, run.optimizer
    # Quiet: the bar still shows progress on a terminal, then vanishes (a log file gets nothing).
    bar = tqdm(total=t.max_iters, initial=run.step, disable=not run.interactive, unit="it", dynamic_ncols=True,
               leave=not t.quiet)
    window_losses: list[float] = []
    router_log = moe.RouterLog()  # experts: the aux loss and load per expert, logged with the loss
    run.start = window_start = time.perf_counter()
    run.start_step = run.step
    model.train()
    with bar:
        while run.step < t.max_iters:
            lr = learning_rate(run.step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=run.info.device)
            for micro in range(t.grad_accum):
                x, y = run.batches.next_train(run.batch_gen)
                with run.no_sync(last_micro_step=micro == t.grad_accum - 1):
                    with run.autocast():
                        _, loss = model(x, y)
                    penalty = moe.router_penalty(run.raw, t.moe_aux_coef, t.moe_z_coef)  # experts: 0.0 without
                    ((loss + penalty) / t.grad_accum).backward()
                loss_sum += loss.detach().float()  # the cross-entropy alone is logged
                router_log.add(run.raw)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(run.raw.parameters(), t.grad_clip)
            optimizer.step()
            moe.balance_choice_bias(run.raw, t.moe_bias_update)  # DeepSeek's loss-free balancing (0: counts dropped)
            optimizer.zero_grad(set_to_none=True)
            run.step += 1
            step_loss = distributed.all_reduce_mean(loss_sum / t.grad_accum).item()

            if not math.isfinite(step_loss):  # the same value on every rank: all stop together
                bar.close()
                _diverged(run, step_loss)
                return 1
            window_losses.append(step_loss)
            bar.update(1)
            if run.step % t.log_interval == 0 or run.step == t.max_iters:
                run.log_progress(window_losses, window_start, lr, bar, router_log.row())
                window_losses, window_start = [], time.perf_counter()
            if run.step % t.eval_interval == 0 or run.step == t.max_iters:
                run.eval_and_checkpoint()
                window_start = time.perf_counter()  # eval time is not training throughput
            if distributed.any_rank(stop["signal"] is not None, run.info.device):
                bar.close()
                _stopped(run, stop["signal"])
                return 0
    return None


def _diverged(run: Run, loss: float) -> None:
    if run.info.is_main:
        last = run.work_dir / "last"
        where = f"{last} (iter {run.last_saved})" if run.last_saved is not None else "none was written"
        print(
            f"gptlab: error: loss is {loss} at iter {run.step}: training diverged; stopped without "
            f"saving. Last good checkpoint: {where}. Try a lower --trainer.learning_rate.",
            file=sys.stderr,
        )


def _stopped(run: Run, signum: int | None) -> None:
    """Ctrl-C or SIGTERM (on this rank, or on another: signum None): save, and say how to continue."""
    if run.last_saved != run.step:
        run.save()
    name = signal.Signals(signum).name if signum else "a signal on another rank"
    run.say(
        f"\nstopped by {name} at iter {run.step}: checkpoint saved to {run.work_dir / 'last'}.\n"
        f"continue with: {command('train', f'--system.work_dir={run.work_dir}', '--trainer.resume=True')}"
    )


def _finish(run: Run) -> None:
    """The run's numbers, a longer sample, and where everything is."""
    n, elapsed = run.step - run.start_step, time.perf_counter() - run.start
    run.say(
        f"\ndone: {n} iterations in {elapsed / 60:.1f} min "
        f"({n * run.tokens_per_step / max(elapsed, 1e-9):,.0f} tokens/s incl. evals), "
        f"best val loss {run.best_val:.4f} ({run.estimate})"
    )
    run.sample(max(run.cfg.trainer.sample_tokens, 500), "sample")
    work_dir = run.work_dir
    run.say(
        f"checkpoints: {work_dir / 'last'} (latest), {work_dir / 'best'} (best val loss)\n"
        f"loss plot:   {work_dir / 'loss.png'}\n"
        f"metrics:     {work_dir / 'metrics.jsonl'}\n"
        f"sample more: {sample_hint(work_dir, run.config, run.tokenizer)}"
    )


# ========================================================================================================
# 3. The command
# ========================================================================================================


def main(argv: list[str] | None = None) -> int:
    """`gptlab train [flags]`; returns the exit code. UsageError and data errors propagate to cli.main."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(train_help())
        return 0
    print_config = [a for a in argv if a.replace("_", "-") == "--print-config"]
    argv = [a for a in argv if a not in print_config]
    cfg = parse_train_args(argv)
    if cfg.trainer.resume:
        cfg = resume_config(argv, Path(cfg.system.work_dir))
    if print_config:  # the settings, resolved; nothing is created
        print(format_config(cfg), end="")
        return 0
    return train(cfg)


# `from gptlab import train; train(preset="tiny")`: this module is also the Python API's train (api.py says why).
api.callable_module(__name__, api.train)
