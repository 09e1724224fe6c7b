"""Live experiment tracking: TensorBoard and Weights & Biases mirror what a run writes to metrics.jsonl.

`--trainer.log_to=tensorboard,wandb` (either or both). metrics.jsonl stays the source of truth; a tracker gets
the same rows (every number in a row becomes a scalar at the row's `iter`), the run's settings as
hyperparameters, and the samples as text. Each is an optional extra (`pip install 'gptlab[tensorboard]'`,
`'gptlab[wandb]'`), imported only when asked for.

- TensorBoard writes `RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`). A resumed run purges the events
  logged after its checkpoint, as metrics.jsonl forgets them.
- W&B logs online when you are logged in (WANDB_API_KEY or `wandb login`; WANDB_MODE overrides), otherwise
  offline into `RUN/wandb/` (upload it
  later with `wandb sync`); a resumed run continues the same W&B run (its id is kept in `RUN/wandb_id.txt`).
  W&B's steps only go forward: rows a killed run logged after its last checkpoint keep their first values there.
"""

from __future__ import annotations

import html
import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("tensorboard", "wandb")


class Tracker(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...
    def text(self, step: int, tag: str, text: str) -> None: ...
    def close(self) -> None: ...


def parse_log_to(value: str | None) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; ValueError naming the choices for anything else."""
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"--trainer.log_to: unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}")
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"--trainer.log_to={name} needs the {name} package: pip install 'gptlab[{name}]'")
    return names


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl row, without its step."""
    return {k: float(v) for k, v in row.items()
            if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker:
    """torch.utils.tensorboard's SummaryWriter on RUN/tensorboard."""

    def __init__(self, run_dir: Path, settings: dict[str, Any], start_iter: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events after the checkpoint's iteration were logged by the interrupted process after its last
        # checkpoint, and metrics.jsonl forgot them too; the resumed run logs them again.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_iter + 1 if start_iter else None)
        if not start_iter:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings.items()}
            self.writer.add_hparams(hparams, {}, run_name=".")

    def log(self, row: dict[str, Any]) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, row["iter"])
        self.writer.flush()  # live: TensorBoard shows each row as it is written

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, f"<pre>{html.escape(text)}</pre>", step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in RUN/wandb: online when logged in (or WANDB_MODE says so), offline otherwise."""

    def __init__(self, run_dir: Path, settings: dict[str, Any], start_iter: int) -> None:
        import wandb

        self.wandb = wandb
        id_file = run_dir / "wandb_id.txt"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12] + "\n", encoding="utf-8")
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "gptlab"), name=run_dir.name, dir=str(run_dir),
            id=id_file.read_text(encoding="utf-8").strip(), resume="allow", config=settings, mode=mode,
        )

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(scalars(row), step=row["iter"])

    def text(self, step: int, tag: str, text: str) -> None:
        self.run.log({tag: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_logged_in() -> bool:
    """Whether W&B has credentials (WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc), without asking it:
    its own check may prompt or go to the network."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())


def open_trackers(names: list[str], run_dir: Path, settings: dict[str, Any], start_iter: int) -> list[Tracker]:
    """One tracker per name, for the run in run_dir resuming at start_iter (0 for a new run)."""
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    return [kinds[name](run_dir, settings, start_iter) for name in names]
