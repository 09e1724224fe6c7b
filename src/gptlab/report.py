"""The report of `gptlab compare`: OUT/report.md, its figures and results.json, from the runs' result.json files.

Every number in the report says how it was measured (a few batches of the val split, side-by-side timing or each
run's own log); the paragraphs about each change are generated from the numbers, not written by hand.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import SWITCHES, GPTConfig
from .info import model_stats
from .stats import paired_differences, t_interval

# How the report names the variants of the default grid (compare.default_grid).
LABELS = {
    "baseline": "baseline (GPT-2)",
    **{v.name: v.label for s in SWITCHES for v in s.variants},
    "modern": "modern (all)",
}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fig(path: Path, draw: Callable[[Any], None]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: matplotlib is slow to import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")


def plot_curves(results: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """val_loss.png (mean with a min-max band over seeds) and tokens_per_s.png (over wall time)."""

    def val(ax: Any) -> None:
        tops: list[float] = []
        for i, (name, runs) in enumerate(results.items()):
            iters = [it for it, _ in runs[0]["val_curve"]]
            curves = [[v for _, v in r["val_curve"]] for r in runs]
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[j] for c in curves) for j in range(n)]
            lo = [min(c[j] for c in curves) for j in range(n)]
            hi = [max(c[j] for c in curves) for j in range(n)]
            ax.plot(iters[:n], mean, color=f"C{i}", label=LABELS.get(name, name))
            ax.fill_between(iters[:n], lo, hi, color=f"C{i}", alpha=0.2)
            if n > 2:
                tops.append(hi[min(2, n - 1)])
        if tops:  # zoom past the first evals, where all variants start near ln(vocab)
            ax.set_ylim(top=max(tops) + 0.05)
        ax.set_xlabel("iteration")
        ax.set_ylabel("val loss (nats/token)")
        ax.set_title("val loss: mean over seeds, band = min..max")

    def speed(ax: Any) -> None:
        for i, (name, runs) in enumerate(results.items()):
            curve = runs[0]["tokens_per_s_curve"]
            if curve:
                ax.plot(*zip(*curve, strict=True), color=f"C{i}", label=LABELS.get(name, name))
        ax.set_xlabel("training wall time (s), seed 0")
        ax.set_ylabel("train tokens/s")
        ax.set_title("training throughput")

    _fig(out / "val_loss.png", val)
    _fig(out / "tokens_per_s.png", speed)


def _mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def _kib(n: float) -> str:
    return f"{n / 2**10:,.0f} KiB"


def kv_cache_bytes(config: dict[str, Any]) -> dict[str, int]:
    """The KV cache of one sequence (fp32) at 1x and 4x the training context: a window caps it at the window
    (a rolling buffer), so its saving grows with the context. Learned positions cannot decode past block_size:
    their 4x figure is what the cache would hold."""
    c = GPTConfig.from_dict(config)
    return {f"{m}x": model_stats(c, context=m * c.block_size).kv_cache_bytes for m in (1, 4)}


def paired(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """Final val loss minus the baseline's, seed by seed (same seed: same batches), and the 95% Student t
    interval of their mean over those seeds (None with one seed)."""
    diffs = paired_differences(runs, baseline)
    ci = t_interval(list(diffs.values()))
    mean = ci[0] if ci else (next(iter(diffs.values())) if diffs else None)
    return {"per_seed": diffs, "seeds": len(diffs), "mean": mean, "ci95_half_width": ci[1] if ci else None}


def summarize(results: dict[str, list[dict[str, Any]]], speeds: dict[str, Any] | None = None
              ) -> dict[str, dict[str, Any]]:
    """Per variant: the sizes of seed 0, mean/std of the measured numbers over seeds, the paired differences to
    the baseline, and the side-by-side speeds where measured (else the mean of what each run logged)."""
    out = {}
    side = (speeds or {}).get("variants", {})
    for name, runs in results.items():
        r0 = runs[0]
        loss_m, loss_s = _mean_std([r["final_val_loss"] for r in runs])
        extrap = {}
        for k in r0["extrapolation"]:
            vals = [r["extrapolation"][k] for r in runs]
            extrap[k] = None if any(v is None for v in vals) else _mean_std(vals)
        peaks = [r["peak_memory_bytes"] for r in runs if r["peak_memory_bytes"] is not None]
        out[name] = {
            "seeds": len(runs), "params": r0["params"], "non_embedding_params": r0["non_embedding_params"],
            "kv_bytes_per_token": r0["kv_bytes_per_token"], "kv_cache_bytes": kv_cache_bytes(r0["config"]),
            "flops_per_token": r0["flops_per_token"], "mlp_hidden": r0["config"]["mlp_hidden"],
            "train_tokens_per_s": side[name]["train_tokens_per_s"] if name in side
            else statistics.fmean(r["train_tokens_per_s"] for r in runs),
            "decode_tokens_per_s": side[name]["decode_tokens_per_s"] if name in side
            else statistics.fmean(r["decode_tokens_per_s"] for r in runs),
            "speed_side_by_side": name in side,
            "peak_memory_bytes": max(peaks) if peaks else None,
            "est_train_memory_bytes": r0["est_train_memory_bytes"],
            "val_loss": (loss_m, loss_s), "extrapolation": extrap, "config": r0["config"],
            "val_loss_batches": r0.get("eval_iters"), "window_batches": r0.get("eval_batches"),
            # results of an older gptlab do not say: computed from the config, as `gptlab info` counts them
            "active_params": r0.get("active_params") or model_stats(GPTConfig.from_dict(r0["config"])).active_params,
            "moe_load": {r.get("seed", i): r["moe_load"] for i, r in enumerate(runs) if "moe_load" in r},
            "moe_aux_loss": {r.get("seed", i): r["moe_aux_loss"] for i, r in enumerate(runs) if "moe_load" in r},
        }
        if "baseline" in results and name != "baseline":
            out[name]["paired_delta"] = paired(runs, results["baseline"])
    return out


def commentary(name: str, s: dict[str, Any], base: dict[str, Any] | None) -> str:
    """One paragraph about a variant, from the measured numbers (vs the baseline)."""
    if base is None or name == "baseline":
        return ""
    dp = s["params"] / base["params"] - 1
    t = s["config"]["block_size"]
    kv1, kv4 = (s["kv_cache_bytes"][k] / base["kv_cache_bytes"][k] for k in ("1x", "4x"))
    tr = s["train_tokens_per_s"] / base["train_tokens_per_s"]
    dec = s["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    c = s["config"]
    if c.get("n_expert"):  # what sizes an MoE is its experts, and a token runs through only some of them
        width = (f"{c['n_expert']} experts of hidden {c.get('expert_hidden') or c['mlp_hidden']}, top-"
                 f"{c['expert_top_k']}; {s['active_params']:,} active per token "
                 f"({s['active_params'] / s['params']:.0%} of its total)")
    else:
        width = f"MLP hidden {c['mlp_hidden']} (the baseline's {base['config']['mlp_hidden']})"
    parts = [f"**{LABELS.get(name, name)}**: {_verdict(s, base)}.",
             f"Size: {s['params']:,} params ({dp:+.1%}), {width}; KV cache {kv1:.2f}× the baseline's at {t} "
             f"tokens, {kv4:.2f}× at {4 * t}.",
             f"Speed: training {tr:.2f}×, decoding {dec:.2f}× the baseline's tokens/s."]
    ex = s["extrapolation"]
    if ex.get("2x") is None:
        parts.append("Pitfall: learned positions stop at block_size, so it cannot be evaluated at 2× or 4×.")
    else:
        e1, e2, e4 = ex["1x"][0], ex["2x"][0], ex["4x"][0]
        wb = s.get("window_batches")
        parts.append(f"Longer contexts{f' ({wb}-batch estimates)' if wb else ''}: val loss {e1:.3f} at 1×, "
                     f"{e2:.3f} at 2×, {e4:.3f} at 4× the training context "
                     f"({'degrades' if e4 > e1 + 0.05 else 'holds up'}).")
    if kv4 < 1:
        parts.append(f"The KV cache holds {1 / kv4:.1f}× fewer bytes at {4 * t} tokens: that is the memory a "
                     "long-context decode saves; whether it is faster depends on the cache dominating the step "
                     f"(here: {dec:.2f}× decode speed).")
    if s["config"].get("layer_pattern"):
        parts.append(f"Local layers ({s['config']['layer_pattern']}: L) see at most {s['config']['window']} keys and "
                     "cache only those; the global layers (G) see, and cache, the whole context.")
    elif s["config"].get("window"):
        parts.append(f"Each query sees at most {s['config']['window']} keys, so the attention cost stops growing "
                     "with the context; information from further back must travel through the layers.")
    if s["config"].get("kv_lora_rank"):
        c = s["config"]
        parts.append(f"MLA caches one latent of {c['kv_lora_rank']} numbers and a RoPE key of {c['qk_rope_head_dim']} "
                     "per token and layer, whatever the heads; decoding attends over them with the up-projections "
                     "absorbed, which costs more FLOPs per cached token than GQA at the same bytes.")
    if s["config"].get("mlp") == "swiglu" and base["config"].get("mlp") != "swiglu":
        h, m = s["config"]["mlp_hidden"], base["config"]["mlp_hidden"]
        d_mlp = 3 * h / (2 * m) - 1  # SwiGLU's three matrices against GELU's two, at the same n_embd
        more = f"{abs(d_mlp):.1%} {'more' if d_mlp > 0 else 'fewer'} parameters than"
        parts.append(f"SwiGLU's hidden size {h} (vs GELU's {m}) gives its three matrices {more} "
                     "GPT-2's two" + (", so the loss difference is the gating, not the size."
                                                    if abs(d_mlp) < 0.01 else
                                                    "; --match=params (or mlp_hidden in a YAML grid) matches them."))
    return " ".join(parts)


def _verdict(s: dict[str, Any], base: dict[str, Any]) -> str:
    """The final val loss against the baseline's, judged by the paired 95% t interval over seeds."""
    m, bm = s["val_loss"][0], base["val_loss"][0]
    n = s.get("val_loss_batches")  # results of an older gptlab do not say
    what = f"final val loss ({n}-batch estimate) {m:.3f} vs {bm:.3f}"
    p = s.get("paired_delta") or {}
    if p.get("ci95_half_width") is None:
        return f"{what} (Δ {m - bm:+.3f}; one seed, so no interval)"
    d, hw = p["mean"], p["ci95_half_width"]
    ci = f"paired Δ {d:+.3f}, 95% CI {d - hw:+.3f} to {d + hw:+.3f} over {p['seeds']} seeds"
    if abs(d) <= hw:
        return f"{what} ({ci}): the interval includes 0, so no difference is shown"
    return f"{what} ({ci}): {'better' if d < 0 else 'worse'}"


def speed_note(speeds: dict[str, Any] | None) -> str:
    """How the tokens/s columns were measured."""
    if not speeds or not speeds.get("variants"):
        return ("Tokens/s: each run's own log (train: median over the run; decode: after training), so they "
                "carry whatever else the machine was doing at the time.")
    v = next(iter(speeds["variants"].values()))
    load = " / ".join(f"{x:.1f}" for x in speeds["load_average"])
    return (f"Tokens/s: measured side by side after training, every variant in one process, in turn, median of "
            f"{speeds['rounds']} rounds (train: forward + backward + AdamW on {v['train_tokens_per_step']:,} tokens; "
            f"decode: {v['decode_tokens']} greedy tokens, batch 1, KV cache; {speeds['threads']} threads, "
            f"{speeds['device']}, load average {load} at the end). The training-throughput figure is what each "
            "run logged while it trained.")


def write_report(out: Path, results: dict[str, list[dict[str, Any]]], uptrain: dict[str, Any] | None,
                 meta: dict[str, Any], speeds: dict[str, Any] | None = None) -> Path:
    """report.md, val_loss.png, tokens_per_s.png, results.json in `out`."""
    summary = summarize(results, speeds)
    plot_curves(results, out)
    lines = [*_variants_section(summary, results, meta, speeds), *_match_section(summary, meta),
             *_paired_section(summary, meta), *_moe_section(summary), *_extrapolation_section(summary, meta)]
    lines += ["", "## What each change did (generated from the numbers above)", ""]
    for name, s in summary.items():
        text = commentary(name, s, summary.get("baseline"))
        if text:
            lines += [f"- {text}", ""]
    if uptrain:
        lines += _uptrain_section(uptrain, meta)
    lines += ["Reproduce: `" + meta["command"] + "` (complete runs are skipped; interrupted ones resume).", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "uptrain": uptrain, "speeds": speeds,
                    "runs": {n: [{k: v for k, v in r.items() if k != "config"} for r in rs]
                             for n, rs in results.items()}}, indent=1) + "\n")
    return out / "report.md"


def _pm(v: tuple[float, float], seeds: int, meta: dict[str, Any]) -> str:
    """Mean ± std over the seeds completed (one has no spread); a comparison in progress says how many."""
    text = f"{v[0]:.4f} ± {v[1]:.4f}" if seeds > 1 else f"{v[0]:.4f}"
    return text if seeds >= meta["seeds"] else f"{text} ({seeds} of {meta['seeds']} seeds)"


def _variants_section(summary: dict[str, dict[str, Any]], results: dict[str, list[dict[str, Any]]],
                      meta: dict[str, Any], speeds: dict[str, Any] | None) -> list[str]:
    """The report's header, figures and table of variants."""
    # Each loss says how it was measured (a few batches, never the whole split: that is `gptlab eval RUN`).
    t = meta["trainer"]
    final = f"final val loss ({t['eval_iters']}-batch estimate)"
    base = summary.get("baseline")
    ctx = meta["model"]["block_size"]
    lines = [
        f"# gptlab compare: {meta['preset']} preset",
        "",
        f"- machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} threads; device {meta['device']}",
        f"- note: {meta['note']}",
        f"- model: {meta['model']}; training: {meta['trainer']}; seeds: {meta['seeds']}",
        f"- data: {meta['data']}; wall time of the whole comparison: {meta['wall_min']:.1f} min",
        "",
        "![val loss](val_loss.png)",
        "",
        "![tokens/s](tokens_per_s.png)",
        "",
        "## Variants",
        "",
        "Changes to the baseline's model: " + "; ".join(
            f"{LABELS.get(n, n)}: " + (", ".join(f"{k}={v}" for k, v in c.items()) or "none")
            for n, c in meta["grid"].items() if n in results) + ".",
        "",
        f"| variant | params | active params | non-emb params | KV cache at {ctx} / {4 * ctx} tokens | FLOPs/token "
        f"| train tok/s | decode tok/s | peak memory | {final} | Δ vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        m, sd = s["val_loss"]
        delta = "–" if base is None or name == "baseline" else f"{m - base['val_loss'][0]:+.3f}"
        peak = _mb(s["peak_memory_bytes"]) if s["peak_memory_bytes"] else f"{_mb(s['est_train_memory_bytes'])} (est.)"
        lines.append(
            f"| {LABELS.get(name, name)} | {s['params']:,} | {s['active_params']:,} | {s['non_embedding_params']:,} | "
            f"{_kib(s['kv_cache_bytes']['1x'])} / {_kib(s['kv_cache_bytes']['4x'])} | "
            f"{s['flops_per_token'] / 1e6:.2f}M | {s['train_tokens_per_s']:,.0f} | "
            f"{s['decode_tokens_per_s']:,.0f} | {peak} | {_pm((m, sd), s['seeds'], meta)} | {delta} |"
        )
    lines += [
        "",
        "Active params: what one token runs through (with experts, only its top-k of them; else all). "
        "The KV cache (one sequence, fp32) and FLOPs per token (forward, at block_size) are computed by `gptlab "
        f"info`; a window caps the cache at the window. At {4 * ctx} tokens, a model with learned positions cannot "
        "decode (they end at block_size): its figure is what the cache would hold. Peak memory "
        "is measured on CUDA (`max_memory_allocated`); on CPU it is the estimate of `gptlab info` "
        "(weights + grads + AdamW + activations). Final val loss: the trainer's last eval, the mean loss of "
        f"{t['eval_iters']} batches of {t['batch_size']} x {meta['model']['block_size']} tokens (the same batches for "
        "every variant of a seed); mean ± std over the seeds completed.",
        "",
        speed_note(speeds),
        "",
    ]
    return lines


def _match_section(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """--match: the MLP hidden size each variant got, and how far its size stays from the baseline's (from the
    trained models' parameter counts / FLOPs, not the plan)."""
    match = meta.get("match")
    base = summary.get("baseline")
    if not match or base is None:
        return []
    by = match["by"]
    key, what = ("params", "parameters") if by == "params" else ("flops_per_token", "forward FLOPs per token")
    lines = [f"## Matched {what} (--match={by})", "",
             f"Each variant's MLP (mlp_hidden) widened or narrowed so its {what} equal the baseline's "
             f"({base[key]:,.0f}) within 0.5%:", "",
             f"| variant | mlp_hidden | unmatched | {what} | vs baseline |", "|---|---:|---:|---:|---:|"]
    for name, s in summary.items():
        r = match["variants"].get(name)
        if r is not None:
            field = "" if r.get("field", "mlp_hidden") == "mlp_hidden" else f" ({r['field']})"  # experts' width
            lines.append(f"| {LABELS.get(name, name)} | {r['mlp_hidden']}{field} | {r['unmatched_mlp_hidden']} | "
                         f"{s[key]:,.0f} | {s[key] / base[key] - 1:+.2%}"
                         f"{'' if r.get('within_tolerance', True) else ' (beyond 0.5%: the nearest width)'} |")
    return [*lines, ""]


def _moe_section(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Per MoE variant and seed: the fraction of routing slots each expert got at the end of training."""
    rows = [(name, seed, load, s["moe_aux_loss"][seed]) for name, s in summary.items()
            for seed, load in s.get("moe_load", {}).items()]
    if not rows:
        return []
    n = max(len(load) for _, _, load, _ in rows)
    lines = ["## Mixture of experts: load per expert", "",
             "The fraction of the routing slots (token, choice) each expert got, the mean of the last 5 logged "
             f"training steps, averaged over the MoE layers (`moe_load` in metrics.jsonl); balanced is 1/{n} = "
             f"{1 / n:.1%} each. Aux: the load-balancing loss (1 when balanced).", "",
             "| variant | seed | " + " | ".join(f"e{i}" for i in range(n)) + " | max / min | aux |",
             "|---|---:|" + "---:|" * (n + 2)]
    for name, seed, load, aux in rows:
        lines.append(f"| {LABELS.get(name, name)} | {seed} | " + " | ".join(f"{x:.1%}" for x in load)
                     + f" | {max(load) / max(min(load), 1e-9):.2f} | {aux:.3f} |")
    return [*lines, ""]


def _paired_section(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Final val loss minus the baseline's, seed by seed, with a 95% Student t interval over the seeds."""
    rows = {n: s["paired_delta"] for n, s in summary.items() if "paired_delta" in s}
    if not rows:
        return []
    seeds = sorted({int(k) for p in rows.values() for k in p["per_seed"]})
    lines = ["## Paired differences vs the baseline", "",
             f"Final val loss ({meta['trainer']['eval_iters']}-batch estimate) of the variant minus the baseline's "
             "of the same seed (same batches, same eval batches), and the 95% Student t interval of their mean: "
             "mean ± t(0.975, n − 1) × sd / √n over the n seeds (n/a with one seed). An interval that excludes "
             "0 is a difference the seeds show.", "",
             "| variant | " + " | ".join(f"seed {k}" for k in seeds) + " | mean Δ | 95% CI |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for name, p in rows.items():
        per_seed = {int(k): v for k, v in p["per_seed"].items()}
        cells = [f"{per_seed[k]:+.4f}" if k in per_seed else "–" for k in seeds]
        hw = p["ci95_half_width"]
        ci = "n/a (1 seed)" if hw is None else f"{p['mean'] - hw:+.4f} to {p['mean'] + hw:+.4f}"
        mean = "–" if p["mean"] is None else f"{p['mean']:+.4f}"
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + f" | {mean} | {ci} |")
    return [*lines, ""]


def _extrapolation_section(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    windows = f"{meta['eval_batches']}-batch estimate"
    lines = [
        "## Length extrapolation",
        "",
        f"Val loss on windows of 1×, 2× and 4× the training context (block_size), each the mean loss of "
        f"{meta['eval_batches']} batches of fixed random windows; the 1× column is measured on other windows "
        "than the final val loss, so the two differ by that sampling. `gptlab eval RUN` gives the whole val split.",
        "",
        f"| variant | val loss at 1× ({windows}) | 2× | 4× |",
        "|---|---:|---:|---:|",
    ]
    for name, s in summary.items():
        cells = []
        for k in ("1x", "2x", "4x"):
            v = s["extrapolation"].get(k)
            cells.append("n/a: learned positions end at block_size" if v is None else _pm(v, s["seeds"], meta))
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return lines


def _uptrain_section(u: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    windows = f"{meta['eval_batches']}-batch estimate"
    return [
        "## MHA → GQA uptraining (Ainslie et al. 2023)",
        "",
        f"The baseline (seed 0, {u['n_head']} heads) converted with `gptlab convert --to-gqa {u['n_kv_head']}` "
        f"(mean-pooled K/V heads), uptrained for {u['uptrain_iters']} step{'s' * (u['uptrain_iters'] != 1)} "
        f"({u['uptrain_iters'] / u['iters']:.0%} of {u['iters']}), against GQA trained from scratch for "
        f"{u['iters'] + u['uptrain_iters']} steps. Val loss at block_size:",
        "",
        f"| model | val loss at block_size ({windows}) |",
        "|---|---:|",
        f"| MHA ({u['iters']} steps) | {u['mha']:.4f} |",
        f"| converted to GQA, before uptraining | {u['converted']:.4f} |",
        f"| converted + uptrained {u['uptrain_iters']} steps | {u['uptrained']:.4f} |",
        f"| GQA from scratch, {u['iters'] + u['uptrain_iters']} steps | {u['scratch']:.4f} |",
        "",
        f"Mean-pooling changes the loss by {u['converted'] - u['mha']:+.3f} nats at once; {u['uptrain_iters']} "
        f"step{'s' * (u['uptrain_iters'] != 1)} of "
        f"uptraining recover to {u['uptrained']:.3f} ({u['uptrained'] - u['scratch']:+.3f} vs from scratch).",
        "",
    ]


def summary_lines(results: dict[str, list[dict[str, Any]]], seeds: int, meta: dict[str, Any]) -> list[str]:
    """The comparison's last lines in the log: each variant's final val loss over its completed seeds."""
    n = meta["trainer"]["eval_iters"]
    lines = [f"[compare] final val loss ({n}-batch estimate), mean ± std over the seeds completed:"]
    base = statistics.fmean(r["final_val_loss"] for r in results["baseline"]) if "baseline" in results else None
    for name, runs in results.items():
        m, sd = _mean_std([r["final_val_loss"] for r in runs])
        delta = "" if base is None or name == "baseline" else f"  Δ {m - base:+.4f} vs baseline"
        seeds_done = f"{len(runs)} of {seeds} seeds"
        lines.append(f"[compare]   {LABELS.get(name, name):<18} {m:.4f} ± {sd:.4f} ({seeds_done}){delta}")
    return lines
