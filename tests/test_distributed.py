"""DDP and FSDP2 through torchrun on CPU (gloo), 2 processes: the same run as one process, resumable across."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab import distributed
from gptlab import train as T
from gptlab.checkpoint import load_checkpoint
from gptlab.data import shakespeare_text
from gptlab.model import GPT
from gptlab.options import UsageError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dist")
    text = root / "input.txt"
    text.write_text(shakespeare_text()[:30_000], encoding="utf-8")
    common = [
        "--preset=tiny", f"--data.path={text}", f"--data.cache_dir={root / 'cache'}", "--trainer.device=cpu",
        "--trainer.log_interval=1", "--trainer.eval_interval=5", "--trainer.sample_tokens=0",
        "--trainer.lr_decay_iters=10", "--trainer.batch_size=8",
    ]
    # The reference: one process, 10 steps.
    assert T.main([*common, "--trainer.max_iters=10", f"--system.work_dir={root / 'single'}"]) == 0
    return {"root": root, "common": common, "single": losses(root / "single")}


def losses(work_dir: Path) -> list[float]:
    return [r["loss"] for r in T.read_metrics(work_dir) if "loss" in r]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_ddp_reproduces_the_single_process_run(setup: dict) -> None:
    root = setup["root"]
    out = torchrun(["train", *setup["common"], "--trainer.max_iters=10", f"--system.work_dir={root / 'ddp'}"], root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done:") == 1 and out.stdout.count("training ") == 1  # rank 0 prints, alone
    assert "2 x cpu (ddp)" in out.stdout
    assert losses(root / "ddp") == pytest.approx(setup["single"], abs=1e-5)
    assert len(setup["single"]) == 10


def test_fsdp_trains_resumes_and_loads_in_one_process(setup: dict) -> None:
    root, work = setup["root"], setup["root"] / "fsdp"
    fsdp = ["train", *setup["common"], "--trainer.strategy=fsdp", f"--system.work_dir={work}"]
    out = torchrun([*fsdp, "--trainer.max_iters=5"], root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 x cpu (fsdp)" in out.stdout
    out = torchrun([*fsdp, "--trainer.max_iters=8", "--trainer.resume=True"], root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert losses(work) == pytest.approx(setup["single"][:8], abs=1e-5)

    # The sharded run's checkpoint is a full state dict: a single process loads it and goes on.
    model = GPT.from_pretrained(work / "last")
    assert model.num_params() > 0
    resume = ["--trainer.max_iters=10", "--trainer.resume=True", f"--system.work_dir={work}"]
    assert T.main([*setup["common"], *resume]) == 0
    assert losses(work) == pytest.approx(setup["single"], abs=1e-5)
    assert load_checkpoint(work / "last").state["iter"] == 10


def test_world_size_must_divide_the_batch(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process stand-in for a 3-process run: the check happens before any collective.
    monkeypatch.setattr(distributed, "setup", lambda device: distributed.DistInfo(world_size=3))
    root = setup["root"]
    with pytest.raises(UsageError, match=r"batch_size=8 must be divisible by grad_accum \(1\) x processes \(3\)"):
        T.main([*setup["common"], f"--system.work_dir={root / 'bad'}"])


def test_resolve_device() -> None:
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            distributed.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        distributed.resolve_device("tpu9")
