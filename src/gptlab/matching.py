"""`gptlab compare --match=params|flops`: each variant's MLP widened or narrowed to the baseline's size.

A change to attention or positions changes the model's size too (GQA drops K/V weights, RoPE the position
table), so "GQA is worse" would mix fewer heads with fewer parameters. Matching sets each variant's MLP width
(`mlp_hidden`, GELU or SwiGLU; with experts, `expert_hidden`) to the width whose parameters, or forward FLOPs
per token at block_size as `gptlab info` counts them, come nearest the baseline's. Both are linear in that
width, so it is one division away. A variant no MLP width can match (a deeper model, say) is refused in one
line; one whose nearest width still misses by more than 0.5% (a hidden unit of 8 experts is 1% of a small
model) trains at that width, and the log and the report say by how much.
"""

from __future__ import annotations

from typing import Any

from .config import GPTConfig
from .info import model_stats
from .options import UsageError

MATCHES = ("params", "flops")
TOLERANCE = 0.005  # the largest |variant / baseline - 1| a matched variant may keep


def size(config: GPTConfig, by: str) -> float:
    """What --match=by equalizes: total parameters, or forward FLOPs per token at block_size."""
    stats = model_stats(config)
    return stats.total_params if by == "params" else stats.flops_forward_per_token


def match_mlp(base: GPTConfig, name: str, changes: dict[str, Any], by: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(changes with the matching MLP width, the record of the match: the field, hidden sizes, sizes, mismatch)."""
    variant = base.replace(**changes)
    # With experts, their width (the dense layers of moe_dense_layers keep mlp_hidden).
    field, h0 = ("expert_hidden", variant.expert_width) if variant.n_expert else ("mlp_hidden", variant.mlp_hidden)
    target, now = size(base, by), size(variant, by)
    per_unit = size(variant.replace(**{field: h0 + 1}), by) - now  # what one more hidden unit adds
    what = "parameters" if by == "params" else "FLOPs per token"
    if per_unit <= 0:
        raise UsageError(f"--match={by}: variant {name!r} has no MLP width that changes its {what}; take it out of "
                         "the grid or compare it unmatched")
    hidden = round(h0 + (target - now) / per_unit)
    if hidden < 1:
        least = size(variant.replace(**{field: 1}), by)
        raise UsageError(f"--match={by}: variant {name!r} cannot match the baseline's {target:,.0f} {what} by its "
                         f"MLP (with {field}=1 it has {least:,.0f}, {least / target - 1:+.1%}); take it out of "
                         "the grid or compare it unmatched")
    matched = size(variant.replace(**{field: hidden}), by)
    mismatch = matched / target - 1
    record = {"field": field, "mlp_hidden": hidden, "unmatched_mlp_hidden": h0, by: matched,
              f"baseline_{by}": target, "mismatch": mismatch, "within_tolerance": abs(mismatch) <= TOLERANCE}
    return {**changes, field: hidden}, record


def match_grid(base: GPTConfig, grid: dict[str, dict[str, Any]], by: str
               ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The grid with every variant but the baseline matched to `base` (the baseline's model, with the vocab of
    the data), and {"by": ..., "variants": {name: record}} for the report."""
    if by not in MATCHES:
        raise UsageError(f"--match: choose from {', '.join(MATCHES)}, got {by!r}")
    base = base.replace(**grid.get("baseline", {}))
    out, records = {}, {}
    for name, changes in grid.items():
        if name == "baseline":
            out[name] = changes
            continue
        out[name], records[name] = match_mlp(base, name, changes, by)
    return out, {"by": by, "variants": records}
