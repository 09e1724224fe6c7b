"""Draw every figure of docs/ with gptlab's own code: masks from attention.window_mask, rotations from
model.Rotary / apply_rotary, norms from model.make_norm, the rolling cache from generate.KVCache, and sizes from
gptlab.info. Nothing is drawn by hand, so the figures change when the code does.

    python docs/make_figures.py [OUT_DIR]      # default: docs/figures

tests/test_docs.py runs it into a temporary directory, so a change that breaks a figure fails the tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from gptlab import GPTConfig  # noqa: E402
from gptlab.attention import window_mask  # noqa: E402
from gptlab.generate import KVCache  # noqa: E402
from gptlab.info import fmt_bytes, model_stats, param_table  # noqa: E402
from gptlab.model import Rotary, apply_rotary, make_norm  # noqa: E402

DPI = 100
OUT = Path(__file__).resolve().parent / "figures"
BLUE, ORANGE, GREEN, GREY, RED = "#3b75af", "#ef8636", "#519e3e", "#d9d9d9", "#c53a32"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)
    return path


def _mask_axes(ax: plt.Axes, T: int, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ticks = list(range(0, T, 4))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticks(np.arange(-0.5, T, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, T, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)


def forward_tiles(T: int, window: int, bq: int) -> np.ndarray:
    """What the CPU kernel's forward computes (attention._band_forward, one sequence of T, a multiple of bq):
    0 = not computed, 1 = computed and inside the window, 2 = computed, masked out. Positions < window: one
    causal call. After them, blocks of bq queries, each against the bq + window keys ending at its last query,
    with one shared mask. Checked to cover the window mask exactly."""
    parts = np.zeros((T, T), dtype=int)
    for i in range(min(window, T)):
        parts[i, : i + 1] = 1
    n_blocks = max(0, (T - window) // bq)
    starts = [window + g * bq for g in range(n_blocks)]
    if T > window and window + n_blocks * bq < T:
        starts.append(T - bq)  # the last rows: one more block, ending at the last row
    for s in starts:
        for r in range(bq):
            for n in range(bq + window):
                visible = r < n <= r + window
                parts[s + r, s - window + n] = 1 if visible else max(parts[s + r, s - window + n], 2)
    assert np.array_equal(parts == 1, window_mask(T, T, window).numpy()), "the tiles must cover the window mask"
    return parts


def fig_attention_masks(out: Path) -> Path:
    T, w, bq = 24, 8, 4
    causal = window_mask(T, T, None).numpy()
    sliding = window_mask(T, T, w).numpy()
    parts = forward_tiles(T, w, bq)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    two = ListedColormap(["white", BLUE])
    axes[0].imshow(causal, cmap=two, vmin=0, vmax=1)
    _mask_axes(axes[0], T, f"causal: j <= i\n{int(causal.sum())} of {T * T} scores")
    axes[1].imshow(sliding, cmap=two, vmin=0, vmax=1)
    _mask_axes(axes[1], T, f"sliding window {w}: i - {w} < j <= i\n{int(sliding.sum())} scores, O(T * window)")
    axes[2].imshow(parts, cmap=ListedColormap(["white", BLUE, ORANGE]), vmin=0, vmax=2)
    _mask_axes(axes[2], T, f"what the fast kernel's forward computes:\nblocks of {bq} queries x {bq} + {w} keys")
    for k in range(w, T + 1, bq):  # query blocks after the first window
        axes[2].axhline(k - 0.5, color="black", linewidth=0.8)
    axes[2].legend(
        handles=[Patch(color=BLUE, label="in the window"), Patch(color=ORANGE, label="computed, masked out")],
        loc="upper right", fontsize=8, framealpha=0.95,
    )
    fig.suptitle("Which keys each query sees (from gptlab.attention.window_mask)", fontsize=11)
    return _save(fig, out / "attention_masks.png")


def _rotate(v: torch.Tensor, positions: torch.Tensor, rot: Rotary) -> torch.Tensor:
    """v (D,) rotated to each of the positions: (P, D), with the model's own apply_rotary."""
    cos, sin = rot(positions)
    return apply_rotary(v.expand(1, 1, len(positions), -1), cos, sin)[0, 0]


def fig_rope(out: Path) -> Path:
    D, theta = 16, 10000.0
    rot = Rotary(D, theta)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw=dict(wspace=0.35))

    # 1. One vector at positions 0..11: each channel pair (c, c + D/2) turns at its own speed theta^(-2c/D).
    ax = axes[0]
    positions = torch.arange(12)
    rotated = _rotate(q, positions, rot)
    for c, color in zip((0, 1, 2), (BLUE, ORANGE, GREEN), strict=True):
        x, y = rotated[:, c].numpy(), rotated[:, c + D // 2].numpy()
        r = float(np.hypot(x[0], y[0]))
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(r * np.cos(t), r * np.sin(t), color=color, linewidth=0.5, alpha=0.4)
        ax.plot(x, y, "o-", color=color, markersize=4, linewidth=0.8,
                label=f"pair {c}: {theta ** (-2 * c / D):.3g} rad per position")
        for p in (0, 5, 11):
            ax.annotate(str(p), (x[p], y[p]), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_aspect("equal")
    ax.set_title("q rotated to positions 0..11, channel pairs (c, c + d/2)", fontsize=10)
    ax.set_xlabel("channel c")
    ax.set_ylabel("channel c + d/2")
    ax.legend(fontsize=7, loc="lower left")

    # 2. The score of q at position m with k at position n: constant along every diagonal m - n = const.
    P = 48
    pos = torch.arange(P)
    scores = (_rotate(q, pos, rot) @ _rotate(k, pos, rot).T).numpy()
    ax = axes[1]
    im = ax.imshow(scores, cmap="RdBu_r")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("q_m · k_n: constant along diagonals", fontsize=10)
    ax.set_xlabel("key position n")
    ax.set_ylabel("query position m")

    # 3. Scores against the offset m - n, for several absolute positions n: the curves coincide.
    ax = axes[2]
    offsets = torch.arange(0, 40)
    for n, style in zip((0, 100, 1000), ("-", "--", ":"), strict=True):
        qm = _rotate(q, n + offsets, rot)
        kn = _rotate(k, torch.tensor([n]), rot)[0]
        ax.plot(offsets.numpy(), (qm @ kn).numpy(), style, linewidth=2, label=f"n = {n}")
    ax.set_title("q_(n+Δ) · k_n depends on Δ only", fontsize=10)
    ax.set_xlabel("offset Δ = m - n")
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    fig.suptitle(f"RoPE with gptlab.model.Rotary(head_dim={D}, theta={theta:g}) and apply_rotary", fontsize=11,
                 y=1.02)
    return _save(fig, out / "rope.png")


def fig_gqa(out: Path) -> Path:
    base = GPTConfig.from_preset("gpt2")
    H = base.n_head
    rows = [("MHA", H), ("GQA", 4), ("MQA", 1)]
    fig, axes = plt.subplots(3, 1, figsize=(11, 6.6))
    for ax, (name, n_kv) in zip(axes, rows, strict=True):
        s = model_stats(base.replace(n_kv_head=n_kv), context=1024, dtype="bf16")
        group = H // n_kv
        palette = plt.get_cmap("tab20" if n_kv > 10 else "tab10")
        kv_x = [(g + 0.5) * H / n_kv - 0.5 for g in range(n_kv)]
        for h in range(H):
            g = h // group
            color = palette(g % palette.N)
            ax.add_patch(plt.Rectangle((h - 0.4, 1.0), 0.8, 0.5, color=color))
            ax.text(h, 1.25, f"q{h}", ha="center", va="center", fontsize=7, color="white")
            ax.plot([h, kv_x[g]], [1.0, 0.5], color=color, linewidth=1)
        for g in range(n_kv):
            ax.add_patch(plt.Rectangle((kv_x[g] - 0.4, 0.0), 0.8, 0.5, color=palette(g % palette.N), alpha=0.6))
            ax.text(kv_x[g], 0.25, f"kv{g}", ha="center", va="center", fontsize=7)
        ax.set_xlim(-1, H + 5.8)
        ax.set_ylim(-0.1, 1.6)
        ax.axis("off")
        shared = f", {group} query heads per K/V head" if group > 1 else ", one K/V head per query head"
        ax.text(-0.9, 1.55, f"{name}: n_kv_head = {n_kv}{shared}", fontsize=10, va="bottom")
        ax.text(H + 0.2, 0.75,
                f"KV cache, gpt2 size, bf16:\n{fmt_bytes(s.kv_bytes_per_token)} per token\n"
                f"{fmt_bytes(s.kv_cache_bytes)} at 1024 tokens",
                fontsize=9, va="center")
    fig.suptitle("Query heads (top) and the K/V heads they read (bottom): head h uses K/V head h // group\n"
                 "sizes from gptlab.info.model_stats", fontsize=11)
    return _save(fig, out / "gqa_heads.png")


def fig_rolling_cache(out: Path) -> Path:
    """Feed the real KVCache one token at a time, with each key equal to its position, and read the slots."""
    w, steps = 4, 11
    cache = KVCache(batch=1, n_kv_head=1, head_dim=1, max_len=steps, window=w)
    cache.k.fill_(-1)
    grid = []
    for pos in range(steps):
        x = torch.full((1, 1, 1, 1), float(pos))
        cache.update(x, x, pos)
        grid.append(cache.k[0, 0, :, 0].tolist())
    grid = np.array(grid, dtype=int)
    fig, ax = plt.subplots(figsize=(5.2, 5.6))
    colors = np.where(grid < 0, 0, 1)
    for pos in range(steps):
        colors[pos, pos % w] = 2
    ax.imshow(colors, cmap=ListedColormap(["white", "#cfe0f1", ORANGE]), vmin=0, vmax=2, aspect="auto")
    for i in range(steps):
        for j in range(w):
            if grid[i, j] >= 0:
                ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=10)
    ax.set_xticks(range(w))
    ax.set_xticklabels([f"slot {j}" for j in range(w)])
    ax.set_yticks(range(steps))
    ax.set_yticklabels([f"token {p}" for p in range(steps)])
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, steps, 1), minor=True)
    ax.grid(which="minor", color="grey", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(f"Rolling KV cache, window {w}: the position held in each slot\n"
                 f"after each generated token (orange: just written, slot = p mod {w})", fontsize=10)
    return _save(fig, out / "rolling_cache.png")


def fig_norms(out: Path) -> Path:
    d = 12
    g = torch.Generator().manual_seed(3)
    x = torch.randn(d, generator=g) + 1.5  # an activation vector with a clear non-zero mean
    layer = make_norm(GPTConfig(n_embd=d, n_head=1, norm="layernorm"))
    rms = make_norm(GPTConfig(n_embd=d, n_head=1, norm="rmsnorm"))
    with torch.no_grad():
        ln_x, rms_x, rms_centered = layer(x), rms(x), rms(x - x.mean())
    idx = np.arange(d)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    ax.bar(idx, x.numpy(), color=GREY, edgecolor="black")
    ax.axhline(x.mean().item(), color=RED, linestyle="--", label=f"mean = {x.mean():.2f}")
    ax.axhline(x.pow(2).mean().sqrt().item(), color=BLUE, linestyle=":", label=f"rms = {x.pow(2).mean().sqrt():.2f}")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title(f"one activation vector x (n_embd = {d})", fontsize=10)
    ax.set_xlabel("channel")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(idx - 0.2, ln_x.numpy(), width=0.4, color=ORANGE, label="LayerNorm(x): (x - mean) / std")
    ax.bar(idx + 0.2, rms_x.numpy(), width=0.4, color=BLUE, label="RMSNorm(x): x / rms(x)")
    ax.plot(idx - 0.2, rms_centered.numpy(), "k_", markersize=14, markeredgewidth=2,
            label="RMSNorm(x - mean) = LayerNorm(x)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("after the norm (weights 1, bias 0, as initialised)", fontsize=10)
    ax.set_xlabel("channel")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    fig.suptitle("RMSNorm only rescales, LayerNorm also removes the mean (both from gptlab.model.make_norm)",
                 fontsize=11, y=1.02)
    return _save(fig, out / "rmsnorm_vs_layernorm.png")


def fig_swiglu(out: Path) -> Path:
    x = torch.linspace(-5, 5, 401)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    ax.plot(x, F.gelu(x, approximate="tanh"), color=ORANGE, linewidth=2, label="GELU (tanh), GPT-2")
    ax.plot(x, F.silu(x), color=BLUE, linewidth=2, label="SiLU = x · sigmoid(x), the SwiGLU gate")
    ax.plot(x, x.clamp(min=0), color=GREY, linewidth=1, linestyle="--", label="ReLU")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("the activations (torch.nn.functional, as model.MLP calls them)", fontsize=10)
    ax.set_xlabel("x")
    ax.legend(fontsize=8)
    ax = axes[1]
    configs = [("GPT-2 GELU MLP", GPTConfig.from_preset("gpt2")),
               ("SwiGLU MLP", GPTConfig.from_preset("gpt2", mlp="swiglu", bias=False))]
    for i, (_, c) in enumerate(configs):
        p = param_table(c)
        bottom = 0.0
        d, h = c.n_embd, c.mlp_hidden
        for key, color, label in (("mlp_gate", BLUE, f"gate {d} x {h}"), ("mlp_up", GREEN, f"up {d} x {h}"),
                                  ("mlp_down", ORANGE, f"down {h} x {d}")):
            if p[key]:
                ax.bar(i, p[key] / c.n_layer / 1e6, bottom=bottom, color=color, edgecolor="white", width=0.5)
                ax.text(i, bottom + p[key] / c.n_layer / 2e6, label.replace(" ", "\n", 1),
                        ha="center", va="center", fontsize=8, color="white")
                bottom += p[key] / c.n_layer / 1e6
        ax.text(i, bottom + 0.1, f"{bottom:.2f} M", ha="center", fontsize=9)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels([f"{n}\n(hidden {c.mlp_hidden})" for n, c in configs])
    ax.set_ylabel("parameters per layer (millions)")
    ax.set_ylim(0, 5.6)
    ax.set_title("same budget: 2 matrices of 4d vs 3 of ~8d/3 (gptlab.info.param_table)", fontsize=10)
    return _save(fig, out / "swiglu.png")


FIGURES: dict[str, Callable[[Path], Path]] = {
    "attention_masks.png": fig_attention_masks,
    "rope.png": fig_rope,
    "gqa_heads.png": fig_gqa,
    "rolling_cache.png": fig_rolling_cache,
    "rmsnorm_vs_layernorm.png": fig_norms,
    "swiglu.png": fig_swiglu,
}


def main(out_dir: str | Path = OUT) -> list[Path]:
    """Write every figure into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "gptlab"})
    return [draw(out) for draw in FIGURES.values()]


if __name__ == "__main__":
    for path in main(*sys.argv[1:2]):
        print(path)
