"""`gptlab compare --match=params|flops`: each variant's MLP widened or narrowed to the baseline's size.

A change to attention or positions changes the model's size too (GQA drops K/V weights, RoPE the position
table), so "GQA is worse" would mix fewer heads with fewer parameters. Matching sets each variant's
`mlp_hidden` (GELU or SwiGLU) to the width whose parameters, or forward FLOPs per token at block_size as
`gptlab info` counts them, come nearest the baseline's. Both are linear in mlp_hidden, so that width is one
division away; a variant the MLP cannot bring within 0.5% (a deeper model, say) is refused in one line.
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
    """(changes with the matching mlp_hidden, the record of the match: hidden sizes, sizes, mismatch)."""
    variant = base.replace(**changes)
    target, now, h0 = size(base, by), size(variant, by), variant.mlp_hidden
    per_unit = size(variant.replace(mlp_hidden=h0 + 1), by) - now  # what one more hidden unit adds
    hidden = round(h0 + (target - now) / per_unit)
    what = "parameters" if by == "params" else "FLOPs per token"
    if hidden < 1:
        least = size(variant.replace(mlp_hidden=1), by)
        raise UsageError(f"--match={by}: variant {name!r} cannot match the baseline's {target:,.0f} {what} by its "
                         f"MLP (with mlp_hidden=1 it has {least:,.0f}, {least / target - 1:+.1%}); take it out of "
                         "the grid or compare it unmatched")
    matched = size(variant.replace(mlp_hidden=hidden), by)
    mismatch = matched / target - 1
    if abs(mismatch) > TOLERANCE:
        raise UsageError(f"--match={by}: variant {name!r} is {mismatch:+.2%} off the baseline's {what} at the "
                         f"nearest mlp_hidden={hidden} (each hidden unit is {per_unit / target:.2%}); take it out "
                         "of the grid or compare it unmatched")
    record = {"mlp_hidden": hidden, "unmatched_mlp_hidden": h0, by: matched, f"baseline_{by}": target,
              "mismatch": mismatch}
    return {**changes, "mlp_hidden": hidden}, record


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
