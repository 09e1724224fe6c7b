"""Pretraining at scale (issue 15): batches read in order through the shards, a token budget, the gpt2-124m preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab import distributed
from gptlab import train as T
from gptlab.batches import Batches, describe_step, grad_accum_for
from gptlab.checkpoint import load_checkpoint
from gptlab.data import DataError, TokenData
from gptlab.options import UsageError
from gptlab.shards import shard_dataset, split_shards, write_shard
from gptlab.tokenizer import CharTokenizer
from gptlab.train_config import parse_train_args

# --------------------------------------------------------------------------------------------------------
# The sequential loader, piece by piece: token i of the train split is i, so every row says where it came from
# --------------------------------------------------------------------------------------------------------


def ramp(n: int = 1000) -> TokenData:
    return TokenData(train=np.arange(n, dtype=np.uint16), val=np.arange(50, dtype=np.uint16),
                     tokenizer=CharTokenizer("ab"), path=Path("ramp"))


def sequential(data, world_size: int, rank: int, micro_batch: int = 4, block: int = 16) -> Batches:
    return Batches(data, micro_batch, block, distributed.DistInfo(rank=rank, world_size=world_size),
                   order="sequential")


def test_each_rank_reads_its_own_block_of_each_step_in_order() -> None:
    data = ramp()
    one = sequential(data, 1, 0)
    ranks = [sequential(data, 2, r) for r in (0, 1)]
    gen = torch.Generator()
    seen: list[int] = []
    for step in range(15):  # 15 steps of 4 x 16 tokens fit in 1000 tokens: one epoch
        x, y = one.next_train(gen)
        assert torch.equal(y, x + 1) and x.shape == (4, 16)
        assert x.flatten().tolist() == list(range(64 * step, 64 * (step + 1)))  # in order, no gap
        parts = [b.next_train(gen) for b in ranks]
        for r, (xr, yr) in enumerate(parts):
            # rank r: the r-th block of B*T+1 tokens of the step (B = 2 rows per rank)
            assert xr.flatten().tolist() == list(range(64 * step + 32 * r, 64 * step + 32 * (r + 1)))
            assert torch.equal(yr, xr + 1)
            seen += xr.flatten().tolist()
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # together: the one-process micro-batch
    assert len(seen) == len(set(seen)) == 960  # no token read twice by the ranks in an epoch
    x, _ = one.next_train(gen)  # 960 + 65 > 1000: the next epoch starts at the beginning
    assert x[0, 0].item() == 0 and one.epoch == 1 and one.position == 64


def test_random_order_still_draws_from_the_generator() -> None:
    batches = Batches(ramp(), 4, 16, distributed.DistInfo())
    a = batches.next_train(torch.Generator().manual_seed(3))
    b = batches.get("train", torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True)) and batches.state() is None


def test_the_position_is_a_shard_and_an_offset_and_survives_a_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, n in enumerate((100, 37, 200)):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", rng.integers(0, 50257, n), 50257)
    write_shard(tmp_path / "fineweb_val_000000.bin", rng.integers(0, 50257, 50), 50257)
    data = shard_dataset(tmp_path)
    whole = np.asarray(data.train).astype(np.int64)
    batches = sequential(data, 1, 0, micro_batch=2, block=8)
    for _ in range(8):
        batches.next_train(torch.Generator())
    assert batches.state() == {"order": "sequential", "epoch": 0, "shard": 1, "offset": 128 - 100,
                               "file": "fineweb_train_000001.bin"}
    again = sequential(data, 1, 0, micro_batch=2, block=8)
    again.load_state(json.loads(json.dumps(batches.state())))
    x, y = again.next_train(torch.Generator())  # crosses from shard 1 into shard 2
    assert x.flatten().tolist() == whole[128:144].tolist() and y.flatten().tolist() == whole[129:145].tolist()
    (tmp_path / "fineweb_train_000001.bin").rename(tmp_path / "fineweb_train_000001b.bin")
    with pytest.raises(DataError, match="was reading train shard fineweb_train_000001.bin"):
        sequential(shard_dataset(tmp_path), 1, 0).load_state(batches.state())
    with pytest.raises(DataError, match="reads 64 x 16 \\+ 1 = 1,025 train tokens"):
        sequential(data, 1, 0, micro_batch=64).check()


# --------------------------------------------------------------------------------------------------------
# Training in order resumes to the bit, alone and under 2-process DDP
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gptlab.data import shakespeare_text
    from gptlab.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("seq")
    (root / "corpus.txt").write_text(shakespeare_text()[:6_000], encoding="utf-8")
    prepare(str(root / "corpus.txt"), root / "shards", PrepareConfig(shard_tokens=500, workers=1, progress=False))
    assert len(split_shards(root / "shards")["train"]) >= 2
    return root / "shards"


def run_flags(shards: Path, work: Path, iters: int, resume: bool = False, *extra: str) -> list[str]:
    return ["--preset=tiny", f"--data.shards={shards}", "--data.order=sequential", f"--system.work_dir={work}",
            "--trainer.device=cpu", "--trainer.sample_tokens=0", f"--trainer.max_iters={iters}",
            "--trainer.lr_decay_iters=10", "--trainer.log_interval=1", "--trainer.eval_interval=100",
            "--trainer.eval_iters=1", f"--trainer.resume={resume}", *extra]


def losses(work: Path) -> list[float]:
    return [r["loss"] for r in T.read_metrics(work) if "loss" in r]


def test_training_in_order_resumes_bit_exact_across_an_epoch(shards: Path, tmp_path: Path, capsys) -> None:
    train = shard_dataset(shards).train
    n_train = len(train)
    steps_per_epoch = (n_train - 1) // 256  # 8 rows x 32 tokens a step
    iters = steps_per_epoch + 2  # the run wraps around into a second epoch
    assert T.main(run_flags(shards, tmp_path / "straight", iters)) == 0
    assert "batches in order, each process its own block" in capsys.readouterr().out
    assert T.main(run_flags(shards, tmp_path / "resumed", 3)) == 0
    assert T.main(run_flags(shards, tmp_path / "resumed", iters, True)) == 0
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight") and len(losses(tmp_path / "straight")) == iters
    position = load_checkpoint(tmp_path / "straight" / "last").state["data_position"]
    assert position["epoch"] == 1 and train.starts[position["shard"]] + position["offset"] == 2 * 256
    # and it is not the random order: the same run drawing at random trains on other batches
    flags = [f for f in run_flags(shards, tmp_path / "random", 3) if f != "--data.order=sequential"]
    assert T.main(flags) == 0 and losses(tmp_path / "random") != losses(tmp_path / "straight")[:3]
    with pytest.raises(UsageError, match="--data.order=random differs from the run being resumed"):
        T.main(run_flags(shards, tmp_path / "resumed", iters + 1, True, "--data.order=random"))


def _ddp_runs(rank: int, root: str, shards: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    runs = [("straight", 5, False), ("resumed", 3, False), ("resumed", 5, True)]
    for i, (work, iters, resume) in enumerate(runs):
        torch.distributed.init_process_group("gloo", init_method=f"file://{root}/init{i}", rank=rank, world_size=2)
        flags = run_flags(Path(shards), Path(root) / work, iters, resume, f"--trainer.hellaswag={root}/hs.jsonl")
        assert T.main(flags) == 0


def test_ddp_in_order_resumes_bit_exact_and_equals_one_process(shards: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    items = [{"ctx": f"Item {i}: the cat sat on the", "endings": ["mat.", "moon.", "idea of it.", "sofa"],
              "label": i % 4} for i in range(7)]  # 7: the ranks score 4 and 3 of them
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    mp.start_processes(_ddp_runs, args=(str(tmp_path), str(shards)), nprocs=2, start_method="spawn")
    straight = losses(tmp_path / "straight")
    assert len(straight) == 5 and losses(tmp_path / "resumed") == straight  # exact
    # The two ranks' blocks make up one process's micro-batch: one process trains on the same tokens.
    assert T.main(run_flags(shards, tmp_path / "one", 5, False, f"--trainer.hellaswag={tmp_path}/hs.jsonl")) == 0
    assert straight == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    hella = {name: [(r["hellaswag_acc"], r["hellaswag_acc_norm"]) for r in T.read_metrics(tmp_path / name)
                    if "hellaswag_acc" in r] for name in ("straight", "one")}
    assert len(hella["one"]) == 2 and hella["straight"] == hella["one"]  # the ranks' counts summed
    state = load_checkpoint(tmp_path / "straight" / "last").state
    assert state["world_size"] == 2
    assert state["data_position"] == load_checkpoint(tmp_path / "one" / "last").state["data_position"]


# --------------------------------------------------------------------------------------------------------
# A token budget, accumulation from the micro-batch, the gpt2-124m preset, MFU
# --------------------------------------------------------------------------------------------------------


def test_max_tokens_and_micro_batch_decide_unless_a_later_layer_gives_max_iters_or_grad_accum() -> None:
    preset = parse_train_args(["--preset=gpt2-124m"])
    t = preset.trainer
    assert (t.max_tokens, t.batch_size, t.micro_batch_size, t.learning_rate, t.warmup_iters) == (10**10, 512, 64, 6e-4,
                                                                                                  700)
    assert (t.min_lr, t.weight_decay, t.beta2, t.compile, preset.data.order) == (6e-5, 0.1, 0.95, True, "sequential")
    assert grad_accum_for(t, 1) == 8 and grad_accum_for(t, 8) == 1  # 524,288 tokens a step on 1 GPU or 8
    t.grad_accum, t.max_iters = 8, 19_073
    assert describe_step(t, 1024, 1, "sequential") == (
        "tokens per step: 524,288 = 64 rows x 1024 tokens x 8 accumulation x 1 process, 19,073 steps for "
        "--trainer.max_tokens=10,000,000,000; batches in order, each process its own block")
    t.grad_accum = 1
    assert "= 64 rows x 1024 tokens x 1 accumulation x 8 processes, " in describe_step(t, 1024, 8, "sequential")
    with pytest.raises(UsageError, match=r"batch_size=512 must be a multiple of --trainer.micro_batch_size=64 x "
                                         r"processes \(3\) = 192"):
        grad_accum_for(t, 3)
    later = parse_train_args(["--preset=gpt2-124m", "--trainer.max_iters=5", "--trainer.grad_accum=4"]).trainer
    assert (later.max_tokens, later.max_iters, later.micro_batch_size, later.grad_accum) == (None, 5, None, 4)
    both = parse_train_args(["--trainer.max_iters=5", "--trainer.max_tokens=100", "--trainer.grad_accum=2",
                             "--trainer.micro_batch_size=4"]).trainer  # in one place: the budget and the rows decide
    assert (both.max_iters, both.max_tokens, both.grad_accum, both.micro_batch_size) == (5, 100, 2, 4)
    assert grad_accum_for(both, 2) == 2 and grad_accum_for(both, 1) == 4
    with pytest.raises(UsageError, match="--trainer.max_tokens must be >= 1"):
        parse_train_args(["--trainer.max_tokens=0"])


def test_gpt2_124m_preset_at_tiny_scale_with_a_token_budget_and_mfu(shards: Path, tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from gptlab import hardware

    monkeypatch.setattr(hardware, "training_peak_flops", lambda device, bf16: 1e9)  # as on a known GPU
    tiny = ["--preset=gpt2-124m", "--model.preset=tiny", "--model.block_size=32", f"--data.shards={shards}",
            "--trainer.batch_size=8", "--trainer.micro_batch_size=2", "--trainer.max_tokens=800",
            "--trainer.compile=False", "--trainer.warmup_iters=1", "--trainer.eval_iters=1", "--trainer.log_interval=1",
            "--trainer.sample_tokens=0", "--trainer.device=cpu", f"--system.work_dir={tmp_path / 'run'}"]
    assert T.main(tiny) == 0
    out = capsys.readouterr().out
    assert ("tokens per step: 256 = 2 rows x 32 tokens x 4 accumulation x 1 process, 3 steps for "
            "--trainer.max_tokens=800; batches in order") in out
    rows = [r for r in T.read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["iter"] for r in rows] == [1, 2, 3]
    from gptlab.info import model_stats

    flops = model_stats(load_checkpoint(tmp_path / "run" / "last").config).flops_train_per_token
    for r in rows:  # MFU = tokens/s x training FLOPs per token / peak (tokens_per_s is logged to 0.1)
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 1e9, abs=0.05 * flops / 1e9 + 1e-4)
    assert f"MFU {rows[-1]['mfu']:.1%}" in out
    state = load_checkpoint(tmp_path / "run" / "last").state
    assert state["train_config"]["trainer.grad_accum"] == 4 and state["tokens_seen"] == 3 * 256


def test_mfu_by_gpu_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptlab import hardware

    assert hardware.gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert hardware.gpu_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert hardware.gpu_bf16_peak("NVIDIA H200") == 989e12
    assert hardware.gpu_bf16_peak("Tesla T4") is None  # unknown (no bf16 tensor cores): no MFU
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    assert hardware.training_peak_flops(torch.device("cuda"), bf16=True) == 312e12
    assert hardware.training_peak_flops(torch.device("cuda"), bf16=False) is None
    assert hardware.training_peak_flops(torch.device("cpu"), bf16=True) is None
    # GPT-2 124M at llm.c's ~60% MFU on 8 A100s: 8 x 312e12 x 0.6 / (6 x 124M + attention) tokens/s
    flops = 6 * 124e6 + 6 * 12 * 1024 * 768
    assert hardware.mfu(8 * 312e12 * 0.6 / flops, flops, 312e12, processes=8) == pytest.approx(0.6)


# --------------------------------------------------------------------------------------------------------
# Bad shards at the command line: one line, exit 2 (prepare's own faults: tests/test_prepare.py)
# --------------------------------------------------------------------------------------------------------


def test_bad_shards_and_another_tokenizers_model_are_one_line_errors(shards: Path, tmp_path: Path, capsys) -> None:
    from gptlab.cli import main

    def folder(name: str, train: np.ndarray | None = None, vocab: int = 50257) -> Path:
        out = tmp_path / name
        out.mkdir()
        write_shard(out / "val_000000.bin", np.arange(100), 50257)
        if train is not None:
            write_shard(out / "train_000001.bin", train, vocab)
        return out

    truncated = folder("truncated", np.arange(100))
    with open(truncated / "train_000001.bin", "r+b") as f:
        f.truncate(1024 + 150)  # a kill mid-copy: the header says 100 tokens, 75 are there
    bad_magic = folder("magic", np.arange(100))
    with open(bad_magic / "train_000001.bin", "r+b") as f:
        f.write(np.int32(12345).tobytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "small.txt").write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    assert T.main(["--preset=tiny", f"--system.work_dir={tmp_path / 'char'}", "--trainer.device=cpu",
                   f"--data.path={tmp_path / 'small.txt'}", f"--data.cache_dir={tmp_path / 'cache'}",
                   "--trainer.max_iters=1", "--trainer.warmup_iters=0", "--trainer.sample_tokens=0",
                   "--trainer.eval_iters=1"]) == 0
    capsys.readouterr()
    cases = [
        ([f"--data.shards={empty}"], "no .bin shards there"),
        ([f"--data.shards={truncated}"], "its header says 100 tokens (1224 bytes with the header) but the file has "
                                         "1174 bytes; it is truncated or corrupt"),
        ([f"--data.shards={bad_magic}"], "is not a token shard this reader knows (magic 12345, version 1"),
        ([f"--data.shards={folder('llama', np.arange(100), 128_256)}"], "holds uint32 tokens (a vocabulary over "
                                                                        "65,536 ids)"),
        ([f"--data.shards={folder('past', np.array([5, 60_000]), 60_001)}"], "past GPT-2's vocabulary"),
        ([f"--data.shards={shards}", f"--init={tmp_path / 'char'}"], "--data.shards holds GPT-2 tokens; the model "
                                                                       "was trained with the char tokenizer"),
    ]
    for i, (flags, message) in enumerate(cases):
        argv = ["train", "--preset=tiny", "--trainer.device=cpu", f"--system.work_dir={tmp_path / f'run{i}'}", *flags]
        assert main(argv) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("gptlab: error: ") and err.count("\n") == 1 and message in err, (flags, err)
        assert not (tmp_path / f"run{i}").exists()  # refused before the run directory was made
