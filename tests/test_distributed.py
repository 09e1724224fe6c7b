"""DDP and FSDP2 through torchrun on CPU (gloo), 2 processes: the same run as one process, resumable across."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# ---- From a mutation-testing pass: the pieces every rank relies on, without torchrun.


def test_ranks_take_disjoint_rows_of_the_same_global_batch() -> None:
    from gptlab.data import TokenData
    from gptlab.tokenizer import CharTokenizer

    ramp = TokenData(train=np.arange(1000, dtype=np.uint16), val=np.arange(50, dtype=np.uint16),
                     tokenizer=CharTokenizer("ab"), path=Path("ramp"))  # token i == i: rows are identifiable

    def rows(world_size: int, rank: int) -> list[int]:
        batches = T.Batches(ramp, 8, 16, distributed.DistInfo(rank=rank, world_size=world_size))
        x, y = batches.get("train", torch.Generator().manual_seed(3))
        assert torch.equal(y, x + 1)
        return x[:, 0].tolist()

    whole = rows(1, 0)
    assert len(whole) == 8 and rows(2, 0) + rows(2, 1) == whole
    assert rows(4, 0) + rows(4, 1) + rows(4, 2) + rows(4, 3) == whole


def _collectives(rank: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cpu = torch.device("cpu")
        result = {
            "mean": distributed.all_reduce_mean(torch.tensor(float(rank + 1))).item(),
            "any": distributed.any_rank(rank == 1, cpu),  # a signal that reached rank 1 only stops both
            "none": distributed.any_rank(False, cpu),
            "gather": distributed.gather_objects(f"state of rank {rank}"),
        }
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_collectives_across_two_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_collectives, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result == {"mean": 1.5, "any": True, "none": False,
                          "gather": ["state of rank 0", "state of rank 1"]}, rank


def _ddp_runs(rank: int, root: str, common: list[str]) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    runs = [("straight", 4, False), ("resumed", 2, False), ("resumed", 4, True)]
    for i, (work, iters, resume) in enumerate(runs):
        # A fresh group for each run (train() tears its group down at the end), as torchrun would give.
        torch.distributed.init_process_group("gloo", init_method=f"file://{root}/init{i}", rank=rank, world_size=2)
        assert T.main([*common, f"--system.work_dir={root}/{work}", f"--trainer.max_iters={iters}",
                       f"--trainer.resume={resume}"]) == 0


def test_ddp_with_dropout_resumes_bit_identically(setup: dict, tmp_path: Path) -> None:
    """Each rank has its own dropout stream, checkpointed per rank and restored to the same rank."""
    import torch.multiprocessing as mp

    common = [*setup["common"], "--model.dropout=0.2", "--trainer.eval_interval=2", "--trainer.eval_iters=1",
              "--trainer.lr_decay_iters=4"]
    mp.start_processes(_ddp_runs, args=(str(tmp_path), common), nprocs=2, start_method="spawn")
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert len(straight) == 4 and resumed == straight  # exact
    streams = load_checkpoint(tmp_path / "straight" / "last").state["rng"]["torch"]
    assert len(streams) == 2 and streams[0] != streams[1]  # not one dropout mask shared by both ranks


def test_ddp_balances_the_choice_bias_as_one_process(setup: dict, tmp_path: Path) -> None:
    # DeepSeek-V3's router with its loss-free balancing: each rank counts the routing of its rows, the counts are
    # averaged over the ranks, and every rank's bias moves as one process's over the whole batch; so do the losses.
    # (No aux loss: computed per rank over half the batch, it is not the single process's.)
    router = ["--model.n_expert=8", "--model.expert_top_k=2", "--model.moe_score=sigmoid", "--model.moe_groups=4",
              "--model.moe_topk_groups=2", "--model.moe_choice_bias=True", "--trainer.moe_bias_update=0.001",
              "--trainer.moe_aux_coef=0", "--trainer.max_iters=6"]
    args = [*setup["common"], *router]
    assert T.main([*args, f"--system.work_dir={tmp_path / 'single'}"]) == 0
    out = torchrun(["train", *args, f"--system.work_dir={tmp_path / 'ddp'}"], setup["root"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    biases = [[b.mlp.choice_bias for b in GPT.from_pretrained(tmp_path / d / "last").transformer.h]
              for d in ("single", "ddp")]
    assert all(torch.equal(a, b) for a, b in zip(*biases, strict=True))
    assert any(b.abs().sum().item() > 0 for b in biases[0])
