"""Student t intervals for `gptlab compare`: a variant minus the baseline, seed by seed, over n seeds.

No scipy: the degrees of freedom are whole numbers (n - 1), for which the t distribution has a closed form
(Abramowitz & Stegun 26.7.3-4), and the quantile is found by bisection on it.
"""

from __future__ import annotations

import math
import statistics


def t_central_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with `df` degrees of freedom (an integer >= 1).

    With theta = atan(t / sqrt(df)), c = cos(theta), s = sin(theta):
      odd df:  (2/pi) (theta + s (c + 2/3 c^3 + 2*4/(3*5) c^5 + ... + up to c^(df-2)))
      even df: s (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... + up to c^(df-2))
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    k = 1 if df % 2 else 0  # the power of c in the first term
    term = c if df % 2 else 1.0
    total = 0.0
    while k <= df - 2:
        total += term
        term *= c * c * (k + 1) / (k + 2)
        k += 2
    return 2 / math.pi * (theta + s * total) if df % 2 else s * total


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = confidence: the half-width of a two-sided interval in standard errors
    (confidence 0.95, df 1: 12.706; df 4: 2.776)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    lo, hi = 0.0, 1.0
    while t_central_probability(hi, df) < confidence:
        hi *= 2
    for _ in range(200):  # bisection down to float resolution
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_central_probability(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def t_interval(xs: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """(mean, half-width) of the Student t interval of the mean of xs: mean ± t(n-1) * sd / sqrt(n);
    None for fewer than 2 values (no spread to estimate)."""
    n = len(xs)
    if n < 2:
        return None
    mean = statistics.fmean(xs)
    return mean, t_quantile(confidence, n - 1) * statistics.stdev(xs) / math.sqrt(n)


def paired_differences(runs: list[dict], baseline: list[dict], key: str = "final_val_loss") -> dict[int, float]:
    """{seed: run's key - the baseline's} over the seeds both have."""
    base = {r["seed"]: r[key] for r in baseline}
    return {r["seed"]: r[key] - base[r["seed"]] for r in runs if r["seed"] in base}
