"""gptlab runs: one table of any run directories, finished or still training.

    gptlab runs out/a out/b                  # two runs
    gptlab runs 'out/*'                      # a glob (quoted: gptlab expands it, so it works in any shell)
    gptlab runs reports/cpu                  # a folder of runs (a compare OUT, or OUT/runs): every run inside
    gptlab runs out/a out/b --csv            # or --json: every number, and every setting of every run

A row per run: the settings that differ between the runs (the model's resolved config, then the trainer's and
data's flags from the checkpoint's state.json), parameters, KV cache bytes per token and for one sequence at
the training context (gptlab.info.model_stats, fp32), the best and final val loss, tokens/s, steps done of
planned, and whether the run is live (training now), finished or stopped.

The val losses are what training logged: estimates over `--trainer.eval_iters` batches of the val split, not
the whole split (`gptlab eval RUN` measures that), and the table says so. Everything is read, nothing written:
a run that trains now is not disturbed (see `run_is_live` for why its lock is not probed).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .options import UsageError

# Flags that say where or how a run was started, not what it trained: never a difference worth a column.
NOT_SETTINGS = {"preset", "config", "system.work_dir", "system.overwrite", "trainer.resume", "data.cache_dir"}
PROC_LOCKS = Path("/proc/locks")  # Linux: every file lock held now, by device and inode


@dataclass
class RunSummary:
    """What `gptlab runs` shows of one run directory (None: not known yet, e.g. before the first checkpoint)."""

    name: str
    path: str
    status: str  # live (a process holds the run's lock), finished (steps done = planned), or stopped
    steps: int | None = None  # the last step logged in metrics.jsonl (or checkpointed)
    max_iters: int | None = None
    params: int | None = None
    kv_bytes_per_token: int | None = None  # per cached position, fp32
    kv_cache_bytes: int | None = None  # one sequence at the training context (a window caches only its positions)
    context: int | None = None  # block_size
    best_val_loss: float | None = None
    best_iter: int | None = None
    final_val_loss: float | None = None
    final_iter: int | None = None
    val_loss_batches: int | None = None  # each val loss is a mean over this many batches (trainer.eval_iters)
    tokens_per_s: float | None = None  # median of the logged windows (the first includes warm-up)
    settings: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# Finding runs
# --------------------------------------------------------------------------------------------------------


def is_run(path: Path) -> bool:
    """A run directory: written by gptlab train (metrics.jsonl, or a last/ or best/ checkpoint)."""
    if (path / "metrics.jsonl").is_file():
        return True
    return any((ckpt.published(path / name) / ckpt.CONFIG_NAME).is_file() for name in ("last", "best"))


def _runs_inside(folder: Path) -> list[Path]:
    children = sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p))
    if not children and (folder / "runs").is_dir():  # a compare OUT: its runs live in OUT/runs
        children = sorted(p for p in (folder / "runs").iterdir() if p.is_dir() and is_run(p))
    return children


def expand_runs(patterns: list[str]) -> list[Path]:
    """Run directories named by `patterns`: run directories, globs, and folders holding runs (each run inside).
    UsageError for a pattern that names no run."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        runs: list[Path] = []
        for match in map(Path, matches):
            if match.is_dir():
                runs += [match] if is_run(match) else _runs_inside(match)
        if not runs:
            what = "matches nothing" if not matches else "holds no run (no metrics.jsonl, last/ or best/)"
            if matches == [pattern] and not Path(pattern).exists():
                what = "does not exist"
            raise UsageError(f"{pattern} {what}; pass run directories written by gptlab train, or a folder of them")
        found += [r for r in runs if r not in found]
    return found


# --------------------------------------------------------------------------------------------------------
# Live or not
# --------------------------------------------------------------------------------------------------------


def _lock_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_is_live(run_dir: str | Path) -> bool:
    """Whether a process holds the run's lock (RunLock: flock on RUN/.lock) now, found without touching it.

    Probing the lock (checkpoint.lock_held) takes it for an instant, and a trainer starting in that instant
    would fail ("another gptlab process is training"), so this only reads: Linux lists every flock in
    /proc/locks by device and inode. Elsewhere (no /proc), the PID the holder wrote into the lock file is
    checked for a live process; a PID reused after a crash could then read as live.
    """
    lock = Path(run_dir) / ".lock"
    try:
        st = lock.stat()
    except OSError:
        return False  # never trained here (or copied without its lock file): nothing holds it
    pid = _lock_pid(lock)
    try:
        table = PROC_LOCKS.read_text()
    except OSError:
        table = None
    if table is not None:
        for line in table.splitlines():
            fields = line.split()
            if "FLOCK" not in fields or "->" in fields:  # "->" marks a waiter, not a holder
                continue
            i = fields.index("FLOCK")
            try:
                holder, (major, minor, inode) = int(fields[i + 3]), fields[i + 4].split(":")
                same_dev = (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev))
            except (IndexError, ValueError):
                continue
            # An overlay file system may report another device for the file than for its lock: the PID decides.
            if int(inode) == st.st_ino and (same_dev or holder == pid):
                return True
        return False
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# --------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------


def _read_metrics(run: Path) -> list[dict[str, Any]]:
    from .train import read_metrics

    return read_metrics(run)


def _checkpoint_files(run: Path) -> tuple[Any, dict[str, Any]]:
    """(GPTConfig or None, state.json or {}) of the run's newest checkpoint (last/, else best/)."""
    for name in ("last", "best"):
        try:
            config, directory = ckpt.model_config(run, prefer=(name,), hub=False)
        except (OSError, ValueError):  # none here, or caught between a publish's renames: try the other
            continue
        try:
            state = json.loads((directory / ckpt.STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a model directory without training state
            state = {}
        return config, state if isinstance(state, dict) else {}
    return None, {}


def summarize(run_dir: str | Path) -> RunSummary:
    """The numbers `gptlab runs` shows for one run directory, read from its files."""
    from .info import model_stats

    run = Path(run_dir)
    config, state = _checkpoint_files(run)
    train_config = state.get("train_config") or {}
    rows = _read_metrics(run)
    s = RunSummary(name=run.name or str(run), path=str(run), status="stopped")

    evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r and "iter" in r]
    if evals:
        s.final_iter, s.final_val_loss = evals[-1]
        s.best_iter, s.best_val_loss = min(evals, key=lambda e: e[1])
    rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    s.tokens_per_s = statistics.median(rates) if rates else None
    steps = [r["iter"] for r in rows if "iter" in r] + ([state["iter"]] if "iter" in state else [])
    s.steps = max(steps) if steps else None
    s.max_iters = train_config.get("trainer.max_iters")
    s.val_loss_batches = train_config.get("trainer.eval_iters")

    if config is not None:
        stats = model_stats(config)
        s.params, s.context = stats.total_params, config.block_size
        s.kv_bytes_per_token, s.kv_cache_bytes = stats.kv_bytes_per_token, stats.kv_cache_bytes
        s.settings = {f"model.{k}": v for k, v in config.to_dict().items()}  # resolved: presets applied
    s.settings.update({k: v for k, v in train_config.items() if not k.startswith("model.") and k not in NOT_SETTINGS})

    if run_is_live(run):
        s.status = "live"
    elif s.steps is not None and s.max_iters is not None and s.steps >= s.max_iters:
        s.status = "finished"
    return s


def summarize_all(run_dirs: list[Path]) -> list[RunSummary]:
    """summarize() of each run; runs of one name in different folders are named by their paths instead."""
    summaries = [summarize(run) for run in run_dirs]
    names = [s.name for s in summaries]
    for s in summaries:
        if names.count(s.name) > 1:
            s.name = s.path
    return summaries


def differing_settings(summaries: list[RunSummary]) -> list[str]:
    """Settings whose values are not the same in every run (a setting one run lacks counts as differing)."""
    keys: list[str] = []
    for s in summaries:
        keys += [k for k in s.settings if k not in keys]
    missing = object()
    return [k for k in keys if len({json.dumps(s.settings.get(k, missing), default=str) for s in summaries}) > 1]


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------


def loss_note(summaries: list[RunSummary]) -> str:
    """What the val losses are: training's estimates, over how many batches."""
    batches = sorted({s.val_loss_batches for s in summaries if s.val_loss_batches is not None})
    over = "/".join(map(str, batches)) if batches else "trainer.eval_iters"
    return (f"val losses: training's {over}-batch estimates of the val split "
            "(gptlab eval RUN measures the whole split)")


def _short_names(keys: list[str]) -> dict[str, str]:
    """A column title per setting: its last part (n_kv_head) where that is unique, else the dotted key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last, strict=True)}


def _fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _fmt_count(n: int | None) -> str:
    from .info import fmt_count

    return "-" if n is None else fmt_count(n)


def _fmt_bytes(n: int | None) -> str:
    from .info import fmt_bytes

    return "-" if n is None else fmt_bytes(n)


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def _fmt_loss(loss: float | None, step: int | None) -> str:
    return "-" if loss is None else f"{loss:.4f} @{step}"


def format_table(summaries: list[RunSummary]) -> str:
    """The aligned text table (and a note on what the losses are)."""
    keys = differing_settings(summaries)
    titles = _short_names(keys)
    header = ["run", *(titles[k] for k in keys), "params", "KV/token", "KV@ctx", "best val", "final val",
              "tok/s", "steps", "status"]
    body = []
    for s in summaries:
        steps = f"{_fmt_value(s.steps)}/{_fmt_value(s.max_iters)}"
        body.append([s.name, *(_fmt_value(s.settings.get(k)) for k in keys), _fmt_count(s.params),
                     _fmt_bytes(s.kv_bytes_per_token), _fmt_bytes(s.kv_cache_bytes),
                     _fmt_loss(s.best_val_loss, s.best_iter), _fmt_loss(s.final_val_loss, s.final_iter),
                     _fmt_rate(s.tokens_per_s), steps, s.status])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    n_left = 1 + len(keys)  # names and settings left-aligned, numbers right-aligned

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    notes = [loss_note(summaries),
             "KV/token: fp32 cache bytes per cached token; KV@ctx: for one sequence at the training context (a window "
             "caches only its last positions)", "tok/s: median of the logged windows; steps: done/planned"]
    return "\n".join([line(header), *map(line, body), "", *notes])


def _flat_row(s: RunSummary, keys: list[str]) -> dict[str, Any]:
    row = {k: v for k, v in asdict(s).items() if k != "settings"}
    row.update({k: s.settings.get(k) for k in keys})
    return row


def format_csv(summaries: list[RunSummary]) -> str:
    """CSV: one row per run, the numbers then the settings that differ (one column each)."""
    keys = differing_settings(summaries)
    rows = [_flat_row(s, keys) for s in summaries]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def format_json(summaries: list[RunSummary]) -> str:
    """JSON: {"runs": [every field, every setting], "differing_settings": [...], "loss_note": "..."}."""
    return json.dumps({"runs": [asdict(s) for s in summaries], "differing_settings": differing_settings(summaries),
                       "loss_note": loss_note(summaries)}, indent=1)


def legend_label(run_dir: str | Path, name: str | None = None) -> str:
    """A plot legend's name for a run with its numbers: 'rope (final val 1.8234, 20-batch est.; 11.2k tok/s)'."""
    s = summarize(run_dir)
    parts = []
    if s.final_val_loss is not None:
        est = f"{s.val_loss_batches}-batch est." if s.val_loss_batches else "estimate"
        parts.append(f"final val {s.final_val_loss:.4f}, {est}")
    if s.tokens_per_s is not None:
        parts.append(f"{_fmt_rate(s.tokens_per_s)} tok/s")
    if s.status == "live":
        parts.append("live")
    name = s.name if name is None else name
    return f"{name} ({'; '.join(parts)})" if parts else name


# --------------------------------------------------------------------------------------------------------
# gptlab runs
# --------------------------------------------------------------------------------------------------------


@dataclass
class RunsConfig:
    csv: bool = False  # print CSV: one row per run, every number and each setting that differs
    json: bool = False  # print JSON: every number and every setting of every run


HELP = """\
usage: gptlab runs RUN_OR_FOLDER_OR_GLOB [...] [--csv | --json]

One table of run directories, finished or still training: the settings that differ between them,
parameters, KV cache bytes, best and final val loss (training's estimates), tokens/s, steps done of
planned, live or finished. A folder holding runs (a compare OUT, OUT/runs) stands for every run in it;
quote a glob ('out/*') and gptlab expands it.
"""


def main(argv: list[str]) -> int:
    """`gptlab runs DIR_OR_GLOB [...] [--csv | --json]`."""
    from .cli import _parse

    parsed = _parse(RunsConfig, argv, {}, HELP)
    if parsed is None:
        return 0
    cfg, patterns = parsed
    if not patterns:
        raise UsageError("pass run directories, a folder of runs or a glob: gptlab runs out/a out/b, or 'out/*'")
    if cfg.csv and cfg.json:
        raise UsageError("--csv and --json: pick one")
    summaries = summarize_all(expand_runs(patterns))
    if cfg.csv:
        print(format_csv(summaries), end="")
    elif cfg.json:
        print(format_json(summaries))
    else:
        print(format_table(summaries))
    return 0


__all__ = [
    "RunSummary", "differing_settings", "expand_runs", "legend_label", "main", "run_is_live", "summarize",
    "summarize_all",
]
