"""The run directory of `gptlab train`: who may write it, what it holds, and the RNG states that make resume exact.

    work_dir/
      .lock            held by the process that trains here (rank 0): one run per directory
      last/, best/     checkpoints (gptlab.checkpoint): the latest, and the one with the best val loss
      metrics.jsonl    a JSON line per log interval ({"iter", "loss", "lr", ...}) and per eval ({"val_loss", ...})
      loss.png         the loss curves, redrawn at every eval
      tokenizer.json   the run's tokenizer (each checkpoint has a copy too)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import distributed
from .options import UsageError

# Everything a run writes: --system.overwrite deletes these and nothing else (work_dir may hold other things).
RUN_FILES = (
    "last", "last.old", "last.new", "best", "best.old", "best.new", "metrics.jsonl", "loss.png", "tokenizer.json"
)


def nothing_to_resume(work_dir: Path) -> UsageError:
    """The error of --trainer.resume in a directory without a last/ checkpoint."""
    # A run that stopped before its first checkpoint (diverged, killed early) left metrics but no last/.
    started = (work_dir / "metrics.jsonl").exists()
    return UsageError(f"nothing to resume: {work_dir} has no last/ checkpoint; " + (
        "start it over with --system.overwrite=True instead of --trainer.resume" if started else
        "drop --trainer.resume"))


@contextlib.contextmanager
def claim(work_dir: Path, is_main: bool, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold work_dir while a run trains in it (rank 0 owns it): create it, lock it, repair what a kill left, and
    refuse a new run over an old one unless asked to overwrite it. On exit: unlock, and remove the directory again
    if this run created it and was refused before it wrote anything."""
    if not is_main:
        yield
        return
    created = not work_dir.exists()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--system.work_dir={work_dir}: cannot create it ({e.strerror}); pick another") from None
    lock = ckpt.RunLock(work_dir).acquire()  # one run per directory
    try:
        ckpt.recover(work_dir / "last")  # we hold the run's lock: repair what a kill left
        ckpt.recover(work_dir / "best")
        if resume and not (work_dir / "last").is_dir():
            raise nothing_to_resume(work_dir)
        has_run = any((work_dir / name).exists() for name in ("last", "best", "metrics.jsonl"))
        if not resume and has_run and not overwrite:
            raise UsageError(
                f"{work_dir} already holds a run; continue it with --trainer.resume=True, start over with "
                "--system.overwrite=True, or pick another --system.work_dir"
            )
        yield
    finally:
        lock.release()
        if created and [p.name for p in work_dir.iterdir()] == [lock.path.name]:
            shutil.rmtree(work_dir)  # a run refused before it wrote anything leaves no empty folder behind


def clear_old_run(work_dir: Path) -> None:
    """--system.overwrite: delete the old run, once the new one's data, model and tokenizer have been checked
    (a typo in a flag must not cost the old run)."""
    for name in RUN_FILES:
        path = work_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ----------------------------------------------------------------------------------------------- metrics.jsonl


def read_metrics(work_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of work_dir/metrics.jsonl (a torn last line from a kill is skipped)."""
    path = Path(work_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


def append_metrics(work_dir: Path, row: dict[str, Any]) -> None:
    """One line more in work_dir/metrics.jsonl."""
    with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def write_metrics(work_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Replace work_dir/metrics.jsonl by `rows` (on resume: forget what was logged after the checkpoint)."""
    tmp = work_dir / ".metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, work_dir / "metrics.jsonl")  # a kill now leaves the old file or the new one


def plot_losses(run_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> Path:
    """One PNG with the training loss and the eval train/val losses of each run directory."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: matplotlib is slow to import
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, run in enumerate(run_dirs):
        rows = read_metrics(run)
        label = labels[i] if labels else (Path(run).name if len(run_dirs) > 1 else "")
        prefix = f"{label} " if label else ""
        color = f"C{i % 10}"
        steps = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
        evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
        if steps:
            ax.plot(*zip(*steps, strict=True), color=color, alpha=0.35, linewidth=1, label=f"{prefix}train")
        if evals:
            ax.plot(*zip(*evals, strict=True), color=color, marker="o", markersize=3, label=f"{prefix}val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, out)  # a reader never sees half a PNG
    return out


# ----------------------------------------------------------------------------------------------- RNG states
# One generator draws the batch order (the same on all ranks); torch's global RNG draws dropout (one stream per
# rank). A checkpoint carries both, so a resumed run draws what the uninterrupted one would have.


def rng_states(batch_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The RNG states for a checkpoint, gathered from every rank (a collective: all ranks call it)."""
    return {
        "batches": ckpt.rng_state_to_json(batch_gen.get_state()),
        "torch": distributed.gather_objects(ckpt.rng_state_to_json(torch.get_rng_state())),
        "cuda": distributed.gather_objects(ckpt.rng_state_to_json(torch.cuda.get_rng_state(device)))
        if device.type == "cuda" else [],
    }


def restore_rng(rng: dict[str, Any], batch_gen: torch.Generator, info: distributed.DistInfo, seed: int,
                step: int) -> None:
    """Continue the RNG streams saved by rng_states (fresh dropout streams if the number of processes changed)."""
    batch_gen.set_state(ckpt.rng_state_from_json(rng["batches"]))
    per_rank = rng["torch"]
    cuda_states = rng.get("cuda") or []
    if len(per_rank) == info.world_size:  # the same processes: each continues its own dropout stream
        torch.set_rng_state(ckpt.rng_state_from_json(per_rank[info.rank]))
        if info.device.type == "cuda" and len(cuda_states) == info.world_size:
            torch.cuda.set_rng_state(ckpt.rng_state_from_json(cuda_states[info.rank]), info.device)
    else:  # a different number of processes: fresh, distinct streams (reusing saved ones would repeat)
        torch.manual_seed(seed + info.rank + 1_000_003 * step)
