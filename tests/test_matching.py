"""gptlab compare --match (matching.py), the report's KV cache at 1x/4x and paired t intervals (report.py, stats.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gptlab.compare import PRESETS, default_grid, main
from gptlab.config import GPTConfig
from gptlab.info import model_stats
from gptlab.matching import match_grid
from gptlab.model import GPT
from gptlab.options import UsageError, model_config_from_dict
from gptlab.report import kv_cache_bytes, paired
from gptlab.stats import t_central_probability, t_interval, t_quantile


def _real_params(config: GPTConfig) -> int:
    return sum(p.numel() for p in GPT(config).parameters())  # tied weights once, as the model holds them


@pytest.mark.parametrize("preset", ["micro", "cpu"])
@pytest.mark.parametrize("bias", [False, True])
def test_every_default_variant_matches_the_baselines_parameters(preset: str, bias: bool) -> None:
    base = model_config_from_dict({**PRESETS[preset]["model"], "bias": bias}, vocab_size=69)
    grid, match = match_grid(base, default_grid(base), "params")
    target = _real_params(base)
    assert set(match["variants"]) == set(grid) - {"baseline"} and match["by"] == "params"
    for name, changes in grid.items():
        config = base.replace(**changes)
        n = _real_params(config)  # the model that trains, not info's formula
        if name == "baseline":
            continue
        record = match["variants"][name]
        assert math.isclose(record["mismatch"], n / target - 1, abs_tol=1e-12)
        if record["within_tolerance"]:
            assert abs(n / target - 1) <= 0.005, (name, n, target)
        else:  # one hidden unit of 8 experts is ~1% of these small models: the nearest width, said so
            assert name == "moe", name
            field = record["field"]
            unit = _real_params(config.replace(**{field: getattr(config, field) + 1})) - n
            assert abs(n - target) <= unit / 2, (name, n, target, unit)
    # Fewer K/V heads: a wider MLP takes their parameters; MQA's is wider than GQA's.
    assert base.mlp_hidden < grid["gqa"]["mlp_hidden"] < grid["mqa"]["mlp_hidden"]


def test_flops_matching_uses_infos_flops_per_token() -> None:
    base = model_config_from_dict(PRESETS["cpu"]["model"], vocab_size=69)
    grid, match = match_grid(base, default_grid(base), "flops")
    target = model_stats(base).flops_forward_per_token
    for name, changes in grid.items():
        flops = model_stats(base.replace(**changes)).flops_forward_per_token
        assert abs(flops / target - 1) <= 0.005, (name, flops, target)
    # A window attends to fewer keys: its MLP grows to spend the FLOPs the window saves (not so for parameters).
    assert grid["swa"]["mlp_hidden"] > base.mlp_hidden and "mlp_hidden" in grid["rope"]
    assert match_grid(base, default_grid(base), "params")[0]["swa"]["mlp_hidden"] == base.mlp_hidden


def test_a_variant_the_mlp_cannot_match_is_refused_in_one_line(tmp_path: Path) -> None:
    base = model_config_from_dict(PRESETS["micro"]["model"], vocab_size=65)
    with pytest.raises(UsageError, match=r"variant 'deep' cannot match the baseline's [\d,]+ parameters by its MLP"):
        match_grid(base, {"baseline": {}, "deep": {"n_layer": 6}}, "params")
    grid = tmp_path / "grid.yaml"
    grid.write_text("baseline: {}\ndeep: {n_layer: 6}\n")
    out = tmp_path / "rep"
    with pytest.raises(UsageError, match="cannot match") as e:
        main(["--preset=micro", f"--grid={grid}", f"--out={out}", "--match=flops"])
    assert "\n" not in str(e.value) and not out.exists()  # refused before anything trains
    with pytest.raises(UsageError, match="--match: choose from params, flops"):
        main(["--preset=micro", "--match=size"])


def test_kv_cache_at_1x_and_4x_the_context() -> None:
    base = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=32)
    for config, positions in ((base, (64, 256)), (base.replace(window=16), (16, 16)),
                              (base.replace(n_kv_head=1, window=100), (64, 100))):
        naive = [2 * config.n_layer * config.n_kv_head * config.head_dim * 4 * p for p in positions]  # K+V, fp32
        assert kv_cache_bytes(config.to_dict()) == {"1x": naive[0], "4x": naive[1]}


def test_t_quantiles_against_the_density_and_the_tables() -> None:
    # Student t 0.975 quantiles (two-sided 95%) as printed in statistics tables.
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 30: 2.0423}
    for df, t in table.items():
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-4)
    # P(|T| <= t) against Simpson's rule on the density itself.
    for df in (1, 2, 3, 6, 7):
        for t in (0.5, 1.7, 4.0):
            c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
            f = [c * (1 + x * x / df) ** (-(df + 1) / 2) for x in (-t + 2 * t * i / 2000 for i in range(2001))]
            simpson = (2 * t / 2000) / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
            assert t_central_probability(t, df) == pytest.approx(simpson, abs=1e-9), (df, t)


def test_paired_t_interval_by_hand() -> None:
    # Differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, n 3, t(0.975, 2) = 4.302653 -> half-width 0.248414.
    mean, hw = t_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and hw == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert hw == pytest.approx(0.248414, abs=1e-6)
    assert t_interval([0.5]) is None
    base = [{"seed": s, "final_val_loss": v} for s, v in enumerate([2.0, 2.1, 1.9])]
    runs = [{"seed": s, "final_val_loss": v} for s, v in enumerate([2.1, 2.3, 2.2])]
    p = paired(runs, base)
    assert p["per_seed"] == pytest.approx({0: 0.1, 1: 0.2, 2: 0.3}) and p["seeds"] == 3
    assert p["mean"] == pytest.approx(0.2) and p["ci95_half_width"] == pytest.approx(0.248414, abs=1e-6)
    one = paired(runs[:1], base)
    assert one["mean"] == pytest.approx(0.1) and one["ci95_half_width"] is None


def test_compare_match_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gptlab.compare as C

    monkeypatch.setattr(C, "measure_speeds", lambda *a, **k: {})  # timing is not what this tests
    out = tmp_path / "rep"
    args = ["--preset=micro", "--grid=baseline,swa", "--seeds=2", f"--out={out}", "--no-uptrain",
            "--trainer.max_iters=3", "--match=flops"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    s, base = results["summary"]["swa"], results["summary"]["baseline"]
    record = results["meta"]["match"]["variants"]["swa"]
    assert results["meta"]["match"]["by"] == "flops" and s["mlp_hidden"] == record["mlp_hidden"] > base["mlp_hidden"]
    assert abs(s["flops_per_token"] / base["flops_per_token"] - 1) <= 0.005  # the trained models' numbers
    # The window's cache: 8 of 32 positions at the training context, 8 of 128 at 4x.
    assert s["kv_cache_bytes"]["1x"] * 4 == base["kv_cache_bytes"]["1x"]
    assert s["kv_cache_bytes"]["4x"] * 16 == base["kv_cache_bytes"]["4x"]
    # Paired differences, by hand: two seeds, t(0.975, 1) = 12.7062.
    losses = {n: [r["final_val_loss"] for r in results["runs"][n]] for n in ("baseline", "swa")}
    d = [v - b for v, b in zip(losses["swa"], losses["baseline"], strict=True)]
    hw = 12.706205 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)
    assert s["paired_delta"]["mean"] == pytest.approx(sum(d) / 2)
    assert s["paired_delta"]["ci95_half_width"] == pytest.approx(hw, rel=1e-6)
    report = (out / "report.md").read_text()
    m = sum(d) / 2
    for needle in ("## Matched forward FLOPs per token (--match=flops)", "## Paired differences vs the baseline",
                   f"| {m:+.4f} | {m - hw:+.4f} to {m + hw:+.4f} |", "| KV cache at 32 / 128 tokens |",
                   "KV cache 0.25× the baseline's at 32 tokens, 0.06× at 128"):
        assert needle in report, needle
    # A report of the runs later reads the match they were trained with.
    assert main([f"--out={out}", "--report-only"]) == 0
    assert "## Matched forward FLOPs per token" in (out / "report.md").read_text()
    assert json.loads((out / "results.json").read_text())["meta"]["match"] == results["meta"]["match"]
    # Another --match (or none) is another setting: the runs are not reused.
    with pytest.raises(UsageError, match=r"4 run\(s\) .* \(--match=params \(was flops\)"):
        main([*args[:-1], "--match=params"])
    with pytest.raises(UsageError, match=r"--match=\(unset\) \(was flops\)"):
        main(args[:-1])
