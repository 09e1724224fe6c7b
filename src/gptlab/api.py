"""The Python API: `from gptlab import train, compare`, so a notebook can drive a study.

    from gptlab import compare, train

    run = train(preset="tiny", trainer={"max_iters": 20}, system={"work_dir": "out/api"})
    print(run.val_loss, run.work_dir)            # the last eval's loss; the run directory
    model = run.model()                          # the trained GPT
    study = compare(preset="micro", grid="baseline,gqa", seeds=1, match="params", out="reports/api")
    print(study.report, study.summary["gqa"]["val_loss"])

Each takes the settings its command takes, as keywords (a section as a dict, trainer={"max_iters": 20}, or a
dotted key, **{"trainer.max_iters": 20}), or as the typed settings (TrainConfig, CompareSettings), and goes
through the command line's parser: presets apply as they do there, and a bad setting raises the same UsageError.

`gptlab.train` and `gptlab.compare` are the modules of the two commands, made callable (`callable_module`):
Python binds a package's submodule as its attribute once it is imported, so functions of the same names in
gptlab/__init__.py would be replaced by the modules the first time anything imported them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _flags(settings: dict[str, Any]) -> list[str]:
    """Keyword settings as command-line flags: {"trainer": {"max_iters": 20}} -> ["--trainer.max_iters=20"]."""
    from .options import flatten

    return [f"--{key}={value}" for key, value in flatten(settings).items()]


@dataclass
class TrainResult:
    """What `train` returns: where the run lives and how it ended."""

    work_dir: Path  # the run directory: checkpoints (last/), metrics.jsonl, loss.png
    iters: int  # optimizer steps done
    val_loss: float | None  # the last eval's val loss (an estimate over trainer.eval_iters batches)
    best_val_loss: float | None
    metrics: list[dict[str, Any]]  # metrics.jsonl's rows

    def model(self) -> Any:
        """The trained model (a GPT, in eval mode) from the run's last checkpoint."""
        from .model import GPT

        return GPT.from_pretrained(self.work_dir / "last").eval()


def train(settings: Any = None, /, **kwargs: Any) -> TrainResult:
    """Train as `gptlab train` does, with its settings as keywords (or a TrainConfig, taken as it is, with
    keywords over it); returns the run's directory and losses. Raises UsageError for a bad setting and
    RuntimeError when training fails (a diverged loss)."""
    from .options import flatten
    from .rundir import read_metrics
    from .train import train as run_training
    from .train_config import TrainConfig, parse_train_args, resume_config

    flags = _flags(kwargs)
    if settings is not None and not isinstance(settings, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig or keyword settings, got {type(settings).__name__}")
    base = None if settings is None else flatten(dataclasses.asdict(settings))
    cfg = parse_train_args(flags, base=base)
    if cfg.trainer.resume:
        cfg = resume_config(flags, Path(cfg.system.work_dir))
    code = run_training(cfg)
    work_dir = Path(cfg.system.work_dir)
    if code != 0:
        raise RuntimeError(f"training in {work_dir} failed (exit code {code}); its log says why")
    rows = read_metrics(work_dir)
    losses = [r["val_loss"] for r in rows if "val_loss" in r]
    state = json.loads((work_dir / "last" / "state.json").read_text())
    return TrainResult(work_dir=work_dir, iters=state["iter"], val_loss=losses[-1] if losses else None,
                       best_val_loss=min(losses) if losses else None, metrics=rows)


@dataclass
class CompareResult:
    """What `compare` returns: the report and the numbers in it (results.json)."""

    report: Path  # OUT/report.md
    results: dict[str, Any]  # OUT/results.json: meta, summary, uptrain, speeds, runs

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        """Per variant: sizes, val_loss (mean, std), paired_delta vs the baseline, speeds."""
        return self.results["summary"]


def compare(settings: Any = None, /, **kwargs: Any) -> CompareResult:
    """Run `gptlab compare` with its settings as keywords (preset, grid, seeds, out, match, uptrain, ...; the runs'
    sections as dicts: trainer={"max_iters": 100}), or a CompareSettings; returns the report and its numbers."""
    from .compare import CompareSettings
    from .compare import main as compare_main

    if settings is not None and not isinstance(settings, CompareSettings):
        raise TypeError(f"compare() takes a CompareSettings or keyword settings, got {type(settings).__name__}")
    default = CompareSettings()
    own = {f.name: getattr(settings, f.name) for f in dataclasses.fields(CompareSettings)} if settings else {}
    own.update(kwargs)
    runs = {k: own.pop(k) for k in ("trainer", "model", "data") if k in own}
    # The settings that differ from the defaults, as the flags a command line would give.
    flags = [f"--{k}={v}" for k, v in own.items() if v != getattr(default, k, object())] + _flags(runs)
    compare_main(flags)
    out = CompareSettings(**{k: v for k, v in own.items() if k in ("preset", "out")}).out_dir
    return CompareResult(report=out / "report.md", results=json.loads((out / "results.json").read_text()))


class _CallableModule(types.ModuleType):
    """A command's module that is also the API's function of the same name."""

    __api_function__: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__api_function__(*args, **kwargs)


def callable_module(name: str, function: Callable[..., Any]) -> None:
    """Make the module `name` callable as `function` (gptlab.train(...) is api.train(...))."""
    module = sys.modules[name]
    module.__api_function__ = function  # type: ignore[attr-defined]
    module.__class__ = _CallableModule
