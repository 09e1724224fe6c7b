"""gptlab convert: turn a multi-head checkpoint into grouped-query attention by mean-pooling its K/V heads.

    gptlab convert --to-gqa 2 out/baby out/baby-gqa2         # mean-pool K/V heads (Ainslie et al. 2023, §2)
    gptlab train --init=out/baby-gqa2 ...                    # then uptrain it
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .hf import copy_hf_tokenizer
from .model import GPT
from .options import UsageError, coerce, options_of, parse_flags, unknown_flags
from .tokenizer import save_tokenizer
from .train import command


def convert_to_gqa(model: GPT, n_kv_head: int) -> GPT:
    """A copy of `model` with n_kv_head K/V heads, each the mean of its group of K/V heads (weights and biases).

    Query head h uses K/V head h // (n_head / n_kv_head) (as SDPA's enable_gqa), so group g pools the
    consecutive source heads g*r .. g*r+r-1, r = n_kv_head_src / n_kv_head. n_kv_head = current is a copy.
    """
    c = model.config
    src_kv = c.n_kv_head
    if n_kv_head < 1 or src_kv % n_kv_head:
        raise ValueError(
            f"--to-gqa {n_kv_head}: must divide the model's {src_kv} K/V heads; allowed: "
            f"{[d for d in range(1, src_kv + 1) if src_kv % d == 0]}"
        )
    new_config = c.replace(n_kv_head=n_kv_head)
    r, hd = src_kv // n_kv_head, c.head_dim
    q_dim = c.n_head * hd

    def pool(t: torch.Tensor) -> torch.Tensor:
        """t: (src_kv*hd, ...) rows of K or V -> (n_kv_head*hd, ...), each group of r heads averaged."""
        rest = t.shape[1:]
        return t.reshape(n_kv_head, r, hd, *rest).mean(dim=1).reshape(n_kv_head * hd, *rest)

    state = {}
    for key, t in model.state_dict().items():
        if key.endswith("attn.c_attn.weight") or key.endswith("attn.c_attn.bias"):
            q, k, v = t.split([q_dim, src_kv * hd, src_kv * hd], dim=0)
            t = torch.cat([q, pool(k), pool(v)], dim=0)
        state[key] = t.detach().clone()
    out = GPT(new_config)
    out.load_state_dict(state)
    if new_config.tie_embeddings:
        out.lm_head.weight = out.transformer.wte.weight
    return out.to(next(model.parameters()).device).eval()


CONVERT_USAGE = """usage: gptlab convert --to-gqa N SRC DST

Turn a multi-head (or GQA) checkpoint into grouped-query attention with N K/V heads by mean-pooling each
group's key and value heads (Ainslie et al. 2023, section 2). SRC: a gptlab run or checkpoint directory, a
Hugging Face GPT-2/Llama/Mistral directory, or a hub id (gpt2). DST: a new model directory (Llama/Mistral
format where SRC is one, else gptlab's, with a char model's tokenizer); uptrain it with
`gptlab train --init=DST`."""


@dataclass
class ConvertSettings:
    to_gqa: int | None = None  # K/V heads of the converted model


CONVERT_OPTIONS = options_of(ConvertSettings)


def _parse_args(argv: list[str]) -> tuple[int, list[str]]:
    """(N, [SRC, DST]) from `--to-gqa N SRC DST`, parsed as every command's flags are (options.parse_flags)."""
    unknown = unknown_flags(argv, CONVERT_OPTIONS)
    if unknown:
        raise UsageError(f"unknown flag {unknown[0]}; see gptlab convert --help")
    pairs, rest = parse_flags(argv, CONVERT_OPTIONS, aliases={})
    n = None
    for key, value in pairs:
        try:
            n = coerce(key, value, CONVERT_OPTIONS[key].type)
        except UsageError:
            raise UsageError(f"--to-gqa expects an integer number of K/V heads, got {value!r}") from None
    if n is None or len(rest) != 2:
        raise UsageError("expected --to-gqa N SRC DST; see gptlab convert --help")
    return n, rest


def convert_main(argv: list[str] | None = None) -> int:
    """`gptlab convert --to-gqa N SRC DST`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or "-h" in argv or "--help" in argv:
        print(CONVERT_USAGE)
        return 0 if argv else 2
    n, (src, dst) = _parse_args(argv)
    if Path(dst).exists() and (not Path(dst).is_dir() or any(Path(dst).iterdir())):
        raise UsageError(f"{dst} exists and is not empty; convert writes a new model directory: pick a new DST")
    model, tokenizer, directory = ckpt.load_model(src, need_tokenizer=False)
    try:
        out = convert_to_gqa(model, n)
    except ValueError as e:
        raise UsageError(str(e)) from None
    out.save_pretrained(dst)
    if tokenizer is not None and getattr(tokenizer, "name", "") == "char":
        save_tokenizer(tokenizer, Path(dst) / "tokenizer.json")
    # The source run's data goes with the model: `gptlab eval DST` measures it on the same val split.
    data = ckpt.data_reference(directory) if directory is not None else None
    if data is not None:
        (Path(dst) / ckpt.DATA_REF_NAME).write_text(json.dumps({**data, "converted_from": src}, indent=1) + "\n")
    c0, c1 = model.config, out.config
    if tokenizer is None:  # a Llama with its own tokenizer: transformers can uptrain it, gptlab cannot
        copied = copy_hf_tokenizer(src, Path(dst))
        nxt = (f"copied its tokenizer files ({', '.join(copied) or 'none found'}); gptlab has no tokenizer for "
               "this vocabulary: uptrain it with transformers")
    else:  # on the source's data (a char model knows only its characters), in a new work dir
        data_flags = [f"--{k}={v}" for k, v in (data or {}).items() if v is not None and k != "data.tokenizer"]
        work_dir = f"--system.work_dir={Path(dst)}-uptrain"
        nxt = "uptrain with: " + command("train", f"--init={dst}", *data_flags, work_dir)
    print(
        f"converted {src}: {c0.n_head} query heads, {c0.n_kv_head} -> {c1.n_kv_head} K/V heads "
        f"({model.num_params() / 1e6:.2f}M -> {out.num_params() / 1e6:.2f}M params); wrote {dst}\n{nxt}"
    )
    return 0
