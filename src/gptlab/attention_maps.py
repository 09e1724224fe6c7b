"""gptlab attention: the attention maps of a model for a prompt, per layer and head, in one PNG.

    gptlab attention out/demo --prompt="ROMEO: But soft" --out=attn.png
    gptlab attention out/demo --prompt=FILE:prompt.txt --layers=0,3 --out=attn.png

Map (layer l, head h) is softmax(q k^T / sqrt(head_dim)) under the model's own mask (`attention.visible`:
causal, and the sliding window if the model has one), row i = what query i attends to. q and k are recomputed
from each layer's own modules on the input that layer receives (a forward pre-hook): its c_attn projection,
RoPE through `model.apply_rotary` with the cos/sin the model passes in, and for GQA/MQA the K/V head of the
query head's group (h // (n_head / n_kv_head)), as the fast kernels do. model.py is not changed: the fast paths
never form these maps, so they are recomputed here, in fp32.

Learned positions, RoPE and a window look different at a glance: a window leaves a band (entries outside it are
blank: masked, exactly 0), RoPE heads tend to show diagonals at fixed offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .attention import window_mask
from .checkpoint import load_model
from .distributed import resolve_device
from .model import GPT, CausalSelfAttention, LatentAttention, apply_rotary
from .options import UsageError

MAX_TOKENS = 256  # a T x T map per head: longer prompts make unreadable pictures (and T^2 memory per head)


def layer_attention(
    attn: CausalSelfAttention | LatentAttention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Attention probabilities (B, n_head, T, T) in fp32 of layer `attn` on its input x (B, T, C) (after ln_1),
    with the RoPE cos/sin the model passes that layer (None for learned positions). Masked entries are 0."""
    B, T, _ = x.shape
    H, Hkv = attn.n_head, attn.n_kv_head
    if isinstance(attn, LatentAttention):  # MLA: keys up-projected from the latent, next to the shared RoPE key
        q_nope, q_rope, latent, k_rope = attn.project(x, rope)
        k_nope = attn.kv_b_proj(latent[:, 0]).view(B, T, Hkv, -1)[..., : attn.nope].transpose(1, 2)
        q, k = torch.cat([q_nope, q_rope], -1), torch.cat([k_nope, k_rope.expand(B, Hkv, T, attn.rope)], -1)
        hd = attn.nope + attn.rope
    else:
        hd = attn.head_dim
        q, k, _ = attn.c_attn(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, Hkv, hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    k = k.repeat_interleave(H // Hkv, dim=1)  # query head h reads K/V head h // (H / Hkv)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(hd)
    visible = window_mask(T, T, attn.window, device=x.device)
    return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)


@torch.no_grad()
def attention_maps(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """One (B, n_head, T, T) fp32 tensor of attention probabilities per layer, for token ids idx (B, T)."""
    maps: list[torch.Tensor] = []

    def capture(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        # Block.forward calls attn(ln_1(x), rope, cache, input_pos): the layer's input and its cos/sin.
        x = args[0]
        rope = args[1] if len(args) > 1 else kwargs.get("rope")
        maps.append(layer_attention(module, x, rope))

    was_training = model.training
    model.eval()  # no dropout: the maps are the model's deterministic computation
    handles = [block.attn.register_forward_pre_hook(capture, with_kwargs=True) for block in model.transformer.h]
    try:
        model(idx)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return maps


def _token_labels(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token as text, whitespace made visible (a newline is shown as \\n)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        labels.append(text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·") or "∅")
    return labels


def plot_attention(
    maps: list[torch.Tensor], labels: list[str], out: str | Path, title: str = "", layers: list[int] | None = None,
    window: int | None | list[int | None] = None,
) -> Path:
    """A PNG with one panel per (layer, head) of the first sequence's maps; entries the mask hides (causal, and
    outside `window`, or outside each layer's window given a list of them) are blank."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    layers = list(range(len(maps))) if layers is None else layers
    n_head, T = maps[0].size(1), maps[0].size(-1)
    panel = 2.2 if T <= 64 else 3.2
    fig = Figure(figsize=(min(panel * n_head, 48) + 1.2, min(panel * len(layers), 48) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(layers), n_head, squeeze=False)
    windows = window if isinstance(window, list) else [window] * len(maps)
    # gamma 0.5 makes small weights visible; one scale (0..1) for every panel so heads compare honestly
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = None
    step = max(1, math.ceil(T / 16))  # at most ~16 tick labels per axis
    ticks = list(range(0, T, step))
    for row, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[row, h]
            data = np.ma.masked_where(~window_mask(T, T, windows[layer]).numpy(), maps[layer][0, h].cpu().numpy())
            image = ax.imshow(data, norm=norm, cmap="viridis", interpolation="nearest")
            ax.set_title(f"layer {layer} head {h}", fontsize=8)
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=6)
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=6)
            ax.tick_params(length=0)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight (key column, query row)")
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(out)  # a reader never sees half a PNG
    return out


# --------------------------------------------------------------------------------------------------------
# gptlab attention
# --------------------------------------------------------------------------------------------------------


@dataclass
class AttentionConfig:
    source: str | None = None  # run directory, checkpoint or Hugging Face directory, or hub id (or positional)
    checkpoint: Literal["best", "last"] = "best"  # which checkpoint of a run directory
    prompt: str | None = None  # the text whose attention is drawn; FILE:path reads it from a file
    out: str = "attention.png"  # the PNG to write
    layers: str | None = None  # comma-separated layer numbers to draw (default: all)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps


def _parse_layers(text: str | None, n_layer: int) -> list[int] | None:
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--layers={text}: give comma-separated layer numbers, e.g. --layers=0,{n_layer - 1}"
                         ) from None
    bad = [n for n in layers if not 0 <= n < n_layer]
    if not layers or bad:
        raise UsageError(f"--layers={text}: the model has layers 0..{n_layer - 1}")
    return layers


HELP = """\
usage: gptlab attention RUN_OR_MODEL --prompt=TEXT [--out=attention.png] [--layers=0,1]

Draw the attention maps of a model (a run's best checkpoint, a checkpoint or Hugging Face directory)
for a prompt: one panel per layer and head, softmax(q k^T / sqrt(d)) under the model's causal or
sliding-window mask; for GQA/MQA each query head with its group's K/V head.
"""


def main(argv: list[str]) -> int:
    """`gptlab attention RUN_OR_MODEL --prompt=TEXT [--out=attention.png] [--layers=0,1]`."""
    from .cli import _parse_model_command, png_path, read_prompt

    parsed = _parse_model_command(AttentionConfig, argv, {}, HELP)
    if parsed is None:
        return 0
    cfg, source = parsed
    if not cfg.prompt:
        raise UsageError('--prompt is required: the text whose attention is drawn, e.g. --prompt="ROMEO: But soft"')
    out = png_path("--out", cfg.out)
    prompt = read_prompt(cfg.prompt)
    model, tokenizer, directory = load_model(source, cfg.checkpoint, resolve_device(cfg.device, flag="--device"))
    c = model.config
    layers = _parse_layers(cfg.layers, c.n_layer)
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as e:
        raise UsageError(f"--prompt: {e}") from None
    limit = min(MAX_TOKENS, c.block_size) if c.pos_emb == "learned" else MAX_TOKENS
    if not ids or len(ids) > limit:
        why = f"block_size={c.block_size} of this learned-position model" if limit == c.block_size else (
            f"{MAX_TOKENS}, past which the maps are unreadable")
        raise UsageError(f"--prompt is {len(ids)} tokens; give 1 to {limit} (the limit is {why})")
    idx = torch.tensor([ids], device=next(model.parameters()).device)
    maps = attention_maps(model, idx)
    kind = f"{c.pos_emb} positions" + (f", window {c.window}" if c.window else ", causal")
    if c.layer_pattern is not None:
        kind += f" on the L layers of {c.layer_pattern}"
    if c.n_kv_head != c.n_head:
        kind += f", {c.n_kv_head} K/V heads for {c.n_head} query heads"
    title = f"{directory or source}: {kind}; {len(ids)} tokens"
    windows = [c.layer_window(i) for i in range(c.n_layer)]
    plot_attention(maps, _token_labels(tokenizer, ids), out, title, layers, windows)
    print(f"wrote {out}: {len(layers or maps)} layers x {c.n_head} heads, {len(ids)} tokens ({kind})")
    return 0


__all__ = ["attention_maps", "layer_attention", "main", "plot_attention"]
