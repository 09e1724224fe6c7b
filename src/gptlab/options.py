"""Command-line flags and config files -> typed dataclasses, minGPT style.

    gptlab train --model.n_layer=6 --trainer.max_iters=200 --data.path=input.txt --config=run.yaml

Every flag is `--section.field=VALUE` (or `--section.field VALUE`; a bare `--flag` means True for a bool).
Values are converted with the field's type hint: `int`, `float`, `str`, `bool` (True/False/true/false/1/0/
yes/no), `X | None` (None/null/none) and `Literal[...]` (one of the listed values). A config file (YAML or
JSON, nested sections or flat dotted keys) is read with `yaml.safe_load` / `json.loads`, never executed, and
command-line flags override it. Anything wrong raises `UsageError` with one line naming the flag.

The `model` section is not a dataclass of its own: it is every `GPTConfig` field plus `preset`, so a new
switch in config.py is a new flag with no change here. `model_config_from_flags` turns model flags (or a
checkpoint directory) into a `GPTConfig`; `gptlab info` and `gptlab train` both use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import GPTConfig
from .presets import MODEL_PRESETS

__all__ = [
    "ALIASES",
    "Option",
    "UsageError",
    "build_dataclass",
    "coerce",
    "format_options",
    "model_config_from_dict",
    "model_config_from_flags",
    "options_of",
    "parse_flags",
    "read_config_file",
]


class UsageError(ValueError):
    """A bad flag, value or config file; the message is one line that names it."""


# Other names users already type for our flags. minGPT (and the chargpt fork with RoPE/GQA built on it) put
# block_size under `data`, call the model preset `model_type` and the clip `grad_norm_clip`.
ALIASES: dict[str, str] = {
    "data.block_size": "model.block_size",
    "model.n_query_head": "model.n_head",
    "model.model_type": "model.preset",
    "model.pretrained_folder": "init",
    "trainer.grad_norm_clip": "trainer.grad_clip",
}
# `--model.rope=True` is a bool that means `--model.pos_emb=rope` (False: learned positions).
BOOL_ALIASES: dict[str, tuple[str, str, str]] = {"model.rope": ("model.pos_emb", "rope", "learned")}

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null")


# --------------------------------------------------------------------------------------------------------
# The flags a dataclass accepts
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One flag: its dotted key, type hint, default and one-line help."""

    key: str
    type: Any
    default: Any
    help: str = ""


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in a dataclass's source: our help text lives there."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (frozen app): help without comments
        return {}
    return {
        m["name"]: m["comment"].strip()
        for m in re.finditer(r"^\s+(?P<name>\w+)\s*:[^=\n]*=[^#\n]*#(?P<comment>.*)$", source, re.MULTILINE)
    }


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def options_of(cls: type, prefix: str = "") -> dict[str, Option]:
    """Every flag of dataclass `cls`: plain fields as `prefix.field`, nested dataclasses as `field.sub`.

    A field named `model` typed as a dict stands for the model section: every GPTConfig field, plus `preset`.
    """
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    out: dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(options_of(hint, prefix=f"{key}."))
        elif f.name == "model" and typing.get_origin(hint) is dict:
            out[f"{key}.preset"] = Option(
                f"{key}.preset", str | None, None, f"a model preset: {', '.join(sorted(MODEL_PRESETS))}"
            )
            out.update(options_of(GPTConfig, prefix=f"{key}."))
        else:
            out[key] = Option(key, hint, _default(f), comments.get(f.name, ""))
    return out


# --------------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return "|".join(str(a) for a in args)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(names) + ("|None" if type(None) in args else "")
    if typing.get_origin(hint) is tuple:
        return f"{_type_name(args[0])},..."
    return getattr(hint, "__name__", str(hint)).upper() if hint in (int, float, str, bool) else str(hint)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` (a string from the command line, or a YAML/JSON value) as type `hint`; UsageError if it isn't one."""
    flag = f"--{key}"
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
            raise UsageError(f"{flag} cannot be None")
        (inner,) = [a for a in args if a is not type(None)]  # our unions are all `X | None`
        return coerce(key, value, inner)
    if typing.get_origin(hint) is Literal:
        text = str(value).strip() if isinstance(value, str) else value
        if text not in args:
            raise UsageError(f"{flag} must be one of {', '.join(map(str, args))}; got {value!r}")
        return text
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]: "0,3" on the command line, a list in a config file
        items = value if isinstance(value, (list, tuple)) else str(value).strip(" ()[]").split(",")
        return tuple(coerce(key, item, args[0]) for item in items if str(item).strip())
    text = value.strip() if isinstance(value, str) else None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise UsageError(f"{flag} expects a boolean (True or False), got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None:
            try:
                return int(text)
            except ValueError:
                try:  # 2e3 or 1000.0 are integers too
                    number = float(text)
                    if number.is_integer():
                        return int(number)
                except ValueError:
                    pass
        raise UsageError(f"{flag} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif text is None:
            raise UsageError(f"{flag} expects a number, got {value!r}")
        else:
            try:  # YAML reads 1e-3 (no dot) as a string, so strings from config files land here too
                number = float(text)
            except ValueError:
                raise UsageError(f"{flag} expects a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UsageError(f"{flag} expects a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{flag} expects a string, got {value!r}")
    raise TypeError(f"internal: no conversion for {flag} of type {hint!r}")  # a new field type in a dataclass


# --------------------------------------------------------------------------------------------------------
# Command line and config files
# --------------------------------------------------------------------------------------------------------


def _unknown(key: str, known: typing.Iterable[str], aliases: dict[str, str]) -> UsageError:
    names = sorted(set(known) | set(aliases))
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"; did you mean --{close[0]}?" if close else "; see --help for every flag"
    return UsageError(f"unknown flag --{key}{hint}")


def canonical(
    key: str, value: Any, options: dict[str, Option], aliases: dict[str, str] | None = None
) -> tuple[str, Any]:
    """Resolve an alias: (the key it stands for, its value). UsageError for a key that is neither.

    aliases: other names for keys of `options` (default: the train flags' ALIASES and BOOL_ALIASES).
    """
    if aliases is None:
        if key in BOOL_ALIASES:
            target, if_true, if_false = BOOL_ALIASES[key]
            return target, if_true if coerce(key, value, bool) else if_false
        aliases = {**ALIASES, **{k: v[0] for k, v in BOOL_ALIASES.items()}}
    key = aliases.get(key, key)
    if key not in options:
        raise _unknown(key, options, aliases)
    return key, value


def parse_flags(
    argv: list[str], options: dict[str, Option], aliases: dict[str, str] | None = None
) -> tuple[list[tuple[str, Any]], list[str]]:
    """Split argv into ([(canonical key, raw value), ...] in order, [positional arguments]).

    Accepts `--key=value`, `--key value` and, for booleans, a bare `--key`. Aliases are resolved here;
    values are converted later (see `coerce`), so that the last occurrence of a flag wins cleanly.
    """
    pairs: list[tuple[str, Any]] = []
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            positionals.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")  # --trainer.max-iters works too
        if not eq:
            target = (ALIASES if aliases is None else aliases).get(key, key)
            is_bool = (aliases is None and key in BOOL_ALIASES) or (target in options and options[target].type is bool)
            if is_bool:
                value = "True"
            elif i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            else:
                raise UsageError(f"--{key} needs a value: --{key}=VALUE")
        pairs.append(canonical(key, value, options, aliases))
    return pairs, positionals


def unknown_flags(argv: list[str], options: dict[str, Option]) -> list[str]:
    """The --flags in argv that name none of `options` (a command without aliases checks these first, so that
    `--bogus` is called unknown rather than asked for a value)."""
    return [a for a in argv if a.startswith("--") and a[2:].partition("=")[0].replace("-", "_") not in options]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"max_iters": 5}} -> {"trainer.max_iters": 5}; dotted keys may be used directly too."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, prefix=f"{key}."))
        else:
            out[key] = v
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The flat {dotted key: value} of a YAML (.yaml/.yml) or JSON file. Parsed, never executed."""
    path = Path(path).expanduser()
    if path.suffix == ".py":
        raise UsageError(f"{path}: Python config files are not executed; write the settings as YAML or JSON")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # here: only YAML config files need it (JSON ones do not)

            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: report the position they give
        reason = " ".join(str(e).split())
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise UsageError(f"config file {path} is not valid {kind}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of sections/keys, got {type(data).__name__}")
    return flatten(data)


# --------------------------------------------------------------------------------------------------------
# Flat values -> dataclass
# --------------------------------------------------------------------------------------------------------


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """An instance of `cls` from flat {dotted key: already-coerced value}; missing keys keep their defaults.

    The `model` dict section is exactly the model keys given ({"preset": ..., "n_layer": ...}).
    """
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = build_dataclass(hint, values, prefix=f"{key}.")
        elif f.name == "model" and typing.get_origin(hint) is dict:
            sub = {k[len(key) + 1 :]: v for k, v in values.items() if k.startswith(f"{key}.")}
            kwargs[f.name] = sub
        elif key in values:
            kwargs[f.name] = values[key]
    return cls(**kwargs)


def format_options(
    options: dict[str, Option], defaults: dict[str, Any] | None = None, aliases: dict[str, str] | None = None
) -> str:
    """The flags as help lines, grouped by section: `--key=TYPE  (default)  help`."""
    defaults = defaults or {}
    lines: list[str] = []
    section = None
    for key, opt in options.items():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"\n{section or 'options'}:")
        default = defaults.get(key, opt.default)
        if isinstance(default, str) and not default.isprintable():  # a newline default stays on its line
            default = default.encode("unicode_escape").decode("ascii")
        flag = f"--{key}={_type_name(opt.type)}"
        lines.append(f"  {flag:<44} {f'(default: {default})':<24} {opt.help}".rstrip())
    if aliases is None:
        aliases = {**ALIASES, **{k: f"{v[0]}={v[1]}" for k, v in BOOL_ALIASES.items()}}
    if aliases:
        lines.append("\naliases (other names for the flags above):")
    for alias, target in aliases.items():
        lines.append(f"  --{alias:<42} -> --{target}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Model config
# --------------------------------------------------------------------------------------------------------


def model_config_from_dict(model: dict[str, Any], vocab_size: int | None = None) -> GPTConfig:
    """The GPTConfig of a model section: its preset's fields, overridden by the fields given.

    vocab_size, when given (from the tokenizer), wins over the preset's. ValueError for bad combinations.
    """
    fields = dict(model)
    preset = fields.pop("preset", None)
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in MODEL_PRESETS:
            choices = ", ".join(sorted(MODEL_PRESETS))
            raise UsageError(f"--model.preset: unknown preset {preset!r}; choose from {choices}")
        base = dict(MODEL_PRESETS[preset])
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    try:
        return GPTConfig(**{**base, **fields})
    except ValueError as e:
        raise UsageError(f"model config: {e}") from None


def model_config_from_flags(flags: list[str]) -> GPTConfig:
    """The GPTConfig that `gptlab train` with these flags would build (before the tokenizer sets vocab_size).

    Understands `--model.preset=NAME`, every GPTConfig field as `--model.FIELD=VALUE`, the aliases
    (`--model.n_query_head`, `--model.rope`, `--data.block_size`, ...), run presets (`--preset=demo`),
    `--config=FILE`, and a pretrained model: `--model.pretrained_folder=DIR`, `--init=DIR|gpt2` or a
    positional checkpoint or run directory, whose config.json is read (model flags then change it).
    Other train flags are accepted and ignored. Raises UsageError (a ValueError) for anything invalid.
    """
    # Here, not at the top: checkpoint and train_config import this module.
    from .checkpoint import model_config
    from .train_config import parse_train_args

    positional = [a for a in flags if not a.startswith("--")]
    if len(positional) > 1:
        raise UsageError(f"expected at most one checkpoint directory, got {positional}")
    flags = [a for a in flags if a.startswith("--")]
    if positional:
        flags.append(f"--init={positional[0]}")
    cfg = parse_train_args(flags)
    if cfg.init is not None:
        base = model_config(cfg.init)[0]
        changes = {k: v for k, v in cfg.model.items() if k != "preset"}
        try:
            return base.replace(**changes)
        except ValueError as e:
            raise UsageError(f"model config: {e}") from None
    return model_config_from_dict(cfg.model)
