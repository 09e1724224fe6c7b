"""`gptlab info`: what a configuration costs, computed from the GPTConfig alone.

Everything here is arithmetic on the config: no model is built. tests/test_info.py checks each number against
a real model: parameter counts against `GPT(config).named_parameters()`, FLOPs against
`torch.utils.flop_counter.FlopCounterMode` on a real forward and backward, KV-cache bytes against the buffers
`generate.make_caches` allocates, optimizer memory against a real `torch.optim.AdamW` step, and activation
memory against the tensors autograd saves for backward.

Conventions
-----------
* Parameters: tied weights are counted once (a tied `lm_head` costs 0). Non-embedding parameters leave out the
  token and position tables, as `GPT.num_params(non_embedding=True)` does.
* FLOPs: 2 per multiply-add. Only matrix products are counted; norms, activations, softmax and the embedding
  lookup are a rounding error next to them. Per token of a forward pass of `context` tokens:

      matmuls   = 2 * N_matmul          (N_matmul: every weight used in a product, lm_head included even when tied)
      attention = 2 * 2 * n_layer * T_eff * n_embd     (q·k scores, then the weighted sum of v)

  (n_head x head_dim when head_dim is set apart from n_embd / n_head, as in Qwen3; MLA: half its q·k + v widths.)

  T_eff is the number of keys a query sees, averaged over the positions of the sequence: (T + 1) / 2 for
  causal attention over T tokens, less with a sliding window (query i sees min(i + 1, window) keys), averaged
  over the layers too (local/global layers: the local ones slide, the global ones do not). A
  training step (forward + backward) is 3 x forward: the backward pass does two products per forward product.
* Bytes: the dtype of weights, gradients, AdamW moments, KV cache and activations (`model.to(dtype)` then
  `torch.optim.AdamW`, which keeps its moments in the dtype of the weights). Mixed precision is not modelled.
* Activations: the tensors autograd saves for backward in this implementation (dropout 0), per layer and token:
  the norm inputs, the inputs of every Linear, q/k/v (and the rotated q/k with RoPE), the attention output and
  its log-sum-exp, the MLP hidden states (QK-norm: the fp32 normalized heads and their RMS); plus the final norm
  and fp32 log-probabilities over the vocabulary.
  The sliding-window kernel keeps its own copies of q, k, v and the output, padded to whole windows (the flash band
  path; on short sequences a masked SDPA may be measured faster and saves its mask instead). Not counted:
  tensors that live only during one step of the pass (the logits, their gradient) and the allocator's slack, so
  the peak is higher than this total.
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import read_json
from .config import PRESETS, SWITCHES, GPTConfig
from .info_attention import (
    FP32,
    attention_activations,
    attention_widths,
    kv_numbers_per_token,
    layer_windows,
    mla_activations,
    mla_decode_flops,
    mla_params,
    positions_held,
)

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
INT64 = 8

# The parameter table: key in ModelStats.params, group, row label.
COMPONENTS = (
    ("wte", "embeddings", "token (wte)"),
    ("wpe", "embeddings", "position (wpe)"),
    ("q", "attention", "Q"),
    ("k", "attention", "K"),
    ("v", "attention", "V"),
    ("attn_out", "attention", "out"),
    ("mlp_gate", "mlp", "gate"),
    ("mlp_up", "mlp", "up"),
    ("mlp_down", "mlp", "down"),
    ("norms", "norms", "2 x n_layer + 1"),
    ("lm_head", "head", "lm_head (0 if tied to wte)"),
)


def dtype_name(dtype: str) -> str:
    """'fp32', 'bf16' or 'fp16' for any of their names (ValueError otherwise)."""
    name = DTYPE_ALIASES.get(str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))
    if name not in DTYPE_BYTES:
        raise ValueError(f"expected one of {', '.join(sorted(DTYPE_BYTES))}, got {dtype!r}")
    return name


@dataclass
class ModelStats:
    """The costs of one configuration at a given context, batch and dtype. All counts are exact integers
    except attn_keys_per_query (an average) and the FLOPs that depend on it."""

    config: GPTConfig
    context: int
    batch: int
    dtype: str
    bytes_per_value: int
    params: dict[str, int]  # component -> count, keys as in COMPONENTS
    total_params: int
    non_embedding_params: int
    matmul_params: int  # weights that take part in a matrix product per token (lm_head included)
    attn_keys_per_query: float  # T_eff
    flops_matmul_per_token: int
    flops_attention_per_token: float
    flops_forward_per_token: float
    flops_train_per_token: float
    flops_train_per_step: float  # batch * context tokens
    flops_decode_per_token: float  # generating the last token of the context, with a KV cache
    kv_bytes_per_token: int  # K and V of one position, all layers, one sequence
    kv_cache_positions: float  # positions a layer's cache holds for `context` tokens (rolling: the window), mean
    kv_cache_bytes: int  # batch sequences
    weights_bytes: int
    grads_bytes: int
    adamw_bytes: int
    activation_bytes: int
    activation_parts: dict[str, int] = field(default_factory=dict)

    @property
    def train_memory_bytes(self) -> int:
        return self.weights_bytes + self.grads_bytes + self.adamw_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        d["train_memory_bytes"] = self.train_memory_bytes
        return d


def param_table(c: GPTConfig) -> dict[str, int]:
    """Parameters per component (keys as in COMPONENTS), biases with their weights, tied weights once."""
    d, hd, L, b = c.n_embd, c.head_dim, c.n_layer, int(c.bias)
    q, kv = c.n_head * hd, c.n_kv_head * hd
    swiglu = c.mlp == "swiglu"
    norm = d * (2 if c.norm == "layernorm" and c.bias else 1)  # weight (+ bias); RMSNorm has no bias
    mla = {k: L * n for k, n in mla_params(c).items()} if c.kv_lora_rank is not None else {"norms": 0}
    return {
        "wte": c.vocab_size * d,
        "wpe": c.block_size * d if c.pos_emb == "learned" else 0,
        "q": L * (d * q + b * q),
        "k": L * (d * kv + b * kv),
        "v": L * (d * kv + b * kv),
        "attn_out": L * (q * d + b * d),
        "mlp_gate": L * (d * c.mlp_hidden + b * c.mlp_hidden) if swiglu else 0,
        "mlp_up": L * (d * c.mlp_hidden + b * c.mlp_hidden),
        "mlp_down": L * (c.mlp_hidden * d + b * d),
        "norms": (2 * L + 1) * norm + (2 * L * hd if c.qk_norm else 0) + mla["norms"],  # QK-norm, MLA's latents
        "lm_head": 0 if c.tie_embeddings else c.vocab_size * d,
        **{k: n for k, n in mla.items() if k != "norms"},  # MLA's projections in place of q, k, v, out
    }


def matmul_params(c: GPTConfig) -> int:
    """Weights used in a matrix product for every token: attention and MLP matrices, and the lm_head."""
    d, hd = c.n_embd, c.head_dim
    attn = d * (c.n_head + 2 * c.n_kv_head) * hd + c.n_head * hd * d
    if c.kv_lora_rank is not None:  # MLA: its matrices (biases and norm gains are not multiplied)
        attn = sum(mla_params(c.replace(bias=False)).values()) - c.kv_lora_rank - (c.q_lora_rank or 0)
    mlp = (3 if c.mlp == "swiglu" else 2) * d * c.mlp_hidden
    return c.n_layer * (attn + mlp) + c.vocab_size * d


def keys_per_query(context: int, window: int | None) -> float:
    """T_eff: keys a query attends to, averaged over positions 0..context-1 (query i sees min(i + 1, window))."""
    w = context if window is None else min(window, context)
    # Positions 0..w-1 see 1..w keys; the remaining context - w positions see w each.
    return (w * (w + 1) / 2 + (context - w) * w) / context


def activation_parts(c: GPTConfig, batch: int, context: int, nbytes: int) -> dict[str, int]:
    """Bytes autograd saves for one training forward of batch x context tokens, by where they are saved."""
    d, hd, L = c.n_embd, c.head_dim, c.n_layer
    tokens = batch * context
    # LayerNorm saves its input and (mean, rstd); nn.RMSNorm saves its input and the normalized x in fp32, and rstd.
    norm = (d + 2) * nbytes if c.norm == "layernorm" else (2 * d + 1) * FP32
    hidden = c.mlp_hidden * nbytes
    # GELU: the c_fc output and GELU's output (c_proj input). SwiGLU: [gate|up], silu(gate), silu(gate) * up.
    mlp = d * nbytes + (4 if c.mlp == "swiglu" else 2) * hidden
    per_sequence = INT64 * context if c.pos_emb == "learned" else 2 * context * hd * FP32  # positions / cos, sin
    return {
        "norms": tokens * (2 * L + 1) * norm,
        "attention": sum((attention_activations if c.kv_lora_rank is None else mla_activations)(
            c, batch, context, nbytes, w) for w in layer_windows(c)),
        "mlp": tokens * L * mlp,
        "head": tokens * (d * nbytes + c.vocab_size * FP32),  # lm_head input, fp32 log-probabilities
        "token ids, positions": tokens * 2 * INT64 + per_sequence + FP32,  # inputs, targets, loss
    }


def model_stats(config: GPTConfig, context: int | None = None, batch: int = 1, dtype: str = "fp32") -> ModelStats:
    """Parameters, FLOPs, KV cache and training memory of `config` for `batch` sequences of `context` tokens
    (default: block_size) in `dtype` ('fp32', 'bf16', 'fp16'). See the module docstring for the conventions."""
    c = config
    context = c.block_size if context is None else context
    for name, value in (("context", context), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    dtype = dtype_name(dtype)
    nbytes = DTYPE_BYTES[dtype]

    params = param_table(c)
    total = sum(params.values())
    non_embedding = total - params["wte"] - params["wpe"]

    n_matmul = matmul_params(c)
    t_eff = sum(keys_per_query(context, w) for w in layer_windows(c)) / c.n_layer  # averaged over layers too
    flops_matmul = 2 * n_matmul
    qk_width, v_width = attention_widths(c)  # n_head x head_dim each, n_embd unless head_dim is set apart
    flops_attn = 2 * c.n_layer * t_eff * (qk_width + v_width)
    forward = flops_matmul + flops_attn
    held = positions_held(c, context)  # per layer: what the last token of the context sees, and what is cached
    decode = flops_matmul + 2 * sum(held) * (qk_width + v_width)
    if c.kv_lora_rank is not None:  # MLA decodes from the latents, with the up-projections absorbed
        decode = flops_matmul + mla_decode_flops(c, held)

    kv_per_token = c.n_layer * kv_numbers_per_token(c) * nbytes
    positions = sum(held) // c.n_layer if len(set(held)) == 1 else sum(held) / c.n_layer  # mean over layers

    parts = activation_parts(c, batch, context, nbytes)
    return ModelStats(
        config=c, context=context, batch=batch, dtype=dtype, bytes_per_value=nbytes,
        params=params, total_params=total, non_embedding_params=non_embedding, matmul_params=n_matmul,
        attn_keys_per_query=t_eff,
        flops_matmul_per_token=flops_matmul, flops_attention_per_token=flops_attn,
        flops_forward_per_token=forward, flops_train_per_token=3 * forward,
        flops_train_per_step=3 * forward * batch * context, flops_decode_per_token=decode,
        kv_bytes_per_token=kv_per_token, kv_cache_positions=positions,
        kv_cache_bytes=batch * sum(held) * kv_per_token // c.n_layer,
        weights_bytes=total * nbytes, grads_bytes=total * nbytes, adamw_bytes=2 * total * nbytes,
        activation_bytes=sum(parts.values()), activation_parts=parts,
    )


# --- formatting ----------------------------------------------------------------------------------------------


def fmt_count(n: float) -> str:
    """124439808 -> '124.44 M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def fmt_bytes(n: float) -> str:
    """Binary units: 1536 -> '1.50 KiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_ratio(a: float, b: float) -> str:
    """How b compares with a: 'x2.00', '÷3.00', '=', 'x0' (b is 0) or 'new' (a is 0)."""
    if a == b:
        return "="
    if b == 0:
        return "x0"
    if a == 0:
        return "new"
    r = b / a
    if 0.995 <= r < 1.005:  # close to 1: show the digits that differ
        return f"x{r:.3f}"
    return f"x{r:.2f}" if r >= 1 else f"÷{1 / r:.2f}"


def describe(c: GPTConfig) -> str:
    """One line naming every switch of the config (in the order of config.SWITCHES) and its sizes."""
    parts = [
        f"{c.n_layer} layers",
        f"n_embd {c.n_embd}",
        *(text for s in SWITCHES if (text := s.describe(c)) is not None),
        "biases" if c.bias else "no biases",
        "tied embeddings" if c.tie_embeddings else "untied lm_head",
        f"vocab {c.vocab_size}",
        f"block_size {c.block_size}",
    ]
    return ", ".join(parts)


@dataclass
class _Row:
    section: str
    label: str
    value: float
    kind: str  # "count", "flops", "bytes", "number"


def report_rows(s: ModelStats) -> list[_Row]:
    """The report as (section, label, value, kind) rows; single and side-by-side reports print the same rows."""
    params = "Parameters (tied weights counted once)"
    rows = []
    last = None
    for key, group, name in COMPONENTS:
        if key == "norms" and (s.config.qk_norm or s.config.kv_lora_rank):  # their gains are norm weights too
            name += " (+ QK-norm)" if s.config.qk_norm else " (+ MLA latents)"
        rows.append(_Row(params, f"{group if group != last else '':<11} {name}", s.params[key], "count"))
        last = group
    rows += [
        _Row(params, "total", s.total_params, "count"),
        _Row(params, "non-embedding", s.non_embedding_params, "count"),
    ]
    flops = f"FLOPs per token (2 per multiply-add; context {s.context})"
    c = s.config
    width = "n_embd" if c.n_head * c.head_dim == c.n_embd else "n_head x hd"
    width = "n_head x (qk + v) / 2" if c.kv_lora_rank else width  # MLA: its q·k and value widths differ
    rows += [
        _Row(flops, "forward: matmuls = 2 x N_matmul", s.flops_matmul_per_token, "flops"),
        _Row(flops, f"forward: attention = 4 x n_layer x T_eff x {width}", s.flops_attention_per_token, "flops"),
        _Row(flops, "  T_eff (keys per query, averaged)", s.attn_keys_per_query, "number"),
        _Row(flops, "forward", s.flops_forward_per_token, "flops"),
        _Row(flops, "training step (3 x forward)", s.flops_train_per_token, "flops"),
        _Row(flops, f"training step, all {s.batch} x {s.context} tokens", s.flops_train_per_step, "flops"),
        _Row(flops, f"generating token {s.context} with a KV cache", s.flops_decode_per_token, "flops"),
    ]
    kv, kv_formula = f"KV cache, {s.dtype}", "2 x n_layer x n_kv_head x head_dim"
    rows += [
        _Row(kv, f"per token: {'n_layer x (latent + RoPE key)' if c.kv_lora_rank else kv_formula} x "
             f"{s.bytes_per_value} B", s.kv_bytes_per_token, "bytes"),
        _Row(kv, "positions held per layer: min(context, window), mean", s.kv_cache_positions, "number"),
        _Row(kv, f"batch {s.batch} x positions held", s.kv_cache_bytes, "bytes"),
    ]
    mem = f"Training memory estimate, AdamW, {s.dtype}"
    rows += [
        _Row(mem, "weights", s.weights_bytes, "bytes"),
        _Row(mem, "gradients", s.grads_bytes, "bytes"),
        _Row(mem, "AdamW moments (m, v)", s.adamw_bytes, "bytes"),
        _Row(mem, f"activations saved for backward, {s.batch} x {s.context} tokens", s.activation_bytes, "bytes"),
        _Row(mem, "total", s.train_memory_bytes, "bytes"),
    ]
    return rows


def _fmt(value: float, kind: str) -> str:
    if kind == "count":
        return f"{int(value):,}"
    if kind == "flops":
        return fmt_count(value) + "FLOP"
    if kind == "bytes":
        return fmt_bytes(value)
    return f"{value:,.1f}" if value != int(value) else f"{int(value):,}"


def _notes(s: ModelStats) -> list[str]:
    c = s.config
    notes = []
    if c.pos_emb == "learned" and s.context > c.block_size:
        notes.append(
            f"note: context {s.context} is past block_size {c.block_size}; a learned-position model cannot run "
            "that long (the numbers say what it would cost)"
        )
    if c.dropout > 0:
        notes.append("note: activations assume dropout 0; dropout also saves a mask per dropout site")
    return notes


def _header(prefix: str, config: GPTConfig) -> list[str]:
    return textwrap.wrap(f"{prefix}: {describe(config)}", width=100, subsequent_indent="    ")


def format_report(s: ModelStats, name: str = "") -> str:
    """The text `gptlab info` prints for one configuration."""
    lines = _header(name or "config", s.config)
    section = None
    total = s.total_params
    for row in report_rows(s):
        if row.section != section:
            section = row.section
            lines += ["", section]
        value = _fmt(row.value, row.kind)
        share = f"{100 * row.value / total:5.1f}%" if row.kind == "count" and total else ""
        lines.append(f"  {row.label:<50} {value:>16}  {share}".rstrip())
    return "\n".join(lines + ([""] + _notes(s) if _notes(s) else []))


def format_compare(a: ModelStats, b: ModelStats, name_a: str = "A", name_b: str = "B") -> str:
    """Two configurations side by side, with B/A ratios ('÷3.00' means B needs a third of A)."""
    lines = _header(f"A = {name_a}", a.config) + _header(f"B = {name_b}", b.config)
    section = None
    for ra, rb in zip(report_rows(a), report_rows(b), strict=True):
        if ra.section != section:
            section = ra.section
            lines += ["", f"{section:<52} {'A':>16} {'B':>16}  B/A"]
        label = ra.label
        va, vb = _fmt(ra.value, ra.kind), _fmt(rb.value, rb.kind)
        lines.append(f"  {label:<50} {va:>16} {vb:>16}  {fmt_ratio(ra.value, rb.value)}")
    notes = [f"A {n}" for n in _notes(a)] + [f"B {n}" for n in _notes(b)]
    return "\n".join(lines + ([""] + notes if notes else []))


# --- command line ---------------------------------------------------------------------------------------------

HELP = """\
usage: gptlab info [SPEC] [--context N] [--batch N] [--dtype fp32|bf16|fp16] [--json] [--compare SPEC]
       gptlab info --hardware [SPEC] [--context N]

Parameters, FLOPs, KV cache and training memory of a model configuration, computed from the config alone.

SPEC is one configuration:
  --model.preset=NAME [--model.FIELD=VALUE ...]   a preset with fields changed (no preset: GPT-2 124M defaults)
  --model.FIELD=VALUE ...                         any GPTConfig field, e.g. --model.n_kv_head=4 --model.window=256
  DIR [--model.FIELD=VALUE ...]                   a checkpoint or run directory's config.json (gptlab, gpt2,
                                                  llama, mistral; no weights are read), with fields changed
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
