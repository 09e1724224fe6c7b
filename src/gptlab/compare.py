"""gptlab compare: measure what each architecture change does, every variant trained alike.

    gptlab compare --preset=cpu --out=reports/cpu            # 8 variants x 2 seeds on Shakespeare, report.md
    gptlab compare --preset=cpu --grid=baseline,rope --seeds=1
    gptlab compare --grid=my_grid.yaml                       # {name: {model field: value}} changes to baseline

Every run goes through the real trainer (`gptlab.train.main`) with the same data, token budget, batch,
schedule and seeds; only the model flags differ. Each run directory gets a `result.json` once it is
evaluated, and a run that has one is skipped, so an interrupted comparison continues where it stopped (a
run cut in the middle resumes from its last checkpoint). The report (report.py) is `OUT/report.md` + PNG
figures + `results.json`; run directories live in `OUT/runs/` (checkpoints: keep them out of git).
`gptlab convert` (convert.py) is the MHA -> GQA conversion whose uptraining this measures.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from . import api, hardware
from . import checkpoint as ckpt
from .config import SWITCHES, GPTConfig, modern_changes, switch_variants
from .convert import convert_main, convert_to_gqa
from .data import default_data_path, prepare_dataset
from .distributed import resolve_device
from .matching import MATCHES, match_grid
from .measure import device_name, eval_loss, measure, measure_speeds
from .options import (
    UsageError,
    build_dataclass,
    coerce,
    model_config_from_dict,
    options_of,
    parse_flags,
    unknown_flags,
)
from .presets import COMPARE_PRESETS, compare_preset
from .report import LABELS, commentary, summary_lines, write_report
from .tokenizer import save_tokenizer
from .train import main as train_main
from .train_config import TRAIN_OPTIONS, data_vocab_size, default_cache_dir, parse_train_args

# Names that lived here before compare.py was split (report.py, convert.py): `from gptlab.compare import ...`
# keeps working.
__all__ = ["LABELS", "PRESETS", "CompareSettings", "commentary", "convert_main", "convert_to_gqa", "default_grid",
           "main", "parse_grid", "run_device"]

# ========================================================================================================
# The grid and the presets
# ========================================================================================================


def default_grid(config: GPTConfig) -> dict[str, dict[str, Any]]:
    """Each variant of every switch (config.SWITCHES) against the GPT-2 baseline, plus the modern ones together."""
    return {"baseline": {}, **switch_variants(config), "modern": modern_changes(config)}


# The compare presets, resolved (declared in presets.py, each naming the run preset it changes).
PRESETS: dict[str, dict[str, Any]] = {name: compare_preset(name) for name in COMPARE_PRESETS}


def run_device(preset: dict[str, Any]) -> torch.device:
    """The device the runs train on (--trainer.device, auto: cuda if there is one), where they are measured too."""
    return resolve_device(str(preset["trainer"].get("device", "auto")))


def parse_grid(spec: str | None, base: GPTConfig) -> dict[str, dict[str, Any]]:
    """The grid: all defaults (None), a comma list of default names, or a YAML/JSON file {name: {field: v}}."""
    grid = default_grid(base)
    if spec is None:
        return grid
    if Path(spec).suffix in (".yaml", ".yml", ".json"):

        if not Path(spec).is_file():
            raise UsageError(f"--grid {spec}: file not found; check the path")
        try:
            data = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"--grid {spec}: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
            raise UsageError(f"--grid {spec} must map variant names to {{model field: value}} changes")
        out = {str(k): dict(v or {}) for k, v in data.items()}
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in grid]
        if unknown:
            raise UsageError(f"--grid: unknown variant(s) {unknown}; choose from {', '.join(grid)} or a YAML file")
        out = {n: grid[n] for n in names}
    for name, changes in out.items():
        try:
            base.replace(**changes)
        except (ValueError, TypeError) as e:
            raise UsageError(f"--grid variant {name!r}: {e}") from None
    return out


# ========================================================================================================
# Running and measuring one variant
# ========================================================================================================


def _train_flags(preset: dict[str, Any], changes: dict[str, Any], seed: int, work_dir: Path,
                 extra: list[str]) -> list[str]:
    # Quiet: the comparison's log is one line per run (compare prints it), not every run's progress.
    flags = [f"--system.work_dir={work_dir}", f"--system.seed={seed}", "--trainer.sample_tokens=0",
             "--trainer.quiet=True"]
    model = {**preset["model"], **changes}
    flags += [f"--model.{k}={v}" for k, v in model.items()]
    flags += [f"--trainer.{k}={v}" for k, v in preset["trainer"].items()]
    return flags + list(extra)


def _settings_path(out: Path) -> Path:
    return out / "runs" / "settings.json"


def read_settings(out: Path) -> dict[str, Any]:
    """OUT/runs/settings.json: the command of the comparison, its grid, and the train flags of every run started."""
    path = _settings_path(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_settings(out: Path, settings: dict[str, Any]) -> None:
    path = _settings_path(out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=1) + "\n")
    os.replace(tmp, path)


def _run_key_flags(flags: list[str]) -> list[str]:
    """The flags that make a run what it is: not where it lives, its data cache or how often it prints."""
    bookkeeping = ("--system.work_dir=", "--data.cache_dir=", "--trainer.log_interval=", "--trainer.quiet=")
    return [f for f in flags if not f.startswith(bookkeeping)]


def _match_flag(preset: dict[str, Any]) -> list[str]:
    """--match=... among a grid run's recorded settings: a run matched one way is not reused for another."""
    return [f"--match={preset['match']}"] if preset.get("match") else []


def record_run_flags(out: Path, run: str, flags: list[str]) -> None:
    """Remember the settings a run was started with, so a later command cannot reuse it under others."""
    settings = read_settings(out)
    settings.setdefault("runs", {})[run] = _run_key_flags(flags)
    _write_settings(out, settings)


# The uptraining experiment's files: one unit, recorded under "uptrain", redone together.
UPTRAIN_PATHS = ("uptrain.json", "converted-gqa", "uptrained-gqa", "scratch-gqa-s0")


def check_run_flags(out: Path, planned: dict[str, list[str]]) -> None:
    """Refuse, before anything trains, to reuse runs (complete or interrupted) started with other settings."""
    saved = read_settings(out).get("runs", {})
    stale = []
    for run, flags in planned.items():
        paths = [out / "runs" / p for p in (UPTRAIN_PATHS if run == "uptrain" else (run,))]
        before = saved.get(run)
        if before is None or not any(p.exists() for p in paths):
            continue
        was = dict(f.partition("=")[::2] for f in before)
        now = dict(f.partition("=")[::2] for f in _run_key_flags(flags))
        if was != now:
            changed = [f"{k}={now.get(k, '(unset)')} (was {was.get(k, '(unset)')})"
                       for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k)]
            stale.append((shlex.join(str(p) for p in paths if p.exists()), changed))  # the rm below works as printed
    if stale:

        raise UsageError(
            f"{len(stale)} run(s) in {out / 'runs'} were trained with other settings ({', '.join(stale[0][1])}); "
            f"use another --out, or delete them to train them again: rm -r {' '.join(p for p, _ in stale)}"
        )


def run_train(flags: list[str], work_dir: Path, max_iters: int) -> int | None:
    """Train through `gptlab train` to max_iters (the run's --trainer.max_iters), resuming a run that stopped in
    the middle; returns the iteration it resumed from (None: a new run)."""
    resumed_at = None
    if (work_dir / "last").is_dir():
        resumed_at = ckpt.checkpoint_iter(work_dir / "last")
        flags = [*flags, "--trainer.resume=True"]
    elif work_dir.exists():
        flags = [*flags, "--system.overwrite=True"]
    code = train_main(flags)
    if code != 0:
        raise RuntimeError(f"training in {work_dir} failed (exit code {code})")
    state = json.loads((work_dir / "last" / "state.json").read_text())
    if state["iter"] < max_iters:  # stopped by a signal: the trainer saved and returned 0, but the run is not done
        raise SystemExit(f"[compare] {work_dir} stopped at iter {state['iter']} of {max_iters}; rerun this gptlab "
                         "compare command to continue the whole comparison")
    return resumed_at


def run_variant(out: Path, name: str, changes: dict[str, Any], seed: int, preset: dict[str, Any], data: Any,
                extra: list[str], device: torch.device, say: Callable[[str], None]) -> dict[str, Any]:
    """Train (or skip, or resume) one variant/seed and return its result.json."""
    work_dir = out / "runs" / f"{name}-s{seed}"
    result_path = work_dir / "result.json"
    if result_path.is_file():
        say(f"[compare] {name} seed {seed}: complete, skipped")
        return json.loads(result_path.read_text())
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flags = _train_flags(preset, changes, seed, work_dir, extra)
    record_run_flags(out, work_dir.name, [*flags, *_match_flag(preset)])
    start = time.perf_counter()
    resumed_at = run_train(flags, work_dir, int(preset["trainer"]["max_iters"]))
    minutes = (time.perf_counter() - start) / 60
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    result = measure(work_dir, data, preset["eval_batches"], preset["decode_tokens"],
                     preset["trainer"]["batch_size"], peak, device)
    result.update(name=name, seed=seed, changes=changes)
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    resumed = "" if resumed_at is None else f" (resuming at iter {resumed_at})"
    say(f"[compare] {name} seed {seed}{resumed}: final val loss {result['final_val_loss']:.4f} "
        f"({result['eval_iters']}-batch estimate) at iter {result['iters']}, {minutes:.1f} min, "
        f"{result['train_tokens_per_s'] or 0:,.0f} train tokens/s, in {work_dir}")
    return result


# ========================================================================================================
# Uptraining experiment: MHA -> GQA (convert + ~5% of the steps) vs GQA from scratch
# ========================================================================================================


def uptrain_experiment(out: Path, preset: dict[str, Any], data: Any, extra: list[str],
                       say: Callable[[str], None]) -> dict[str, Any]:
    """Convert baseline seed 0 to GQA, uptrain it for 5% of the steps; train GQA from scratch for the total."""
    path = out / "runs" / "uptrain.json"
    if path.is_file():
        say("[compare] uptraining experiment: complete, skipped")
        return json.loads(path.read_text())
    record_run_flags(out, "uptrain", _train_flags(preset, {}, 0, Path(), extra))
    base_dir = out / "runs" / "baseline-s0"
    iters = int(preset["trainer"]["max_iters"])
    up_iters = max(1, round(0.05 * iters))
    eb = preset["eval_batches"]
    bs = preset["trainer"]["batch_size"]
    mha, tok, _ = ckpt.load_model(base_dir / "last")
    n_kv = max(1, mha.config.n_head // 2)
    gqa = convert_to_gqa(mha, n_kv)
    conv_dir = out / "runs" / "converted-gqa"
    gqa.save_pretrained(conv_dir)
    save_tokenizer(tok, conv_dir / "tokenizer.json")
    ctx = mha.config.block_size
    loss_mha = eval_loss(mha, data, ctx, eb, bs)
    loss_conv = eval_loss(gqa, data, ctx, eb, bs)
    # Uptrain: the converted weights, a short warmup, the preset's learning rate decayed over up_iters.
    up_dir = out / "runs" / "uptrained-gqa"
    # A warmup shorter than the run (a 1-step uptraining has none): it must reach the peak learning rate.
    t = {**preset["trainer"], "max_iters": up_iters, "warmup_iters": up_iters // 5,
         "eval_interval": up_iters, "lr_decay_iters": up_iters}
    flags = [f"--init={conv_dir}", f"--system.work_dir={up_dir}", "--system.seed=0", "--trainer.sample_tokens=0",
             "--trainer.quiet=True"]
    flags += [f"--trainer.{k}={v}" for k, v in t.items()] + list(extra)
    run_train(flags, up_dir, up_iters)
    up_model, _, _ = ckpt.load_model(up_dir / "last")
    loss_up = eval_loss(up_model, data, ctx, eb, bs)
    # GQA from scratch for the same total steps (iters + up_iters).
    scratch_dir = out / "runs" / "scratch-gqa-s0"
    trainer = {**preset["trainer"], "max_iters": iters + up_iters}
    run_train(_train_flags({**preset, "trainer": trainer}, {"n_kv_head": n_kv}, 0, scratch_dir, extra), scratch_dir,
              trainer["max_iters"])
    scratch, _, _ = ckpt.load_model(scratch_dir / "last")
    loss_scratch = eval_loss(scratch, data, ctx, eb, bs)
    result = {"n_head": mha.config.n_head, "n_kv_head": n_kv, "iters": iters, "uptrain_iters": up_iters,
              "mha": loss_mha, "converted": loss_conv, "uptrained": loss_up, "scratch": loss_scratch}
    path.write_text(json.dumps(result, indent=1) + "\n")
    say(f"[compare] uptraining experiment: val loss MHA {loss_mha:.4f}, converted to {n_kv} K/V heads "
        f"{loss_conv:.4f}, uptrained {up_iters} steps {loss_up:.4f}, GQA from scratch {loss_scratch:.4f} "
        f"({eb}-batch estimates)")
    return result


# ========================================================================================================
# The command
# ========================================================================================================

COMPARE_USAGE = f"""usage: gptlab compare [--preset={"|".join(COMPARE_PRESETS)}] [--grid=NAMES|FILE.yaml] [--seeds=N]
                      [--out=DIR] [--match=params|flops] [--note=TEXT] [--no-uptrain] [--report-only]
                      [train flags, e.g. --trainer.max_iters=100 ...]

Train a grid of architecture variants (same data, tokens, batch, schedule and seeds) through gptlab train
and write OUT/report.md with figures. Default grid: baseline (GPT-2), the switches one at a time
({", ".join(v.name for s in SWITCHES for v in s.variants)}) and modern (all).
A YAML grid maps names to model field changes against the baseline, e.g.
  rope: {{pos_emb: rope}}
  wide_kv: {{n_kv_head: 2}}
--match=params (or flops) resizes each variant's MLP (mlp_hidden) so its parameters (or forward FLOPs per
token) equal the baseline's within 0.5%; the report shows the sizes chosen.
Complete runs are skipped and interrupted ones resumed, so rerunning the command continues a comparison.
--report-only writes the report from the runs complete so far (marked incomplete), training nothing; while
the comparison runs, it does not time the variants either (tokens/s: each run's own log)."""


@dataclass
class CompareSettings:
    """The options of `gptlab compare` itself (its --trainer.*, --model.* and --data.* flags go to the runs)."""

    preset: str = "cpu"  # PRESETS: the baseline model and the training every run shares
    grid: str | None = None  # default variants by name (comma-separated), or a YAML/JSON file; None: them all
    seeds: int = 2  # runs per variant
    out: str | None = None  # the report's directory; None: reports/<preset>
    note: str = ""  # a line for the report
    uptrain: bool = True  # the MHA -> GQA uptraining experiment (--no-uptrain: skip it)
    report_only: bool = False  # the report of the runs complete so far, training nothing
    # params or flops: each variant's MLP resized to the baseline's parameters / FLOPs per token (matching.py)
    match: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"reports/{self.preset}")


COMPARE_OPTIONS = options_of(CompareSettings)
RUN_FLAGS = ("--trainer.", "--model.", "--data.")  # passed on to every run
RUN_OPTIONS = {key: opt for key, opt in TRAIN_OPTIONS.items() if key.startswith(tuple(f[2:] for f in RUN_FLAGS))}


def parse_compare_args(argv: list[str]) -> tuple[CompareSettings, list[str]]:
    """(compare's own settings, the flags for the runs as --key=value, aliases resolved) from the command line,
    parsed by the one flag parser with gptlab train's flags and aliases for the runs."""
    argv = ["--uptrain=False" if a.replace("_", "-") == "--no-uptrain" else a for a in argv]
    unknown = unknown_flags([a for a in argv if not a.startswith(RUN_FLAGS)], COMPARE_OPTIONS)
    if unknown:
        raise UsageError(f"unknown argument {unknown[0]!r}; see gptlab compare --help")
    pairs, positionals = parse_flags(argv, {**COMPARE_OPTIONS, **RUN_OPTIONS})
    if positionals:
        raise UsageError(f"unknown argument {positionals[0]!r}; see gptlab compare --help")
    run_flags = [f"--{k}={v}" for k, v in pairs if k in RUN_OPTIONS]
    own = {k: coerce(k, v, COMPARE_OPTIONS[k].type) for k, v in pairs if k in COMPARE_OPTIONS}
    settings = build_dataclass(CompareSettings, own)
    if settings.seeds < 1:
        raise UsageError(f"--seeds expects an integer >= 1, got {settings.seeds}")
    if settings.match is not None and settings.match not in MATCHES:
        raise UsageError(f"--match: choose from {', '.join(MATCHES)}, got {settings.match!r}")
    return settings, run_flags


def _report_settings(argv: list[str], saved: dict[str, Any]) -> tuple[CompareSettings, list[str], list[str]]:
    """--report-only: the settings (and argv) of the command that trained the runs, which the report describes."""
    s, run_flags = parse_compare_args(argv)
    own = [a for a in argv if a.partition("=")[0] not in ("--out", "--preset", "--note", "--report-only",
                                                            "--report_only")]
    if "argv" in saved:
        if own:
            raise UsageError(f"--report-only takes the comparison's settings from its runs; drop {own[0]} "
                             "(only --out, --preset and --note go with it)")
        out = s.out
        s, run_flags = parse_compare_args([*saved["argv"], *(a for a in argv if a.startswith("--note="))])
        s.out, s.report_only, argv = out, True, saved["argv"]
    elif not own and (s.out_dir / "runs").is_dir():  # runs of an older gptlab, which did not record their settings
        raise UsageError(f"{s.out or 'reports/' + s.preset}/runs has no settings.json to say how its runs were "
                         "trained: give --report-only the flags of the gptlab compare command that trained them")
    return s, run_flags, argv


def shared_preset(name: str, run_flags: list[str]) -> dict[str, Any]:
    """The compare preset with the --trainer.* and --model.* flags applied: what every run shares."""
    if name not in PRESETS:
        raise UsageError(f"--preset: choose from {', '.join(PRESETS)}, got {name!r}")
    preset = copy.deepcopy(PRESETS[name])
    for a in run_flags:  # the report shows these in its settings
        key, _, value = a.removeprefix("--").partition("=")
        section, _, field_name = key.partition(".")
        if section in ("trainer", "model"):
            preset[section][field_name] = coerce(key, value, RUN_OPTIONS[key].type)
    return preset


def _compare_lock(out: Path) -> ckpt.RunLock:
    """The lock of a comparison in OUT/runs, held until it ends; refused while another holds it."""
    try:
        return ckpt.RunLock(out / "runs").acquire()
    except UsageError:
        raise UsageError(f"another gptlab compare is running in {out} (it holds {out / 'runs' / '.lock'}); wait for "
                         f"it, or use another --out (gptlab compare --out={out} --report-only reports its runs "
                         "so far)") from None


def say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`gptlab compare`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(COMPARE_USAGE)
        return 0
    s, run_flags = parse_compare_args(argv)
    saved = read_settings(s.out_dir)
    if s.report_only:
        s, run_flags, argv = _report_settings(argv, saved)
    preset = shared_preset(s.preset, run_flags)
    data_flags = [a for a in run_flags if a.startswith("--data.")]
    try:
        device = run_device(preset)  # the runs train there, and are measured there
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = s.out_dir
    base_config = model_config_from_dict(preset["model"], vocab_size=65)
    check = parse_train_args(_train_flags(preset, {}, 0, out / "runs" / "check", data_flags))  # bad flags fail now
    grid, match = _grid(s, saved, preset, base_config.replace(vocab_size=data_vocab_size(check)))
    if s.report_only and not (out / "runs").is_dir():
        raise UsageError(f"--report-only: no complete runs in {out / 'runs'}")
    if not s.report_only:
        planned = {f"{n}-s{seed}": [*_train_flags(preset, c, seed, Path(), data_flags), *_match_flag(preset)]
                   for seed in range(s.seeds) for n, c in grid.items()}
        if s.uptrain and "baseline" in grid:
            planned["uptrain"] = _train_flags(preset, {}, 0, Path(), data_flags)
        check_run_flags(out, planned)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("runs/\n")  # checkpoints stay out of git
    # A comparison holds OUT/runs/.lock while it runs, so --report-only knows whether runs are training now.
    live = s.report_only and ckpt.lock_held(out / "runs")
    lock = None if s.report_only else _compare_lock(out)
    try:
        if not s.report_only:
            _write_settings(out, {**read_settings(out), "argv": argv, "grid": grid, "match": match})
        # Measured on the data the runs train on: the same --data.* settings the trainer gets.
        cache = Path(check.data.cache_dir) if check.data.cache_dir else default_cache_dir()
        tok_name = check.data.tokenizer or "char"
        data_path = Path(check.data.path) if check.data.path else default_data_path(cache)
        data = prepare_dataset(data_path, tok_name, cache, base_config.block_size)
        if "baseline" not in grid:
            say("[compare] note: the grid has no 'baseline' variant, so the report compares nothing against it "
                "(add `baseline: {}` to a YAML grid) and skips the uptraining experiment")
        if s.report_only:  # whatever is complete now, training nothing (a comparison in progress)
            results, uptrain = _completed_runs(out, grid, s)
        else:
            results, uptrain = _run_grid(out, grid, s, preset, data, data_flags, device)
        wall_path = out / "runs" / "wall_s.json"
        wall = json.loads(wall_path.read_text())["s"] if wall_path.is_file() else 0.0
        meta = {
            "preset": s.preset, "seeds": s.seeds, "grid": grid, "model": preset["model"],
            "trainer": preset["trainer"], "data": f"{check.data.path or 'Shakespeare'} ({tok_name})",
            "eval_batches": preset["eval_batches"], "match": match,
            "machine": machine_line(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device_name(device),
            "note": s.note or "timings on this machine as it was loaded at the time", "wall_min": wall / 60,
            "command": "gptlab compare " + " ".join(a for a in argv if not a.startswith(("--note", "--report-only"))),
        }
        speeds = _side_by_side_speeds(out, grid, results, preset, device, s.report_only, live, meta)
        path = write_report(out, results, uptrain, meta, speeds)
        for line in summary_lines(results, s.seeds, meta):
            say(line)
        say(f"[compare] report: {path}")
        return 0
    finally:
        if lock is not None:
            lock.release()


def machine_line() -> str:
    """What the runs ran on, for the report: results move with the CPU's kind (its ISA and native bf16)."""
    bf16 = "native bf16" if hardware.native_bf16_cpu() else "no native bf16"
    return (f"{hardware.cpu_model()} ({hardware.cpu_isa()}, {bf16}), {os.cpu_count()} CPU cores, "
            f"{platform.machine()}, {platform.system()}")


def _grid(s: CompareSettings, saved: dict[str, Any], preset: dict[str, Any], base: GPTConfig
          ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The grid to train (its variants matched to `base` under --match) and the record of the match; a report
    reads the grid its runs were trained with (the YAML file may have changed since)."""
    if s.report_only and "grid" in saved:
        return saved["grid"], saved.get("match")
    grid = parse_grid(s.grid, base)
    if s.match is None:
        return grid, None
    preset["match"] = s.match  # recorded with every grid run's settings
    grid, match = match_grid(base, grid, s.match)
    say(f"[compare] --match={s.match}: mlp_hidden " + ", ".join(
        f"{n} {r['mlp_hidden']} ({r['mismatch']:+.2%})" for n, r in match["variants"].items()))
    for n, r in match["variants"].items():
        if not r["within_tolerance"]:
            say(f"[compare] note: {n} stays {r['mismatch']:+.2%} off at the nearest {r['field']}={r['mlp_hidden']}"
                " (one hidden unit is more than 1% of the model); the report says so")
    return grid, match


def _completed_runs(out: Path, grid: dict[str, dict[str, Any]], s: CompareSettings
                    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """--report-only: the results of the runs complete so far (and a note in `s` of the missing ones)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for name in grid:
        done = [out / "runs" / f"{name}-s{seed}" / "result.json" for seed in range(s.seeds)]
        runs = [json.loads(p.read_text()) for p in done if p.is_file()]
        if runs:
            results[name] = runs
    uptrain_path = out / "runs" / "uptrain.json"
    uptrain = json.loads(uptrain_path.read_text()) if uptrain_path.is_file() else None
    if not results:
        raise UsageError(f"--report-only: no complete runs in {out / 'runs'}")
    missing = [f"{n} ({s.seeds - len(results.get(n, []))} of {s.seeds} seeds)" for n in grid
               if len(results.get(n, [])) < s.seeds]
    if missing:
        s.note = "; ".join(filter(None, [s.note, "INCOMPLETE comparison, missing runs: " + ", ".join(missing)]))
    return results, uptrain


def _run_grid(out: Path, grid: dict[str, dict[str, Any]], s: CompareSettings, preset: dict[str, Any], data: Any,
              data_flags: list[str], device: torch.device
              ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """Train (or skip, or resume) every variant and seed, and the uptraining experiment."""
    wall_path = out / "runs" / "wall_s.json"
    clock = time.perf_counter()

    def add_wall() -> None:  # the comparison's wall time sums every command that trained (interrupted ones too)
        nonlocal clock
        prev = json.loads(wall_path.read_text())["s"] if wall_path.is_file() else 0.0
        now = time.perf_counter()
        wall_path.write_text(json.dumps({"s": prev + now - clock}))
        clock = now

    results: dict[str, list[dict[str, Any]]] = {}
    uptrain = None
    # Seed 0 of every variant first, then the uptraining experiment, then the other seeds: a comparison stopped
    # early (--report-only) still covers every variant.
    try:
        for seed in range(s.seeds):
            for name, changes in grid.items():
                result = run_variant(out, name, changes, seed, preset, data, data_flags, device, say)
                results.setdefault(name, []).append(result)
                add_wall()
            if seed == 0 and s.uptrain and "baseline" in grid:
                uptrain = uptrain_experiment(out, preset, data, data_flags, say)
    finally:
        add_wall()
    return results, uptrain


def _side_by_side_speeds(out: Path, grid: dict[str, dict[str, Any]], results: dict[str, list[dict[str, Any]]],
                         preset: dict[str, Any], device: torch.device, report_only: bool, live: bool,
                         meta: dict[str, Any]) -> dict[str, Any] | None:
    """The variants' speeds, timed side by side once all runs are done (a report of the same runs shows those
    numbers again); None while runs train (then meta's note says so)."""
    speeds_path = out / "runs" / "speeds.json"
    speeds = json.loads(speeds_path.read_text()) if report_only and speeds_path.is_file() else None
    if speeds and set(speeds.get("variants", {})) == set(results):
        return speeds
    if live:  # timing now would slow the runs, and their load would skew the times
        meta["note"] += "; written while runs trained: tokens/s are each run's own log, not timed side by side"
        say(f"[compare] runs are training in {out / 'runs'}: the variants are not timed side by side now "
            "(tokens/s: each run's own log); rerun --report-only when the comparison is done")
        return None
    speeds = measure_speeds(out, {n: grid[n] for n in results}, preset, device, say=say)
    if not report_only and speeds:
        speeds_path.write_text(json.dumps(speeds, indent=1) + "\n")
    return speeds


# `from gptlab import compare; compare(preset="micro")`: this module is also the Python API's compare (api.py).
api.callable_module(__name__, api.compare)
