"""The `gptlab` command. `gptlab COMMAND --help` explains each command.

    gptlab train  [flags]                  train a model (see gptlab/train.py)
    gptlab sample RUN_OR_MODEL [flags]     generate text
    gptlab eval   RUN_OR_MODEL [flags]     loss, perplexity, bits per token and per char on a text
    gptlab plot   RUN [RUN ...] [flags]    loss curves of several runs in one PNG
    gptlab runs   RUN [RUN ...] [flags]    one table of finished or live runs (gptlab/runs.py)
    gptlab attention RUN --prompt=TEXT     attention maps per layer and head (gptlab/attention_maps.py)

Commands are looked up in COMMANDS and imported only when run, so `gptlab sample` never pays for what
`gptlab train` imports, and a command whose module is missing says so instead of crashing. Errors meant for
the user (bad flags, unusable data or checkpoints, invalid configs) print one line, `gptlab: error: ...`, and
exit with status 2; set GPTLAB_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .options import UsageError, build_dataclass, coerce, format_options, options_of, parse_flags

# command -> (module, function, one-line description). Each function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("gptlab.train", "main", "train a model (default: char-level Shakespeare, ~5 min on 2 CPU cores)"),
    "sample": ("gptlab.cli", "sample_main", "generate text from a run, a checkpoint or a Hugging Face model"),
    "eval": ("gptlab.cli", "eval_main", "loss, perplexity and bits per char/token of a model on a text"),
    "plot": ("gptlab.cli", "plot_main", "loss curves of one or several run directories in one PNG"),
    "info": ("gptlab.info", "main", "parameters, FLOPs and memory of a model configuration"),
    "compare": ("gptlab.compare", "main", "train a grid of architecture variants alike and write a measured report"),
    "convert": ("gptlab.convert", "convert_main", "turn a multi-head checkpoint into GQA (--to-gqa N SRC DST)"),
    "prepare": ("gptlab.prepare", "main", "tokenize a corpus into llm.c-format token shards, in parallel, resumable"),
    "export": ("gptlab.cli", "export_main", "save a run's model for transformers, in the HF format that holds it"),
    "runs": ("gptlab.runs", "main", "one table of run directories: settings that differ, params, KV, losses, tok/s"),
    "attention": ("gptlab.attention_maps", "main", "plot a model's attention maps per layer and head for a prompt"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return "usage: gptlab COMMAND [flags]   (gptlab COMMAND --help for its flags)\n\ncommands:\n" + "\n".join(lines)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run `gptlab COMMAND ...`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"gptlab {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"gptlab: error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the module exists but one of its imports is broken: a real bug
            raise
        module = None
    command = getattr(module, func_name, None)
    if command is None:
        print(f"gptlab: error: gptlab {name} is not available in this version", file=sys.stderr)
        return 2

    if os.environ.get("GPTLAB_LOG"):  # e.g. GPTLAB_LOG=debug: the fast paths chosen by measurement, as chosen
        level = logging.getLevelName(os.environ["GPTLAB_LOG"].upper())
        if not isinstance(level, int):
            print(f"gptlab: error: GPTLAB_LOG={os.environ['GPTLAB_LOG']}: use debug, info or warning", file=sys.stderr)
            return 2
        logging.basicConfig(level=level, format="gptlab: %(name)s: %(message)s")
        logging.getLogger("torch").setLevel(logging.WARNING)
    rank = os.environ.get("RANK", "0")  # under torchrun, only rank 0 reports the config errors every rank hits
    try:
        return int(command(argv[1:]) or 0)
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gptlab ... | head`: the reader left; not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except (ValueError, OSError) as e:  # UsageError, DataError, CheckpointError, GPTConfig's ValueError, I/O
        if os.environ.get("GPTLAB_DEBUG"):
            raise
        if rank == "0" or isinstance(e, OSError):  # an I/O error may be one rank's own
            where = "" if rank == "0" else f"[rank {rank}] "
            print(f"gptlab: error: {where}{_one_line(e)}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------------
# Shared: flags of a small command
# --------------------------------------------------------------------------------------------------------


def _parse(cls: type, argv: list[str], aliases: dict[str, str], help_text: str) -> tuple[Any, list[str]] | None:
    """(config, positional arguments), or None after printing help for -h/--help."""
    options = options_of(cls)
    if "-h" in argv or "--help" in argv:
        print(help_text + format_options(options, aliases=aliases))
        return None
    pairs, positionals = parse_flags(argv, options, aliases)
    values = {key: coerce(key, value, options[key].type) for key, value in pairs}
    return build_dataclass(cls, values), positionals


def _parse_model_command(cls: type, argv: list[str], aliases: dict[str, str], help_text: str) -> tuple[Any, str] | None:
    """(config, the run or model to load) of `gptlab sample` or `eval`, or None after printing help."""
    parsed = _parse(cls, argv, {**SOURCE_ALIASES, **aliases}, help_text)
    return None if parsed is None else (parsed[0], _source(*parsed))


def _at_least(cfg: Any, name: str, low: float, note: str = "") -> None:
    """UsageError when a numeric setting is below `low` (None passes: it means "no limit")."""
    value = getattr(cfg, name)
    if value is not None and value < low:
        raise UsageError(f"--{name} must be >= {low}{note}, got {value}")


def read_prompt(prompt: str) -> str:
    """--prompt's text: as given, or the contents of the file after FILE: (nanoGPT's convention)."""
    if not prompt.startswith("FILE:"):
        return prompt
    try:
        return Path(prompt[5:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompt=FILE:{prompt[5:]}: cannot read it ({e})") from None


def png_path(flag: str, value: str) -> Path:
    """The path of a PNG a command will write (--out, --plot), or a UsageError saying what is wrong with it."""
    path = Path(value).expanduser()
    if path.suffix.lower() != ".png":
        raise UsageError(f"{flag}={value}: the plot is a PNG; give a file name ending in .png")
    if not path.parent.is_dir():
        raise UsageError(f"{flag}={value}: folder {path.parent} does not exist; create it or pick another")
    return path


def _source(cfg: Any, positionals: list[str]) -> str:
    if len(positionals) > 1 or (positionals and cfg.source):
        given = positionals + ([cfg.source] if cfg.source else [])
        raise UsageError(f"expected one run or model directory, got {given}")
    source = positionals[0] if positionals else cfg.source
    if not source:
        raise UsageError("which model? pass a run directory (out/demo), a checkpoint directory or a Hugging Face id")
    return source


# --------------------------------------------------------------------------------------------------------
# gptlab sample
# --------------------------------------------------------------------------------------------------------


@dataclass
class SampleConfig:
    source: str | None = None  # run directory, checkpoint or Hugging Face directory, or hub id (or positional)
    checkpoint: Literal["best", "last"] = "best"  # which checkpoint of a run directory
    prompt: str = "\n"  # text to continue; FILE:path reads it from a file
    num_samples: int = 1  # independent samples
    max_new_tokens: int = 200  # tokens to generate per sample
    temperature: float = 0.8  # 0: greedy; < 1 sharper, > 1 more random
    top_k: int | None = 200  # sample among the k most likely tokens; None: all
    top_p: float | None = None  # nucleus sampling: the smallest set of tokens holding this probability
    seed: int = 1337  # same seed, same samples
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # weights to decode in; auto: bf16 where measured faster


# The run to load, by the names other commands give it: nanoGPT's out_dir, and gptlab train's work dir.
SOURCE_ALIASES = {"out_dir": "source", "system.work_dir": "source"}
SAMPLE_ALIASES = {"start": "prompt", "init_from": "source"}  # nanoGPT's sample.py names


def sample_main(argv: list[str]) -> int:
    """`gptlab sample RUN_OR_MODEL --prompt=... --num_samples=... --max_new_tokens=...`."""
    import torch

    from .checkpoint import load_model
    from .distributed import resolve_device

    parsed = _parse_model_command(
        SampleConfig, argv, SAMPLE_ALIASES,
        "usage: gptlab sample RUN_OR_MODEL [--prompt=TEXT] [--num_samples=N] [--max_new_tokens=N] ...\n\n"
        "Generate text from a training run (its best checkpoint; --checkpoint=last for the latest), a\n"
        "checkpoint or Hugging Face directory, or a hub id such as gpt2.\n",
    )
    if parsed is None:
        return 0
    cfg, source = parsed
    _at_least(cfg, "num_samples", 1)
    _at_least(cfg, "max_new_tokens", 1)
    _at_least(cfg, "temperature", 0, " (0: greedy)")
    _at_least(cfg, "top_k", 1, " or None")
    if cfg.top_p is not None and not 0 < cfg.top_p <= 1:
        raise UsageError(f"--top_p must be in (0, 1], got {cfg.top_p}")
    prompt = read_prompt(cfg.prompt)
    model, tokenizer, _ = load_model(source, cfg.checkpoint, resolve_device(cfg.device, flag="--device"))
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as e:
        raise UsageError(f"--prompt: {e}") from None
    if not ids:
        raise UsageError("--prompt is empty after tokenization; give some text (the default is a newline)")
    c = model.config
    if c.pos_emb == "learned" and len(ids) + cfg.max_new_tokens > c.block_size:
        room = c.block_size - len(ids)
        raise UsageError(
            f"--max_new_tokens={cfg.max_new_tokens}: the prompt ({len(ids)} tokens) plus {cfg.max_new_tokens} new "
            f"tokens is past block_size={c.block_size}, the last position this learned-position model has; "
            + (f"use --max_new_tokens={room} or less" if room > 0 else "shorten the prompt")
        )
    from .generate import cast_weights, decode_dtype

    dtype = decode_dtype(model) if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    if dtype != torch.float32:
        if cfg.dtype == "auto":  # stderr: stdout is the samples
            why = "measured faster than fp32 here" if model.lm_head.weight.is_cpu else "this GPU has native bf16"
            print(f"[sample] decoding with bf16 weights: {why} (--dtype=float32 for fp32)", file=sys.stderr)
        cast_weights(model, dtype)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, device=device)
    out = model.generate(idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator=generator)
    for i, row in enumerate(out.tolist()):
        if i:
            print("-" * 40)
        print(tokenizer.decode(row))
    return 0


# --------------------------------------------------------------------------------------------------------
# gptlab export
# --------------------------------------------------------------------------------------------------------


@dataclass
class ExportConfig:
    checkpoint: Literal["best", "last"] = "best"  # which checkpoint of a run directory


def export_main(argv: list[str]) -> int:
    """`gptlab export RUN_OR_MODEL DST`: the model in the Hugging Face format that holds it, with its tokenizer."""
    import json
    import shutil

    from .checkpoint import load_model
    from .hf import HF_FORMATS, copy_hf_tokenizer, export_format, why_gptlab_format
    from .tokenizer import ASSETS_DIR, ENDOFTEXT, save_tokenizer

    parsed = _parse(
        ExportConfig, argv, {},
        "usage: gptlab export RUN_OR_MODEL DST [--checkpoint=best|last]\n\n"
        "Write a run's model (its best checkpoint), or any model gptlab loads, to the new directory DST in the\n"
        f"Hugging Face format that holds its switches exactly ({', '.join(HF_FORMATS)}); other mixtures in gptlab's\n"
        "own format. A GPT-2-vocabulary model gets GPT-2's tokenizer files (vocab.json, merges.txt), which\n"
        "transformers' AutoTokenizer reads.\n",
    )
    if parsed is None:
        return 0
    cfg, positionals = parsed
    if len(positionals) != 2:
        raise UsageError(f"expected RUN_OR_MODEL and DST, got {positionals or 'nothing'}; see gptlab export --help")
    source, dst = positionals[0], Path(positionals[1])
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"{dst} exists and is not empty; export writes a new model directory: pick a new DST")
    model, tokenizer, _ = load_model(source, cfg.checkpoint, need_tokenizer=False)
    kind = export_format(model.config)
    model.save_pretrained(dst)
    if tokenizer is not None and tokenizer.name == "gpt2":
        # GPT-2's own files under the names transformers gives them (encoder.json is vocab.json, vocab.bpe is
        # merges.txt); tokenizer_config names the class, so a Llama-format model gets GPT-2's tokenizer too.
        shutil.copyfile(ASSETS_DIR / "encoder.json", dst / "vocab.json")
        shutil.copyfile(ASSETS_DIR / "vocab.bpe", dst / "merges.txt")
        special = dict(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)
        tok_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model.config.block_size, **special}
        (dst / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        tok_note = "GPT-2's tokenizer (transformers.AutoTokenizer loads it)"
    elif tokenizer is not None:
        save_tokenizer(tokenizer, dst / "gptlab_tokenizer.json")  # not tokenizer.json: transformers claims that name
        tok_note = (f"its {tokenizer.vocab_size}-character tokenizer in gptlab_tokenizer.json (transformers has no "
                    "char tokenizer: map characters to ids with its \"chars\" list)")
    else:
        copied = copy_hf_tokenizer(source, dst)
        tok_note = f"{source}'s own tokenizer files ({', '.join(copied)})" if copied else "no tokenizer (none found)"
    architecture = json.loads((dst / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    where = (f"Hugging Face {kind} format (transformers.{architecture}, or AutoModelForCausalLM)" if kind in HF_FORMATS
             else f"gptlab format ({why_gptlab_format(model.config)}; GPT.from_pretrained loads it)")
    print(f"exported {source} to {dst}: {where}, with {tok_note}")
    return 0


# --------------------------------------------------------------------------------------------------------
# gptlab eval
# --------------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    source: str | None = None  # run directory, checkpoint or Hugging Face directory, or hub id (or positional)
    checkpoint: Literal["best", "last"] = "best"  # which checkpoint of a run directory
    text: str | None = None  # a UTF-8 text file; None: the validation split of the run's training data
    batch_size: int = 16  # windows per forward pass
    max_tokens: int | None = None  # evaluate only the first N tokens
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    json: bool = False  # print the numbers as one JSON object
    context: int | None = None  # tokens per window; None: block_size (longer: length extrapolation, RoPE only)
    by_position: bool = False  # also the loss at each position 0..context-1 of the windows (--json: the full list)
    plot: str | None = None  # with --by-position: draw loss against position into this PNG
    hellaswag: str | None = None  # a HellaSwag .jsonl (the official hellaswag_val.jsonl): acc and acc_norm instead
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # bf16 autocast or not; auto: as training picks here


def _run_val_tokens(directory: Path, tok_name: str) -> Any:
    """The validation split of the data the model in `directory` was trained on (its state.json, or the data.json
    that `gptlab convert` writes), tokenized with the model's tokenizer."""
    from .checkpoint import data_reference
    from .data import default_data_path, prepare_dataset
    from .shards import shard_dataset
    from .train_config import default_cache_dir

    saved = data_reference(directory)
    if saved is None:
        raise UsageError(f"{directory} does not say what data it was trained on (no state.json or data.json); "
                         "pass --text=FILE")
    if saved.get("data.shards"):  # trained on token shards: their val split
        data = shard_dataset(saved["data.shards"])
        return data.val, data.path
    cache_dir = Path(saved["data.cache_dir"]) if saved.get("data.cache_dir") else default_cache_dir()
    path = Path(saved["data.path"]) if saved.get("data.path") else default_data_path(cache_dir)
    return prepare_dataset(path, tok_name, cache_dir, block_size=1).val, path


def position_losses(model: Any, ids: Any, batch_size: int, context: int | None = None) -> tuple[Any, Any]:
    """(summed cross-entropy in nats per position, windows per position), both (context,) tensors, over `ids`
    cut into non-overlapping windows of `context` tokens (default: block_size); the last window may be shorter.

    Position p of a window predicts its token p + 1 from p + 1 tokens of context, so the first positions of
    each window see less context than later ones (the usual trade of this fast method against a sliding
    window). Per position, that is the measurement: loss against the context a prediction had.
    """
    import torch
    import torch.nn.functional as F

    ids = torch.as_tensor(ids, dtype=torch.long)
    T = model.config.block_size if context is None else context
    device = next(model.parameters()).device
    starts = list(range(0, len(ids) - 1, T))  # whole windows, then the shorter tail
    sums = torch.zeros(T, dtype=torch.float64)
    counts = torch.zeros(T, dtype=torch.long)
    with torch.no_grad():
        for first in range(0, len(starts), batch_size):
            # One forward per run of windows of equal length (all but the tail are T long).
            chunk = starts[first : first + batch_size]
            for n in sorted({min(T, len(ids) - 1 - s) for s in chunk}, reverse=True):
                group = [s for s in chunk if min(T, len(ids) - 1 - s) == n]
                x = torch.stack([ids[s : s + n] for s in group]).to(device)
                y = torch.stack([ids[s + 1 : s + n + 1] for s in group]).to(device)
                logits, _ = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)
                sums[:n] += loss.double().sum(0).cpu()
                counts[:n] += len(group)
    return sums, counts


def evaluate_tokens(model: Any, ids: Any, batch_size: int, context: int | None = None) -> tuple[float, int]:
    """(summed cross-entropy in nats, number of predicted tokens) over `ids`, in windows of `context` tokens
    (default: block_size); see position_losses."""
    sums, counts = position_losses(model, ids, batch_size, context)
    return sums.sum().item(), int(counts.sum())


def _position_table(losses: list[float], rows: int = 16) -> str:
    """Mean loss over up to `rows` equal ranges of positions, one line each (the full list is in --json)."""
    width = math.ceil(len(losses) / rows)
    lines = []
    for lo in range(0, len(losses), width):
        part = [x for x in losses[lo : lo + width] if not math.isnan(x)]
        where = f"{lo}" if width == 1 else f"{lo}-{min(lo + width, len(losses)) - 1}"
        lines.append(f"  {where:>11}  {sum(part) / len(part):.4f}" if part else f"  {where:>11}  -")
    return "\n".join(lines)


def plot_position_losses(
    losses: list[float], out: Path, title: str, window: int | None = None, block_size: int | None = None
) -> Path:
    """Loss against position in the context, with the model's window and training context marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(len(losses)), losses, color="C0", linewidth=1.2)
    if window is not None and window < len(losses):
        ax.axvline(window - 1, color="C1", linestyle="--", linewidth=1, label=f"window ({window})")
    if block_size is not None and block_size < len(losses):
        ax.axvline(block_size - 1, color="C3", linestyle=":", linewidth=1, label=f"training context ({block_size})")
    ax.set_xlabel("position in the context (tokens seen: position + 1)")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, out)  # a reader never sees half a PNG
    return out


def eval_main(argv: list[str]) -> int:
    """`gptlab eval RUN_OR_MODEL [--text=FILE]`: loss, perplexity, bits per token and per character."""
    parsed = _parse_model_command(
        EvalConfig, argv, {},
        "usage: gptlab eval RUN_OR_MODEL [--text=FILE] [--max_tokens=N] [--context=N] [--by-position] [--json]\n"
        "       gptlab eval RUN_OR_MODEL --hellaswag=hellaswag_val.jsonl [--json]\n\n"
        "Evaluate a model on a text (default: the validation split of the run's training data): cross-entropy\n"
        "loss in nats per token, perplexity, bits per token and bits per character. --by-position adds the\n"
        "loss at each position of the windows (how windows and length extrapolation are judged; with\n"
        "--context longer than training for RoPE models), --plot=FILE.png draws it. --hellaswag=FILE: HellaSwag\n"
        "acc and acc_norm instead (completion style, as llm.c and build-nanogpt score it).\n",
    )
    if parsed is None:
        return 0
    cfg, source = parsed
    _at_least(cfg, "batch_size", 1)
    _at_least(cfg, "max_tokens", 2, " or None")
    _at_least(cfg, "context", 1, " or None")
    if cfg.plot and not cfg.by_position:
        raise UsageError(f"--plot={cfg.plot} draws the loss by position: add --by-position")
    plot = png_path("--plot", cfg.plot) if cfg.plot else None
    if cfg.hellaswag is not None:  # the file is checked before the model loads
        from .hellaswag import read_hellaswag

        items = read_hellaswag(cfg.hellaswag)
    from .checkpoint import load_model
    from .distributed import resolve_device

    model, tokenizer, directory = load_model(source, cfg.checkpoint, resolve_device(cfg.device, flag="--device"))
    with _eval_autocast(cfg.dtype, next(model.parameters()).device) as dtype:
        if cfg.hellaswag is not None:
            return _hellaswag(model, tokenizer, items, cfg, str(directory or source), dtype)
        return _eval_loss(model, tokenizer, directory, source, cfg, plot, dtype)


@contextmanager
def _eval_autocast(choice: str, device: Any) -> Iterator[str]:
    """bf16 autocast for eval's forwards where training would use it on this device (--dtype=auto), or as asked;
    yields the dtype's name for the output."""
    import torch

    from .hardware import bf16_autocast_pays

    bf16 = choice == "bfloat16" or (choice == "auto" and bf16_autocast_pays(device))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        yield "bfloat16" if bf16 else "float32"


def _eval_loss(model: Any, tokenizer: Any, directory: Path | None, source: str, cfg: EvalConfig,
               plot: Path | None, dtype: str) -> int:
    """`gptlab eval` on a text: the loss and what follows from it, by position too with --by-position."""
    import numpy as np

    c = model.config
    context = c.block_size if cfg.context is None else cfg.context
    if c.pos_emb == "learned" and context > c.block_size:
        raise UsageError(f"--context={context}: past block_size={c.block_size}, the last position this "
                         "learned-position model has; only RoPE models extrapolate")
    if cfg.text is not None:
        from .data import DataError, read_text_file

        path = Path(cfg.text)
        try:
            _, text = read_text_file(path)  # the checks training applies to a data file
        except DataError as e:
            raise DataError(f"--text: {e}") from None
        try:
            ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        except ValueError as e:
            raise UsageError(f"--text {path}: {e}") from None
    else:
        if directory is None:
            raise UsageError(f"{source} is not a training run; pass --text=FILE to evaluate on")
        ids, path = _run_val_tokens(directory, tokenizer.name)
        path = f"{path} (validation split)"
    # The label says what the loss covers: training prints estimates over a few batches, this is exact.
    what, whole = ("val loss", "split") if cfg.text is None else ("loss", "text")
    if cfg.max_tokens is not None and cfg.max_tokens < len(ids):
        label = f"{what} (first {cfg.max_tokens:,} tokens of the {whole})"
    else:
        label = f"{what} (whole {whole})"
    if cfg.max_tokens is not None:
        ids = ids[: cfg.max_tokens]
    if len(ids) < 2:
        raise UsageError(f"{path} has {len(ids)} token(s); evaluation needs at least 2")
    sums, counts = position_losses(model, np.asarray(ids, dtype=np.int64), cfg.batch_size, context)
    nats, n = sums.sum().item(), int(counts.sum())
    n_chars = len(tokenizer.decode(np.asarray(ids[1:]).tolist()))  # the characters that were predicted
    loss = nats / n
    result = {
        "loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
        "bits_per_char": nats / math.log(2) / max(n_chars, 1), "tokens": n, "chars": n_chars,
        "tokenizer": tokenizer.name, "model": str(directory or source), "text": str(path), "loss_label": label,
        "context": context, "dtype": dtype,
    }
    if cfg.by_position:
        # A position no window reaches (a text shorter than the context) has no loss: NaN, null in JSON.
        by_pos = [x / k if k else math.nan for x, k in zip(sums.tolist(), counts.tolist(), strict=True)]
        result["by_position"] = {"loss": [None if math.isnan(x) else x for x in by_pos], "windows": counts.tolist()}
        if plot is not None:
            title = f"{result['model']}: loss by position, {label}, {counts[0]} windows of {context}"
            plot_position_losses(by_pos, plot, title, c.window, c.block_size)
    if cfg.json:
        print(json.dumps(result))
    else:
        print(
            f"model:      {result['model']} ({tokenizer.name} tokenizer, context {context})\n"
            f"text:       {path}: {n:,} tokens, {n_chars:,} characters predicted\n"
            f"loss:       {loss:.4f} nats/token: {label}{', bf16 autocast' if dtype == 'bfloat16' else ''}\n"
            f"perplexity: {result['perplexity']:.3f}\n"
            f"bits/token: {result['bits_per_token']:.4f}\n"
            f"bits/char:  {result['bits_per_char']:.4f}"
        )
        if cfg.by_position:
            print(f"loss by position in the context (mean over {counts[0]} windows of {context} tokens; "
                  "--json for every position):\n    positions  loss\n" + _position_table(by_pos))
    if plot is not None:
        print(f"wrote {plot}", file=sys.stderr if cfg.json else sys.stdout)
    return 0


def _hellaswag(model: Any, tokenizer: Any, items: list[dict[str, Any]], cfg: EvalConfig, name: str,
               dtype: str) -> int:
    """`gptlab eval --hellaswag=FILE`: acc and acc_norm, scored as llm.c and build-nanogpt score them."""
    from . import hellaswag

    scores = hellaswag.evaluate(model, hellaswag.tokenize(items, tokenizer))
    result = {"model": name, "hellaswag": cfg.hellaswag, **scores, "dtype": dtype}
    if cfg.json:
        print(json.dumps(result))
    else:
        print(f"model:     {name}\nhellaswag: {cfg.hellaswag}: {result['n']:,} examples\n"
              f"acc:       {result['acc']:.4f} (the ending of least total loss)\n"
              f"acc_norm:  {result['acc_norm']:.4f} (least loss per token; OpenAI's GPT-2 124M: 0.2955)")
    return 0


# --------------------------------------------------------------------------------------------------------
# gptlab plot
# --------------------------------------------------------------------------------------------------------


@dataclass
class PlotConfig:
    out: str = "loss.png"  # the PNG to write
    labels: str | None = None  # comma-separated legend labels, one per run (default: the directory names)


def plot_main(argv: list[str]) -> int:
    """`gptlab plot RUN [RUN ...] [--out=loss.png]`: the loss curves of the runs in one PNG."""
    from .rundir import plot_losses
    from .runs import legend_label

    parsed = _parse(
        PlotConfig, argv, {},
        "usage: gptlab plot RUN [RUN ...] [--out=loss.png] [--labels=a,b]\n\n"
        "Training loss (per logged step) and validation loss (per eval) of each run directory, in one PNG; the\n"
        "legend gives each run's final val loss (training's estimate) and tokens/s.\n",
    )
    if parsed is None:
        return 0
    cfg, runs = parsed
    if not runs:
        raise UsageError("pass one or more run directories: gptlab plot out/a out/b --out=ab.png")
    for run in runs:
        if not (Path(run) / "metrics.jsonl").is_file():
            raise UsageError(f"{run} has no metrics.jsonl; pass run directories written by gptlab train")
    labels = [s.strip() for s in cfg.labels.split(",")] if cfg.labels else None
    if labels is not None and len(labels) != len(runs):
        raise UsageError(f"--labels has {len(labels)} labels for {len(runs)} runs; give one per run, comma-separated")
    out = png_path("--out", cfg.out)
    # Each run's legend entry carries its numbers (final val loss, tokens/s), as `gptlab runs` shows them.
    labels = [legend_label(run, name) for run, name in zip(runs, labels or [None] * len(runs), strict=True)]
    out = plot_losses(runs, out, labels)
    print(f"wrote {out}")
    return 0


__all__ = ["COMMANDS", "EvalConfig", "PlotConfig", "SampleConfig", "main"]
