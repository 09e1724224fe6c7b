"""`gptlab info`'s command line: one configuration or two side by side, from flags, a checkpoint or the flags of
`gptlab train`; the numbers are info.py's."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from .checkpoint import read_json
from .config import PRESETS, GPTConfig
from .info import dtype_name, format_compare, format_report, model_stats

# --- command line ---------------------------------------------------------------------------------------------

HELP = """\
usage: gptlab info [SPEC] [--context N] [--batch N] [--dtype fp32|bf16|fp16] [--json] [--compare SPEC]
       gptlab info --hardware [SPEC] [--context N]

Parameters, FLOPs, KV cache and training memory of a model configuration, computed from the config alone.

SPEC is one configuration:
  --model.preset=NAME [--model.FIELD=VALUE ...]   a preset with fields changed (no preset: GPT-2 124M defaults)
  --model.FIELD=VALUE ...                         any GPTConfig field, e.g. --model.n_kv_head=4 --model.window=256
  DIR [--model.FIELD=VALUE ...]                   a checkpoint or run directory's config.json (gptlab, gpt2,
                                                  llama, mistral, qwen3, mixtral, qwen3_moe; no weights are
                                                  read), with fields changed
  --preset=NAME, --config=FILE, --init=DIR, --data.*, --trainer.*, --system.* (with any --model.* flags)
                                                  the model that `gptlab train` with these flags builds: its run
                                                  preset, and the vocabulary of its data's tokenizer
The aliases of gptlab train work too (--model.n_query_head=N, --model.rope=True, --model.model_type=gpt-mini).
--model.preset=NAME is a model preset alone; a run preset of the same name (baby, tiny) trains another model
(no biases, the data's vocabulary, its own block_size): gptlab info --preset=NAME shows that one.

--compare SPEC    everything after --compare describes a second configuration B, built from scratch like the
                  first (it does not inherit A's flags); both are printed side by side with B/A ratios,
                  where '÷3.00' means B needs a third of what A needs.
--context N       tokens per sequence (default: block_size of the first configuration)
--batch N         sequences (default 1), for the KV cache and training memory
--dtype D         fp32 (default), bf16 or fp16: bytes of weights, gradients, AdamW moments, KV cache, activations
                  (all in D, as in pure bf16 training; bf16 autocast, --trainer.dtype=bfloat16, keeps fp32 weights,
                  gradients and moments)
--json            print the numbers as JSON instead of a table
--hardware        this machine instead: CPU, ISA, whether bf16 is native (what --trainer.dtype=auto picks), and
                  the fast paths measured fastest here for SPEC (decode, and sliding windows at --context)

--context, --batch, --dtype and --json may stand anywhere and apply to both configurations.

presets: {presets}

examples:
  gptlab info --model.preset=gpt2-modern
  gptlab info --preset=baby                       # the model gptlab train --preset=baby trains
  gptlab info --model.preset=gpt2 --compare --model.preset=gpt2 --model.n_kv_head=4
  gptlab info --model.preset=gpt2 --context 4096 --compare --model.preset=gpt2 --model.pos_emb=rope --model.window=1024
  gptlab info path/to/checkpoint --dtype bf16 --batch 8
"""

_OPTIONS = ("--context", "--batch", "--dtype")
# Flags of `gptlab train` beyond --model.*: a SPEC with one of them is the model that train builds.
_TRAIN_FLAGS = ("--preset", "--config", "--init", "--data.", "--trainer.", "--system.")
_TRAIN_STR_FLAGS = ("--preset", "--config", "--init", "--data.path", "--data.tokenizer", "--data.cache_dir")


class _LocalUsageError(ValueError):
    """Stands in for gptlab.options.UsageError when that module is not there."""


def _usage_error() -> type[ValueError]:
    try:
        from .options import UsageError
    except ImportError:
        return _LocalUsageError
    return UsageError


def _parse_value(name: str, text: str, default: Any) -> Any:
    """Fallback parsing of --model.FIELD=VALUE by the type of the field's current value."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if isinstance(default, bool) or name in ("bias", "tie_embeddings"):
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"--model.{name} must be true or false, got {text!r}")
    if isinstance(default, float):
        return float(text)
    if isinstance(default, int) or name in ("n_kv_head", "head_dim", "window", "mlp_hidden"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--model.{name} must be an integer, got {text!r}") from None
    return text


def _config_from_flags_fallback(flags: list[str], base: GPTConfig | None = None) -> GPTConfig:
    """Minimal --model.preset / --model.FIELD=VALUE parsing, used when gptlab.options is missing."""
    preset, changes = None, {}
    defaults = GPTConfig().to_dict()
    for flag in flags:
        key, eq, value = flag.partition("=")
        if not eq:
            raise ValueError(f"{flag} needs a value: {flag}=VALUE")
        name = key.removeprefix("--model.")
        if name == "preset":
            preset = value
        elif name in defaults:
            changes[name] = _parse_value(name, value, defaults[name])
        else:
            allowed = ", ".join(f"--model.{n}" for n in defaults)
            raise ValueError(f"unknown flag {key}; allowed: --model.preset, {allowed}")
    if preset is not None:
        base = GPTConfig.from_preset(preset)
    return (base or GPTConfig()).replace(**changes)


def _config_from_flags_options(flags: list[str], base: GPTConfig | None) -> GPTConfig:
    """--model.* flags parsed by gptlab.options (aliases, value checks, minGPT presets).

    Only the model section is read: `gptlab info` describes a model, so the defaults of a training run
    (`gptlab train`'s run presets and data.block_size) must not leak in, as they would through
    options.model_config_from_flags. No preset and no checkpoint: GPT-2 124M.
    """
    from .options import MODEL_PRESETS, Option, UsageError, coerce, options_of, parse_flags

    opts = {"model.preset": Option("model.preset", str, None), **options_of(GPTConfig, prefix="model.")}
    pairs, positional = parse_flags(flags, opts)
    if positional:
        raise UsageError(f"unexpected argument(s) {positional}")
    values = {key.removeprefix("model."): coerce(key, raw, opts[key].type) for key, raw in pairs}  # last wins
    preset = values.pop("preset", None)
    if preset is not None:
        if preset not in MODEL_PRESETS:
            choices = ", ".join(sorted(MODEL_PRESETS))
            raise UsageError(f"--model.preset: unknown preset {preset!r}; choose from {choices}")
        if base is not None:
            raise UsageError("--model.preset and a checkpoint directory both pick a model; give one of them")
        base = GPTConfig(**MODEL_PRESETS[preset])
    try:
        return (base or GPTConfig()).replace(**values)
    except ValueError as e:
        raise UsageError(f"model config: {e}") from None


def config_from_flags(flags: list[str], checkpoint: str | None = None) -> GPTConfig:
    """A GPTConfig from --model.* flags, changing a checkpoint's config if one is given (else a preset's, else
    GPT-2 124M's). Parsed by gptlab.options when it is there, else by a minimal local parser."""
    base = config_from_checkpoint(checkpoint) if checkpoint else None
    try:
        from . import options  # noqa: F401
    except ImportError:
        return _config_from_flags_fallback(flags, base)
    return _config_from_flags_options(flags, base)


def config_from_checkpoint(path: str | Path) -> GPTConfig:
    """The GPTConfig of a checkpoint directory, a run directory of `gptlab train` (its best/ or last/ checkpoint),
    or a config.json, without loading any weights."""
    path = Path(path)
    candidates = [path / "config.json", path / "best" / "config.json", path / "last" / "config.json"]
    cfg_path = next((c for c in candidates if c.is_file()), None) if path.is_dir() else path
    if cfg_path is None or not cfg_path.is_file():
        raise ValueError(f"{path} is not a checkpoint or run directory: it has no config.json (nor best/, last/)")
    d = read_json(cfg_path)
    if not isinstance(d, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object")
    model_type = d.get("model_type")
    if model_type == "gptlab":
        if not isinstance(d.get("gptlab"), dict):
            raise ValueError(f'{cfg_path}: a gptlab config.json needs a "gptlab" object of GPTConfig fields')
        return GPTConfig.from_dict(d["gptlab"])
    if model_type is None:  # GPTConfig.save writes the bare fields
        return GPTConfig.from_dict(d)
    from .hf import config_from_hf

    return config_from_hf(d)


def _split_args(argv: list[str], usage: type[ValueError]) -> tuple[list[list[str]], dict[str, str], bool]:
    """Split argv into one or two config specs, the shared options, and --json."""
    specs: list[list[str]] = [[]]
    options: dict[str, str] = {}
    as_json = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if arg == "--compare":
            if len(specs) == 2:
                raise usage("--compare may be given once")
            specs.append([])
        elif arg == "--json":
            as_json = True
        elif key in _OPTIONS:
            if not eq:
                i += 1
                if i == len(argv):
                    raise usage(f"{key} needs a value")
                value = argv[i]
            options[key] = value
        elif (arg.startswith("--model.") or arg in _TRAIN_STR_FLAGS) and not eq and i + 1 < len(argv) \
                and not argv[i + 1].startswith("--"):
            specs[-1].append(f"{arg}={argv[i + 1]}")  # --model.FIELD VALUE -> --model.FIELD=VALUE
            i += 1
        elif arg.startswith("--") and not arg.startswith(("--model.", *_TRAIN_FLAGS)):
            raise usage(f"unknown option {arg}; see gptlab info --help")
        else:
            specs[-1].append(arg)
        i += 1
    if len(specs) == 2 and not specs[1]:
        raise usage("--compare needs a second configuration after it, e.g. --compare --model.preset=gpt2-modern")
    return specs, options, as_json


def config_from_train_flags(flags: list[str]) -> GPTConfig:
    """The model `gptlab train FLAGS` builds: run preset, config file and model flags as train applies them, and
    (for a new model) the vocab_size of the data's tokenizer, so the parameter count is the trained model's."""
    from .options import model_config_from_flags
    from .train import data_vocab_size, parse_train_args

    config = model_config_from_flags(flags)  # a DIR among the flags is --init, as there
    if any(not f.startswith("--") for f in flags):
        return config
    cfg = parse_train_args(flags)
    return config if cfg.init is not None else config.replace(vocab_size=data_vocab_size(cfg))


def preset_note(spec: list[str]) -> str | None:
    """For `--model.preset=NAME` where NAME is a run preset too: which model this is, and where the other is."""
    try:
        from .train import RUN_PRESETS
    except ImportError:  # a trimmed install without the trainer: no run presets to confuse it with
        return None
    preset = next((a.partition("=")[2] for a in spec if a.startswith("--model.preset=")), None)
    if preset not in RUN_PRESETS or any(a.startswith(_TRAIN_FLAGS) for a in spec):
        return None
    return textwrap.fill(f"note: this is the model preset {preset}; gptlab train --preset={preset} trains another "
                         f"model (the run preset's settings and the data's vocabulary): gptlab info --preset={preset} "
                         "shows it", width=100, subsequent_indent="    ")


def _resolve_spec(spec: list[str], usage: type[ValueError]) -> tuple[GPTConfig, str]:
    """(config, name) of one SPEC: a checkpoint directory, --model.* flags, or gptlab train's flags."""
    if any(a.startswith(_TRAIN_FLAGS) for a in spec):
        return config_from_train_flags(spec), "gptlab train " + " ".join(spec)
    paths = [a for a in spec if not a.startswith("--")]
    flags = [a for a in spec if a.startswith("--")]
    if len(paths) > 1:
        raise usage(f"give at most one checkpoint directory per configuration, got {' '.join(paths)}")
    if paths and not flags:
        return config_from_checkpoint(paths[0]), paths[0]
    config = config_from_flags(flags, paths[0] if paths else None)
    preset = next((a.partition("=")[2] for a in flags if a.startswith("--model.preset=")), None)
    name = " ".join(spec) if spec else "GPT-2 124M (defaults)"
    if preset in PRESETS and len(flags) == 1:
        name = preset
    return config, name


def _positive_int(options: dict[str, str], key: str, usage: type[ValueError]) -> int | None:
    if key not in options:
        return None
    try:
        value = int(options[key])
    except ValueError:
        value = 0
    if value < 1:
        raise usage(f"{key} must be a positive integer, got {options[key]!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gptlab info`; returns the exit status (0 ok, 2 usage or configuration error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        from .options import MODEL_PRESETS

        print(HELP.format(presets=", ".join(MODEL_PRESETS)))
        return 0
    usage = _usage_error()
    hardware = "--hardware" in argv
    argv = [a for a in argv if a != "--hardware"]
    try:
        specs, options, as_json = _split_args(argv, usage)
        configs = [_resolve_spec(spec, usage) for spec in specs]
        context = _positive_int(options, "--context", usage) or configs[0][0].block_size
        batch = _positive_int(options, "--batch", usage) or 1
        try:
            dtype = dtype_name(options.get("--dtype", "fp32"))
        except ValueError as e:
            raise usage(f"--dtype: {e}") from None
        if hardware:
            from . import hardware as hw

            hw.measure_fast_paths(configs[0][0], context)
            print(hw.describe())
            return 0
        stats = [model_stats(cfg, context, batch, dtype) for cfg, _ in configs]
    except ValueError as e:  # UsageError, invalid configs, unreadable checkpoints
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    names = [name for _, name in configs]
    if as_json:
        out = [dict(name=n, **s.to_dict()) for n, s in zip(names, stats, strict=True)]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    elif len(stats) == 1:
        print(format_report(stats[0], names[0]))
    else:
        print(format_compare(stats[0], stats[1], names[0], names[1]))
    notes = [note for note in map(preset_note, specs) if note]
    if notes and not as_json:
        print("\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
