"""Nothing lost, nothing executed: fault injection and a catalogue of bad inputs.

1. Crashes: SIGKILL at random moments (some mid-checkpoint-write, via the GPTLAB_TEST_SLOW_SAVE hook of
   gptlab.checkpoint) then resume, bit-identical to an uninterrupted run; SIGTERM saves, exits 0 and resumes
   exactly; disk full / read-only while saving keeps the previous checkpoint; a second process on the same
   work dir is refused. The 20-kill soak is benchmarks/soak_kill_resume.py.
2. The bad-input catalogue: every entry of CLI_CASES (exit 2, one line `gptlab: error: ...`, no traceback,
   no file of an earlier run changed) and API_CASES (a specific exception type and message). docs/reliability.md
   is the same catalogue as a table (test_docs_table_lists_every_case keeps them in step).
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab import checkpoint as ckpt
from gptlab import cli
from gptlab import train as T
from gptlab.config import GPTConfig
from gptlab.data import DataError, prepare_dataset, shakespeare_text
from gptlab.hf import CheckpointError, load_pretrained
from gptlab.model import GPT
from gptlab.options import UsageError, read_config_file
from gptlab.prepare import read_shard, write_shard
from gptlab.tokenizer import ASSETS_DIR, CharTokenizer, load_gpt2_encoding

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "reliability.md"


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def train_flags(root: Path, work: Path, **overrides: object) -> list[str]:
    """A tiny CPU run (tiny preset: 2 layers x 64, block 32, batch 8), checkpoint every 3 iterations."""
    settings = {
        "preset": "tiny", "data.path": root / "input.txt", "data.cache_dir": root / "cache", "system.work_dir": work,
        "trainer.device": "cpu", "trainer.sample_tokens": 0, "trainer.max_iters": 12, "trainer.lr_decay_iters": 12,
        "trainer.eval_interval": 3, "trainer.eval_iters": 1, "trainer.log_interval": 1, "model.dropout": 0.1,
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }
    return [f"--{k}={v}" for k, v in settings.items()]


def metrics(work: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields: what must be bit-identical across kills."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in T.read_metrics(work)]


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256, mtime_ns) of every file under directory (the .lock file is the lock, not run data)."""
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def gptlab_process(argv: list[str], cwd: Path, slow_save: float = 0.0) -> subprocess.Popen:
    # The same thread count as this process (no OMP_NUM_THREADS change): the reference run is computed here,
    # and float reductions depend on the number of threads.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GPTLAB_DEBUG", None)
    if slow_save:
        env["GPTLAB_TEST_SLOW_SAVE"] = str(slow_save)
    return subprocess.Popen([sys.executable, "-m", "gptlab", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def assert_readable(work: Path) -> int | None:
    """The iteration of work/last (after recover), or None if no checkpoint was published yet. Never corrupt:
    last/ and best/ (when present) load completely, model weights into a GPT."""
    ckpt.recover(work / "best")
    if (work / "best").exists():
        best = ckpt.load_checkpoint(work / "best")
        GPT(best.config).load_state_dict(best.model_state)
    ckpt.recover(work / "last")
    if not (work / "last").exists():
        return None
    c = ckpt.load_checkpoint(work / "last")
    GPT(c.config).load_state_dict(c.model_state)
    return c.state["iter"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


def make_world(root: Path) -> Path:
    """In root: input.txt, an uninterrupted reference run `ref`, a tiny learned-position run `run` (the
    "earlier run" that no bad input may touch), and bad files and checkpoints."""
    (root / "input.txt").write_text(shakespeare_text()[:20_000], encoding="utf-8")
    assert T.main(train_flags(root, root / "ref")) == 0
    assert T.main(train_flags(root, root / "run", trainer__max_iters=4, trainer__eval_interval=2)) == 0
    # Bad text files.
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("Très bien, mon ami. ".encode("latin-1") * 100)
    (root / "short.txt").write_text("To be, or not to be.")
    (root / "bad.json").write_text("{model: n_layer=2")
    (root / "config.py").write_text("import os\nos.system('touch pwned')\n")
    # Bad checkpoints, each a copy of run/last with one thing wrong.
    last = root / "run" / "last"
    from safetensors.torch import load_file, save_file

    def broken(name: str, change: Callable[[Path], None]) -> None:
        shutil.copytree(last, root / name)
        change(root / name)

    def edit_tensors(d: Path, fn: Callable[[dict], None]) -> None:
        sd = load_file(d / "model.safetensors")
        fn(sd)
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})

    broken("missing_tensor", lambda d: edit_tensors(d, lambda sd: sd.pop("transformer.h.0.mlp.c_fc.weight")))
    broken("wrong_shape", lambda d: edit_tensors(
        d, lambda sd: sd.__setitem__("transformer.h.1.attn.c_proj.weight", torch.zeros(3, 3))))
    broken("truncated", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:5000]))
    broken("config_not_json", lambda d: (d / "config.json").write_text("{'gptlab': oops"))

    def pickle_bomb(d: Path) -> None:  # a .bin whose unpickling would create root/pwned
        sd = load_file(d / "model.safetensors")
        (d / "model.safetensors").unlink()
        torch.save({**sd, "evil": Payload(str(root / "pwned"))}, d / "pytorch_model.bin")

    broken("pickle_bomb", pickle_bomb)
    return root


class Payload:
    """Unpickling this creates the marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------------------------------------
# 1. Crashes
# --------------------------------------------------------------------------------------------------------


def kill_and_resume(root: Path, work: Path, kills: int, seed: int, slow_save: float = 0.3) -> dict:
    """Train the reference config in `work`, SIGKILLing the process `kills` times and resuming after each, then
    finish the run in-process. The first kill waits for a first checkpoint; then kills alternate between one
    mid-write (while last.new/ exists: the GPTLAB_TEST_SLOW_SAVE hook keeps each write open for 3 x slow_save s)
    and one at a random moment. After every kill the checkpoint must load. Returns where the kills landed."""
    rng = random.Random(seed)
    landed = {"mid_write": 0, "elsewhere": 0}
    for k in range(kills):
        before = assert_readable(work)
        extra = {"trainer__resume": True} if before is not None else {}
        proc = gptlab_process(["train", *train_flags(root, work, **extra)], cwd=root, slow_save=slow_save)
        try:
            if before is None:  # the first run: let it publish one checkpoint, then kill anywhere
                wait_for(lambda p=proc: (work / "last").exists() or p.poll() is not None, timeout=120)
                time.sleep(rng.uniform(0.0, 1.0))
            elif k % 2 == 0:  # mid-write: a write of a later checkpoint is under way
                wait_for(lambda p=proc: (work / "last.new").exists() or p.poll() is not None, timeout=120)
                time.sleep(rng.uniform(0.0, 2 * slow_save))
            else:  # anywhere after the resumed run started training
                n = len(T.read_metrics(work))
                wait_for(lambda p=proc, n=n: len(T.read_metrics(work)) != n or p.poll() is not None, timeout=120)
                time.sleep(rng.uniform(0.0, 1.5))
            mid_write = (work / "last.new").exists()
            proc.kill()
        finally:
            proc.kill()
            proc.communicate(timeout=60)
        if proc.returncode == 0:  # the run finished before the kill: nothing more to interrupt
            break
        assert proc.returncode == -signal.SIGKILL
        after = assert_readable(work)  # never an unreadable checkpoint
        assert after is not None and after >= (before or 0)
        landed["mid_write" if mid_write else "elsewhere"] += 1
    assert T.main(train_flags(root, work, trainer__resume=True)) == 0
    return landed


def test_sigkill_at_random_moments_then_resume_is_bit_identical(world: Path, tmp_path: Path) -> None:
    landed = kill_and_resume(world, tmp_path / "killed", kills=3, seed=0)
    assert landed["mid_write"] >= 1, landed
    assert metrics(tmp_path / "killed") == metrics(world / "ref")
    a, b = ckpt.load_checkpoint(tmp_path / "killed" / "last"), ckpt.load_checkpoint(world / "ref" / "last")
    assert a.state["iter"] == b.state["iter"] == 12
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k
    assert not any((tmp_path / "killed" / n).exists() for n in ("last.new", "last.old", "best.new", "best.old"))


@pytest.mark.slow
def test_soak_20_sigkills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak (pytest -m slow; also benchmarks/soak_kill_resume.py): 20 kills over a 60-iteration run."""
    (tmp_path / "input.txt").write_text(shakespeare_text()[:20_000], encoding="utf-8")
    n = {"trainer__max_iters": 60, "trainer__lr_decay_iters": 60}
    orig = train_flags
    monkeypatch.setattr(sys.modules[__name__], "train_flags", lambda r, w, **kw: orig(r, w, **{**n, **kw}))
    assert T.main(train_flags(tmp_path, tmp_path / "ref")) == 0
    landed = kill_and_resume(tmp_path, tmp_path / "killed", kills=20, seed=1)
    assert sum(landed.values()) == 20 and landed["mid_write"] >= 5, landed
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "ref")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_exits_0_and_resumes_exactly(world: Path, tmp_path: Path, sig: signal.Signals) -> None:
    work = tmp_path / "term"
    proc = gptlab_process(["train", *train_flags(world, work)], cwd=world, slow_save=0.1)
    try:
        assert wait_for(lambda: len([r for r in T.read_metrics(work) if "loss" in r]) >= 3, timeout=60)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"stopped by {sig.name}" in out and "Traceback" not in err
    stopped = assert_readable(work)
    assert stopped is not None and 3 <= stopped < 12
    assert T.main(train_flags(world, work, trainer__resume=True)) == 0
    assert metrics(work) == metrics(world / "ref")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_while_saving_keeps_the_previous_checkpoint(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, err: int
) -> None:
    # Root ignores file permissions, so "disk full" and "read-only" are simulated: the safetensors write of
    # the next checkpoint raises the OSError the kernel would give.
    work = tmp_path / "full"
    shutil.copytree(world / "run", work)
    before = snapshot(work / "last")
    real = ckpt._write_safetensors

    def failing(path: Path, tensors: dict) -> None:
        real(path, tensors)
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(ckpt, "_write_safetensors", failing)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", *train_flags(world, work, trainer__resume=True, trainer__max_iters=6)])
    assert code == 2
    msg = capsys.readouterr().err
    assert msg.startswith("gptlab: error: ") and msg.count("\n") == 1 and os.strerror(err) in msg, msg
    assert f"cannot write checkpoint {work / 'last'}" in msg and "the previous checkpoint there, if any, is" in msg
    assert snapshot(work / "last") == before  # the previous checkpoint is intact ...
    assert not (work / "last.new").exists()  # ... and no half-written one is left behind
    assert ckpt.load_checkpoint(work / "last").state["iter"] == 4


def test_second_process_on_the_same_work_dir_is_refused(world: Path, tmp_path: Path) -> None:
    # The first process is this one, holding the run's lock as `gptlab train` does while it trains; the second
    # is a real `gptlab train` asking to start over (--system.overwrite=True, which would delete the run's files).
    work = tmp_path / "shared"
    shutil.copytree(world / "run", work)
    before = snapshot(work)
    with ckpt.RunLock(work):
        second = subprocess.run([sys.executable, "-m", "gptlab", "train",
                                 *train_flags(world, work, system__overwrite=True)],
                                capture_output=True, text=True, timeout=120, cwd=world)
    assert second.returncode == 2
    assert second.stderr.startswith("gptlab: error: another gptlab process is training in"), second.stderr
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert snapshot(work) == before  # nothing of the first run was touched


def test_torchrun_world_size_must_divide_the_batch(world: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GPTLAB_DEBUG", None)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptlab", "train",
         *train_flags(world, tmp_path / "ddp", trainer__batch_size=3)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env,
    )
    assert out.returncode != 0
    ours = [line for line in out.stderr.splitlines() if line.startswith("gptlab: error:")]
    assert len(ours) == 1, out.stderr
    assert "--trainer.batch_size=3 must be divisible by" in ours[0] and "processes (2)" in ours[0]
    assert "gptlab/train.py" not in out.stderr  # no traceback from our code
    assert not (tmp_path / "ddp" / "last").exists()


# --------------------------------------------------------------------------------------------------------
# 2. Bad input: the catalogue. CLI: (id, argv with {w} = the world dir, message part, what to do).
# --------------------------------------------------------------------------------------------------------

NEW = "--system.work_dir={w}/new --data.path={w}/input.txt --data.cache_dir={w}/cache --trainer.device=cpu"
TINY = "--preset=tiny " + NEW
CLI_CASES: list[tuple[str, str, str]] = [
    ("unknown command", "trian", "unknown command 'trian'; commands:"),
    ("unknown flag", "train --trainer.max_iter=5",
     "unknown flag --trainer.max_iter; did you mean --trainer.max_iters?"),
    ("flag with a bad type", "train --trainer.max_iters=ten", "--trainer.max_iters expects an integer, got 'ten'"),
    ("bad boolean", "train --trainer.resume=maybe", "--trainer.resume expects a boolean"),
    ("value not among the choices", "train --trainer.dtype=fp8", "--trainer.dtype must be one of auto, float32"),
    ("non-finite number", "train --trainer.learning_rate=nan", "expects a finite number"),
    ("flag without a value", "train --trainer.max_iters", "--trainer.max_iters needs a value"),
    ("unknown model preset", "train --model.preset=gpt5", "unknown preset 'gpt5'; choose from"),
    ("unknown run preset", "train --preset=huge", "unknown run preset 'huge'; choose from"),
    ("n_embd not divisible by n_head", f"train {TINY} --model.n_head=5", "must be divisible by n_head (5)"),
    ("n_head not divisible by n_kv_head", f"train {TINY} --model.n_head=4 --model.n_kv_head=3",
     "n_head (4) must be divisible by n_kv_head (3); allowed n_kv_head: [1, 2, 4]"),
    ("odd head dim with RoPE", f"train {TINY} --model.n_embd=60 --model.n_head=4 --model.pos_emb=rope",
     "needs an even head dim (n_embd / n_head), got 15"),
    ("window 0", f"train {TINY} --model.window=0", "window must be None (full causal attention) or an integer >= 1"),
    ("window negative", f"train {TINY} --model.window=-4", "window must be None (full causal attention) or an integer"),
    ("dropout out of range", f"train {TINY} --model.dropout=1.5", "dropout must be in [0, 1)"),
    ("vocab_size that the tokenizer does not give", f"train {TINY} --model.vocab_size=10",
     "--model.vocab_size=10: the vocabulary size comes from the tokenizer (char: "),
    ("block_size above a loaded checkpoint's learned positions",
     f"train {NEW} --init={{w}}/run --model.block_size=64", "past the pretrained model's 32 learned positions"),
    ("changing the architecture when fine-tuning", f"train {NEW} --init={{w}}/run --model.n_layer=3",
     "changes the architecture of the pretrained model"),
    ("empty text", f"train {TINY} --data.path={{w}}/empty.txt", "data file is empty"),
    ("binary text", f"train {TINY} --data.path={{w}}/binary.txt", "looks binary"),
    ("non-UTF-8 text", f"train {TINY} --data.path={{w}}/latin1.txt", "is not valid UTF-8"),
    ("text shorter than one batch", f"train {TINY} --data.path={{w}}/short.txt", "is too short for block_size=32"),
    ("missing data file", f"train {TINY} --data.path={{w}}/nope.txt", "data file not found"),
    ("config JSON that is not JSON", f"train {TINY} --config={{w}}/bad.json", "is not valid JSON"),
    ("Python config file", f"train {TINY} --config={{w}}/config.py", "Python config files are not executed"),
    ("missing config file", f"train {TINY} --config={{w}}/nope.yaml", "config file not found"),
    ("resume of a run whose config differs", "train --system.work_dir={w}/run --trainer.resume=True --model.n_layer=3",
     "--model.n_layer=3 differs from the run being resumed (2)"),
    ("resume with nothing to resume", f"train {TINY} --trainer.resume=True", "nothing to resume"),
    ("new run over an existing one", "train --preset=tiny --system.work_dir={w}/run --data.path={w}/input.txt",
     "already holds a run; continue it with --trainer.resume=True"),
    ("batch not divisible by grad_accum", f"train {TINY} --trainer.batch_size=10 --trainer.grad_accum=4",
     "--trainer.batch_size=10 must be divisible by --trainer.grad_accum=4"),
    ("prompt with characters a char model never saw", "sample {w}/run --prompt=Romeü",
     "--prompt: character(s) 'ü' not in the char tokenizer's vocabulary"),
    ("temperature < 0", "sample {w}/run --temperature=-0.5", "--temperature must be >= 0"),
    ("top_p = 0", "sample {w}/run --top_p=0", "--top_p must be in (0, 1]"),
    ("top_p > 1", "sample {w}/run --top_p=1.01", "--top_p must be in (0, 1]"),
    ("top_k = 0", "sample {w}/run --top_k=0", "--top_k must be >= 1"),
    ("max_new_tokens past block_size (learned positions)", "sample {w}/run --max_new_tokens=40",
     "past block_size=32, the last position this learned-position model has; use --max_new_tokens="),
    ("prompt file that does not exist", "sample {w}/run --prompt=FILE:{w}/nope.txt", "cannot read it"),
    ("missing checkpoint dir", "sample {w}/no_such_run", "no_such_run"),
    ("missing run dir inside an existing folder (not looked up on the Hub)", "sample cache/no_such_run",
     "checkpoint directory cache/no_such_run does not exist"),
    ("directory without a checkpoint", "sample {w}/cache", "holds no checkpoint"),
    ("checkpoint with a missing tensor", "sample {w}/missing_tensor", "transformer.h.0.mlp.c_fc.weight"),
    ("checkpoint tensor with a wrong shape", "sample {w}/wrong_shape", "transformer.h.1.attn.c_proj.weight"),
    ("truncated safetensors", "sample {w}/truncated", "is not a readable safetensors file"),
    (".bin pickle carrying a code-execution payload", "sample {w}/pickle_bomb", "cannot be loaded safely"),
    ("checkpoint config.json that is not JSON", "sample {w}/config_not_json", "is not valid JSON"),
    ("eval on a binary text", "eval {w}/run --text={w}/binary.txt",
     "binary.txt looks binary (NUL byte at byte offset 0)"),
    ("eval on a non-UTF-8 text", "eval {w}/run --text={w}/latin1.txt",
     "--text: {w}/latin1.txt is not valid UTF-8 (byte 0xe8 at byte offset 2); convert it to UTF-8"),
    ("eval with max_tokens < 2", "eval {w}/run --text={w}/input.txt --max_tokens=1", "--max_tokens"),
    ("plot of a directory that is not a run", "plot {w}/cache", "has no metrics.jsonl"),
    ("plot into a folder that does not exist", "plot {w}/run --out={w}/nope/loss.png", "nope does not exist"),
    ("work dir that cannot be created", f"train {TINY} --system.work_dir={{w}}/input.txt/run",
     "cannot create it (Not a directory)"),
    ("convert into a directory that is not empty", "convert --to-gqa 1 {w}/run {w}/run",
     "exists and is not empty; convert writes a new model directory: pick a new DST"),
    ("prepare of a folder without .txt, .jsonl or .parquet files", "prepare {w}/cache {w}/shards1",
     "holds no .txt, .jsonl or .parquet files"),
    ("prepare of a non-UTF-8 file", "prepare {w}/latin1.txt {w}/shards2",
     "latin1.txt is not valid UTF-8 (byte 0xe8 at byte offset 2); convert or remove it, or pass --skip_bad_files"),
    ("prepare of a binary file", "prepare {w}/binary.txt {w}/shards3", "binary.txt looks binary (NUL byte at"),
    ("prepare into a folder it did not write", "prepare {w}/input.txt {w}/run",
     "holds files that gptlab prepare did not write (no manifest.json); pick a new or empty OUT folder"),
    ("prepare with val_fraction out of range", "prepare {w}/input.txt {w}/shards4 --val_fraction=1.5",
     "--val_fraction must be in (0, 1)"),
]


@pytest.fixture(scope="module")
def run_snapshot(world: Path) -> dict:
    return snapshot(world / "run")


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(world: Path, run_snapshot: dict, argv: str, message: str, capsys: pytest.CaptureFixture,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(world)  # a default work_dir (out/...) would land here, not in the repository
    monkeypatch.delenv("GPTLAB_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [a.replace("{w}", str(world)) for a in argv.split()]
    code = cli.main(args)  # an uncaught exception (a traceback on the CLI) fails the test here
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("gptlab: error: ") and err.count("\n") == 1 and "\x1b" not in err, err
    assert message.replace("{w}", str(world)) in err, err
    assert snapshot(world / "run") == run_snapshot  # no file of the earlier run changed
    assert not (world / "pwned").exists()  # the pickle payload never ran
    assert not (world / "new" / "last").exists()


def test_cli_bad_input_in_a_real_process(world: Path) -> None:
    """The same contract through the installed command: exit 2, one line, no traceback, payload never runs."""
    for argv in (["sample", str(world / "pickle_bomb")],):  # test_cli.py runs more cases as real processes
        out = subprocess.run([sys.executable, "-m", "gptlab", *argv], capture_output=True, text=True, timeout=120,
                             cwd=world, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert not (world / "pwned").exists()


# API: (id, callable taking the world dir, exception type, message regex).
def _corrupt_gpt2_assets(w: Path) -> None:
    d = w / "assets_corrupt"
    if not d.exists():
        shutil.copytree(ASSETS_DIR, d)
        data = bytearray((d / "vocab.bpe").read_bytes())
        data[len(data) // 2] ^= 1
        (d / "vocab.bpe").write_bytes(bytes(data))
    load_gpt2_encoding(d)


def _truncated_shard(w: Path) -> None:
    write_shard(w / "cut.bin", np.arange(100), vocab_size=50257)
    os.truncate(w / "cut.bin", 1024 + 150)  # 75 of its 100 uint16 tokens
    read_shard(w / "cut.bin")


def _generate(w: Path, **kw: object) -> None:
    model = GPT.from_pretrained(ckpt.find_checkpoint(w / "run"))
    model.generate(torch.zeros(1, 1, dtype=torch.long), **{"max_new_tokens": 2, **kw})


API_CASES: list[tuple[str, Callable[[Path], object], type[BaseException], str]] = [
    ("GPTConfig: n_head not divisible by n_kv_head", lambda w: GPTConfig(n_head=4, n_kv_head=3, n_embd=64),
     ValueError, r"n_head \(4\) must be divisible by n_kv_head \(3\)"),
    ("GPTConfig: odd head dim with RoPE", lambda w: GPTConfig(n_embd=60, n_head=4, pos_emb="rope"),
     ValueError, "needs an even head dim"),
    ("GPTConfig: window 0", lambda w: GPTConfig(window=0), ValueError, "window must be None"),
    ("GPTConfig: window negative", lambda w: GPTConfig(window=-1), ValueError, "window must be None"),
    ("GPTConfig: unknown field", lambda w: GPTConfig.from_dict({"n_layers": 2}), ValueError,
     "unknown GPTConfig field"),
    ("GPTConfig.from_preset: unknown field", lambda w: GPTConfig.from_preset("tiny", n_layers=3), ValueError,
     r"unknown GPTConfig field\(s\) \['n_layers'\]"),
    ("GPTConfig: a number given as a string", lambda w: GPTConfig(dropout="0.1"), ValueError,
     "dropout must be a number, got '0.1'"),
    ("parse_train_args: unknown flag", lambda w: T.parse_train_args(["--bogus=1"]), UsageError, "unknown flag --bogus"),
    ("read_config_file: JSON that is not JSON", lambda w: read_config_file(w / "bad.json"), UsageError,
     "is not valid JSON"),
    ("read_config_file: Python file", lambda w: read_config_file(w / "config.py"), UsageError, "not executed"),
    ("prepare_dataset: empty text", lambda w: prepare_dataset(w / "empty.txt", "char", w / "cache", 32), DataError,
     "data file is empty"),
    ("prepare_dataset: non-UTF-8 text", lambda w: prepare_dataset(w / "latin1.txt", "char", w / "cache", 32),
     DataError, "UTF-8"),
    ("prepare_dataset: shorter than one batch", lambda w: prepare_dataset(w / "short.txt", "char", w / "cache", 32),
     DataError, "too short"),
    ("CharTokenizer: unseen character", lambda w: CharTokenizer.from_text("abc").encode("abd"), ValueError,
     "not in the char tokenizer's vocabulary"),
    ("GPT-2 tokenizer file whose hash does not match", _corrupt_gpt2_assets, ValueError,
     r"vocab\.bpe.*reinstall gptlab"),
    ("load_checkpoint: missing dir", lambda w: ckpt.load_checkpoint(w / "no_such_run"), CheckpointError,
     "checkpoint directory .*no_such_run does not exist; check the path"),
    ("load_checkpoint: truncated safetensors", lambda w: ckpt.load_checkpoint(w / "truncated"), CheckpointError,
     "not a readable safetensors file"),
    ("load_checkpoint: config.json not JSON", lambda w: ckpt.load_checkpoint(w / "config_not_json"),
     CheckpointError, r"^\S*config_not_json/config\.json is not valid JSON"),  # the path once, not twice
    ("load_pretrained: a training run's directory", lambda w: load_pretrained(w / "run"), CheckpointError,
     r"run is a training run; load one of its checkpoints: .*run/(best|last)"),
    ("load_pretrained: missing tensor", lambda w: load_pretrained(w / "missing_tensor"), CheckpointError,
     r"transformer\.h\.0\.mlp\.c_fc\.weight"),
    ("load_pretrained: wrong shape", lambda w: load_pretrained(w / "wrong_shape"), CheckpointError, "shape"),
    ("load_pretrained: .bin pickle with a code payload", lambda w: load_pretrained(w / "pickle_bomb"),
     CheckpointError, r"cannot be loaded safely.*weights_only"),
    ("GPT.generate: temperature < 0", lambda w: _generate(w, temperature=-1.0), ValueError,
     "temperature must be >= 0"),
    ("GPT.generate: top_p outside (0, 1]", lambda w: _generate(w, top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    ("GPT.generate: past block_size (learned positions)", lambda w: _generate(w, max_new_tokens=40), ValueError,
     "block_size"),
    ("read_shard: token count that does not match the file size", _truncated_shard, DataError,
     r"header says 100 tokens \(1224 bytes with the header\) but the file has 1174 bytes"),
    ("read_shard: not a token shard", lambda w: read_shard(w / "input.txt"), DataError,
     "is not a token shard this reader knows"),
]


@pytest.mark.parametrize("call, exc, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(world: Path, run_snapshot: dict, call: Callable, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message) as info:
        call(world)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)  # one plain line
    assert snapshot(world / "run") == run_snapshot
    assert not (world / "pwned").exists()


def test_the_payload_is_real(tmp_path: Path) -> None:
    """Plain unpickling of the .bin's payload does run it: the refusal above is what protects the user."""
    pickle.loads(pickle.dumps(Payload(str(tmp_path / "ran"))))
    assert (tmp_path / "ran").exists()


def test_catalogue_size() -> None:
    assert len(CLI_CASES) + len(API_CASES) >= 30


def test_docs_table_lists_every_case() -> None:
    """docs/reliability.md and the README's Reliability section have one table row per catalogue entry (its
    first cell is the entry's id)."""
    ids = [c[0] for c in CLI_CASES] + [c[0] for c in API_CASES]
    for page in (DOCS, ROOT / "README.md"):
        rows = re.findall(r"^\| (.+?) \|", page.read_text(encoding="utf-8"), re.MULTILINE)
        missing = [i for i in ids if i not in rows]
        assert not missing, (page.name, missing)
    assert f"the whole catalogue of {len(ids)} bad-input cases" in (ROOT / "README.md").read_text(encoding="utf-8")
