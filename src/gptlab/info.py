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
  With experts, the total holds every expert; the active parameters are those one token runs through (its top-k
  experts, the shared ones, the router: moe.py counts them). DeepSeek's choice biases (moe_choice_bias) count as
  router parameters, as `GPT.num_params` counts them: numbers the model learns (by its balancing rule) and stores,
  with no gradient and no AdamW moments.
* FLOPs: 2 per multiply-add. Only matrix products are counted; norms, activations, softmax and the embedding
  lookup are a rounding error next to them. Per token of a forward pass of `context` tokens:

      matmuls   = 2 * N_matmul          (N_matmul: every weight used in a product, lm_head included even when tied)
                                        (with experts: a token's top-k experts, the shared ones and the router)
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
from typing import Any

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
from .moe import mlp_params, mlp_units, routing_bytes
from .options import (
    ALIASES,
    BOOL_ALIASES,
    UsageError,
    build_dataclass,
    coerce,
    model_config_from_dict,
    model_config_from_flags,
    options_of,
    parse_flags,
    unknown_flags,
)
from .presets import RUN_PRESETS
from .train_config import TRAIN_OPTIONS

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
    ("router", "mlp", "router"),  # experts only (shown for them)
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
    active_params: int  # what one token runs through: the experts it is not routed to left out
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
    hidden, mlps = mlp_units(c)  # L * mlp_hidden and L without experts
    norm = d * (2 if c.norm == "layernorm" and c.bias else 1)  # weight (+ bias); RMSNorm has no bias
    mla = {k: L * n for k, n in mla_params(c).items()} if c.kv_lora_rank is not None else {"norms": 0}
    return {
        "wte": c.vocab_size * d,
        "wpe": c.block_size * d if c.pos_emb == "learned" else 0,
        "q": L * (d * q + b * q),
        "k": L * (d * kv + b * kv),
        "v": L * (d * kv + b * kv),
        "attn_out": L * (q * d + b * d),
        "mlp_gate": d * hidden + b * hidden if swiglu else 0,
        "mlp_up": d * hidden + b * hidden,
        "mlp_down": hidden * d + b * d * mlps,
        "router": len(c.moe_layers) * (d + c.moe_choice_bias) * c.n_expert,  # weights (+ choice biases)
        "norms": (2 * L + 1) * norm + (2 * L * hd if c.qk_norm else 0) + mla["norms"],  # QK-norm, MLA's latents
        "lm_head": 0 if c.tie_embeddings else c.vocab_size * d,
        **{k: n for k, n in mla.items() if k != "norms"},  # MLA's projections in place of q, k, v, out
    }


def matmul_params(c: GPTConfig) -> int:
    """Weights used in a matrix product for every token: attention and MLP matrices (a token's top-k experts and the
    router), and the lm_head."""
    d, hd = c.n_embd, c.head_dim
    attn = d * (c.n_head + 2 * c.n_kv_head) * hd + c.n_head * hd * d
    if c.kv_lora_rank is not None:  # MLA: its matrices (biases and norm gains are not multiplied)
        attn = sum(mla_params(c.replace(bias=False)).values()) - c.kv_lora_rank - (c.q_lora_rank or 0)
    mlp = (3 if c.mlp == "swiglu" else 2) * d * mlp_units(c, active=True)[0] + d * c.n_expert * len(c.moe_layers)
    return c.n_layer * attn + mlp + c.vocab_size * d


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
    # Per hidden unit a token runs through, GELU: the c_fc output and GELU's output (c_proj input); SwiGLU: [gate|up],
    # silu(gate), silu(gate) * up. Plus each MLP input (experts: see moe.routing_bytes).
    mlp = L * d * nbytes + (4 if c.mlp == "swiglu" else 2) * nbytes * mlp_units(c, active=True)[0]
    per_sequence = INT64 * context if c.pos_emb == "learned" else 2 * context * hd * FP32  # positions / cos, sin
    return {
        "norms": tokens * (2 * L + 1) * norm,
        "attention": sum((attention_activations if c.kv_lora_rank is None else mla_activations)(
            c, batch, context, nbytes, w) for w in layer_windows(c)),
        "mlp": tokens * mlp + routing_bytes(c, tokens, nbytes),
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
    active = total - mlp_params(c, *mlp_units(c)) + mlp_params(c, *mlp_units(c, active=True))
    trained = total - len(c.moe_layers) * c.n_expert * c.moe_choice_bias  # the choice biases take no gradient

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
        params=params, total_params=total, non_embedding_params=non_embedding, active_params=active,
        matmul_params=n_matmul,
        attn_keys_per_query=t_eff,
        flops_matmul_per_token=flops_matmul, flops_attention_per_token=flops_attn,
        flops_forward_per_token=forward, flops_train_per_token=3 * forward,
        flops_train_per_step=3 * forward * batch * context, flops_decode_per_token=decode,
        kv_bytes_per_token=kv_per_token, kv_cache_positions=positions,
        kv_cache_bytes=batch * sum(held) * kv_per_token // c.n_layer,
        weights_bytes=total * nbytes, grads_bytes=trained * nbytes, adamw_bytes=2 * trained * nbytes,
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


def report_rows(s: ModelStats, moe: bool | None = None) -> list[_Row]:
    """The report as (section, label, value, kind) rows; single and side-by-side reports print the same rows
    (moe: the rows of experts, by default when s has them)."""
    moe = bool(s.config.n_expert) if moe is None else moe
    params = "Parameters (tied weights counted once)"
    rows = []
    last = None
    for key, group, name in COMPONENTS if moe else [row for row in COMPONENTS if row[0] != "router"]:
        if key == "norms" and (s.config.qk_norm or s.config.kv_lora_rank):  # their gains are norm weights too
            name += " (+ QK-norm)" if s.config.qk_norm else " (+ MLA latents)"
        if key == "router" and s.config.moe_choice_bias:
            name += " (+ choice bias)"
        rows.append(_Row(params, f"{group if group != last else '':<11} {name}", s.params[key], "count"))
        last = group
    rows += [
        _Row(params, "total", s.total_params, "count"),
        _Row(params, "non-embedding", s.non_embedding_params, "count"),
    ] + ([_Row(params, "active per token (top-k experts)", s.active_params, "count")] if moe else [])
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
    moe = bool(a.config.n_expert or b.config.n_expert)
    for ra, rb in zip(report_rows(a, moe), report_rows(b, moe), strict=True):
        if ra.section != section:
            section = ra.section
            lines += ["", f"{section:<52} {'A':>16} {'B':>16}  B/A"]
        va, vb = _fmt(ra.value, ra.kind), _fmt(rb.value, rb.kind)
        same = ra.label == rb.label  # a formula that differs (MLA's cache, QK-norm's gains) is named for each
        lines.append(f"  {ra.label + ('' if same else ' (A)'):<50} {va:>16} {vb:>16}  {fmt_ratio(ra.value, rb.value)}")
        if not same:
            lines.append(f"  {rb.label + ' (B)'}")
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
  DIR [--model.FIELD=VALUE ...]                   a run, checkpoint or Hugging Face directory's config.json
                                                  (gptlab, gpt2, llama, mistral, qwen3, mixtral, qwen3_moe; no
                                                  weights are read), or a hub id (gpt2), with fields changed
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

{presets}

examples:
  gptlab info --model.preset=gpt2-modern
  gptlab info --preset=baby                       # the model gptlab train --preset=baby trains
  gptlab info --model.preset=gpt2 --compare --model.preset=gpt2 --model.n_kv_head=4
  gptlab info --model.preset=gpt2 --context 4096 --compare --model.preset=gpt2 --model.pos_emb=rope --model.window=1024
  gptlab info path/to/checkpoint --dtype bf16 --batch 8
"""

# Flags of `gptlab train` beyond the model section: a SPEC with one of them is the model that train builds.
_TRAIN_ONLY = ("preset", "config", "init", "data", "trainer", "system")


@dataclass
class InfoSettings:
    """`gptlab info`'s own options (they may stand anywhere and apply to both configurations)."""

    context: int | None = None  # tokens per sequence; None: block_size of the first configuration
    batch: int = 1  # sequences, for the KV cache and training memory
    dtype: str = "fp32"  # fp32, bf16 or fp16
    json: bool = False  # print the numbers as JSON
    hardware: bool = False  # this machine: CPU, ISA, bf16, and the fast paths measured fastest here


INFO_OPTIONS = options_of(InfoSettings)


Spec = tuple[list[tuple[str, str]], list[str]]  # one configuration: its (canonical key, value) flags, its paths


def _parse(argv: list[str]) -> tuple[InfoSettings, list[Spec]]:
    """(settings, one or two SPECs, split at --compare), parsed by options.parse_flags with gptlab train's flags
    and aliases."""
    parts: list[list[str]] = [[]]
    for arg in argv:
        if arg == "--compare":
            if len(parts) == 2:
                raise UsageError("--compare may be given once")
            parts.append([])
        else:
            parts[-1].append(arg)
    if len(parts) == 2 and not parts[1]:
        raise UsageError("--compare needs a second configuration after it, e.g. --compare --model.preset=gpt2-modern")
    options = {**INFO_OPTIONS, **TRAIN_OPTIONS}
    names = {**options, **ALIASES, **BOOL_ALIASES}
    values: dict[str, Any] = {}
    specs = []
    for part in parts:
        unknown = unknown_flags(part, names)
        if unknown:
            raise UsageError(f"unknown option {unknown[0].partition('=')[0]}; see gptlab info --help")
        pairs, positionals = parse_flags(part, options)
        values.update((key, coerce(key, value, INFO_OPTIONS[key].type)) for key, value in pairs if key in INFO_OPTIONS)
        specs.append(([(key, value) for key, value in pairs if key not in INFO_OPTIONS], positionals))
    settings = build_dataclass(InfoSettings, values)
    for name in ("context", "batch"):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(settings, name)}")
    return settings, specs


def config_from_train_flags(flags: list[str]) -> GPTConfig:
    """The model `gptlab train FLAGS` builds: run preset, config file and model flags as train applies them, and
    (for a new model) the vocab_size of the data's tokenizer, so the parameter count is the trained model's."""
    from .train_config import data_vocab_size, parse_train_args  # here: the trainer's imports, only when asked

    config = model_config_from_flags(flags)  # a DIR among the flags is --init, as there
    if any(not f.startswith("--") for f in flags):
        return config
    cfg = parse_train_args(flags)
    return config if cfg.init is not None else config.replace(vocab_size=data_vocab_size(cfg))


def _trains(flags: list[tuple[str, str]]) -> bool:
    """Whether the flags name more than a model: then they describe the model a training run builds."""
    return any(key.split(".")[0] in _TRAIN_ONLY for key, _ in flags)


def preset_note(spec: Spec) -> str | None:
    """For `--model.preset=NAME` where NAME is a run preset too: which model this is, and where the other is."""
    preset = dict(spec[0]).get("model.preset")
    if preset not in RUN_PRESETS or _trains(spec[0]):
        return None
    return textwrap.fill(f"note: this is the model preset {preset}; gptlab train --preset={preset} trains another "
                         f"model (the run preset's settings and the data's vocabulary): gptlab info --preset={preset} "
                         "shows it", width=100, subsequent_indent="    ")


def _resolve_spec(spec: Spec) -> tuple[GPTConfig, str]:
    """(config, name) of one SPEC: gptlab train's flags (and a checkpoint directory, as --init), or --model.*
    flags alone, which change GPT-2 124M, not the defaults of a training run."""
    flags, paths = spec
    argv = [*paths, *(f"--{key}={value}" for key, value in flags)]
    if _trains(flags):
        return config_from_train_flags(argv), "gptlab train " + " ".join(argv)
    if len(paths) > 1:
        raise UsageError(f"give at most one checkpoint directory per configuration, got {' '.join(paths)}")
    model = {key.removeprefix("model."): coerce(key, value, TRAIN_OPTIONS[key].type) for key, value in flags}
    if paths or "preset" in model:  # a checkpoint's or a preset's model, changed by the flags
        config = model_config_from_flags(argv)
    else:
        config = model_config_from_dict(model)
    if list(model) == ["preset"] and model["preset"] in PRESETS and not paths:
        return config, model["preset"]
    return config, " ".join(argv) if argv else "GPT-2 124M (defaults)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gptlab info`; returns the exit status (0 ok, 2 usage or configuration error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        presets = [f"model presets (--model.preset=NAME): {', '.join(PRESETS)}",
                   f"run presets (--preset=NAME): {', '.join(RUN_PRESETS)}"]
        print(HELP.format(presets="\n".join(textwrap.fill(p, width=110, subsequent_indent="  ") for p in presets)))
        return 0
    try:
        s, specs = _parse(argv)
        configs = [_resolve_spec(spec) for spec in specs]
        context = s.context or configs[0][0].block_size
        try:
            dtype = dtype_name(s.dtype)
        except ValueError as e:
            raise UsageError(f"--dtype: {e}") from None
        if s.hardware:
            from . import hardware as hw

            hw.measure_fast_paths(configs[0][0], context)
            print(hw.describe())
            return 0
        stats = [model_stats(cfg, context, s.batch, dtype) for cfg, _ in configs]
    except ValueError as e:  # UsageError, invalid configs, unreadable checkpoints
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    names = [name for _, name in configs]
    if s.json:
        out = [dict(name=n, **st.to_dict()) for n, st in zip(names, stats, strict=True)]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    elif len(stats) == 1:
        print(format_report(stats[0], names[0]))
    else:
        print(format_compare(stats[0], stats[1], names[0], names[1]))
    notes = [note for note in map(preset_note, specs) if note]
    if notes and not s.json:
        print("\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
