"""gptlab.train: resumable to the bit, refuses to clobber runs, Ctrl-C saves, NaN stops, fine-tuning."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptlab import cli
from gptlab import train as T
from gptlab.checkpoint import load_checkpoint
from gptlab.data import DataError, shakespeare_text
from gptlab.model import GPT
from gptlab.options import UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_text()[:30_000], encoding="utf-8")
    return path


def flags(tmp_path: Path, text_file: Path, work: str = "run", **overrides: object) -> list[str]:
    """A tiny, fast CPU run (tiny preset: 2 layers x 64, block 32, batch 8) in tmp_path/work."""
    settings = {
        "preset": "tiny", "data.path": text_file, "data.cache_dir": tmp_path / "cache",
        "system.work_dir": tmp_path / work, "trainer.device": "cpu", "trainer.sample_tokens": 0,
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }
    return [f"--{k}={v}" for k, v in settings.items()]


def losses(work_dir: Path) -> list[tuple[int, float]]:
    return [(r["iter"], r["loss"]) for r in T.read_metrics(work_dir) if "loss" in r]


def test_resume_is_bit_identical(tmp_path: Path, text_file: Path) -> None:
    # Dropout on, so the dropout RNG state must survive the checkpoint too; the schedule is fixed by
    # lr_decay_iters, so stopping at 10 does not change the learning rates of steps 10..19.
    common = dict(trainer__log_interval=1, trainer__eval_interval=5, trainer__lr_decay_iters=20,
                  model__dropout=0.1, trainer__grad_accum=2)
    assert T.main(flags(tmp_path, text_file, "straight", trainer__max_iters=20, **common)) == 0
    assert T.main(flags(tmp_path, text_file, "resumed", trainer__max_iters=10, **common)) == 0
    assert T.main(flags(tmp_path, text_file, "resumed", trainer__max_iters=20, trainer__resume=True, **common)) == 0

    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [i for i, _ in resumed] == list(range(1, 21))
    assert resumed == straight  # exact float equality, every step
    a = load_checkpoint(tmp_path / "straight" / "last")
    b = load_checkpoint(tmp_path / "resumed" / "last")
    assert a.state["iter"] == b.state["iter"] == 20
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k


def test_checkpoint_contents_and_best(tmp_path: Path, text_file: Path) -> None:
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=10, trainer__eval_interval=5)) == 0
    work = tmp_path / "run"
    for name in ("last", "best"):
        files = sorted(p.name for p in (work / name).iterdir())
        assert files == ["config.json", "model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.json"]
    assert (work / "loss.png").stat().st_size > 1000
    assert json.loads((work / "tokenizer.json").read_text())["type"] == "char"  # the run carries its tokenizer
    rows = T.read_metrics(work)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 5, 10]
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in rows if "loss" in r)
    state = json.loads((work / "last" / "state.json").read_text())
    assert state["iter"] == 10 and state["best_val_loss"] == min(r["val_loss"] for r in evals[1:])
    assert state["train_config"]["trainer.max_iters"] == 10
    # The checkpoint is a model directory: GPT.from_pretrained loads it, tied weights re-tied.
    model = GPT.from_pretrained(work / "last")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.vocab_size == len(set(text_file.read_text()))


def test_refuses_to_clobber_a_run(tmp_path: Path, text_file: Path) -> None:
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2, trainer__eval_interval=2)) == 0
    with pytest.raises(UsageError, match="already holds a run.*resume.*overwrite"):
        T.main(flags(tmp_path, text_file, trainer__max_iters=2))
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=3, system__overwrite=True)) == 0
    assert load_checkpoint(tmp_path / "run" / "last").state["iter"] == 3
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # overwrite deletes only our files
    assert [i for i, _ in losses(tmp_path / "run")][-1] == 3


def test_resume_needs_a_run_and_keeps_model(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(UsageError, match="nothing to resume"):
        T.main(flags(tmp_path, text_file, trainer__resume=True))
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2)) == 0
    with pytest.raises(UsageError, match="model.n_layer.*differs from the run being resumed"):
        T.main(flags(tmp_path, text_file, trainer__resume=True, model__n_layer=3))


def test_two_runs_cannot_share_a_directory(tmp_path: Path, text_file: Path) -> None:
    from gptlab.checkpoint import RunLock

    with RunLock(tmp_path / "run"):  # as if another `gptlab train` were running there
        with pytest.raises(UsageError, match="another gptlab process is training in"):
            T.main(flags(tmp_path, text_file, trainer__max_iters=2))
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2)) == 0


def test_learning_rate_schedule() -> None:
    t = T.TrainerConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    lrs = [T.learning_rate(s, t) for s in range(200)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3)  # peak right after warmup
    assert lrs[60] == pytest.approx(5.5e-4)  # half way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[110] == lrs[199] == pytest.approx(1e-4)
    assert T.learning_rate(0, T.TrainerConfig(warmup_iters=0, learning_rate=2e-3)) == pytest.approx(2e-3)


def test_weight_decay_on_matrices_only() -> None:
    model = GPT(T.model_config_from_dict({"preset": "tiny"}))
    opt = T.make_optimizer(model, T.TrainerConfig(weight_decay=0.1), fused=False)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()  # every parameter once (the tied lm_head is wte)


def test_grad_accum_gives_the_same_step_and_eval(tmp_path: Path, text_file: Path) -> None:
    # The batch is the global batch: accumulating it in 4 micro-batches is the same computation, and evals
    # see the same rows (they once drew micro-batches, so grad_accum shrank and changed the eval sample).
    for accum in (1, 4):
        T.main(flags(tmp_path, text_file, f"acc{accum}", trainer__max_iters=4, trainer__log_interval=1,
                     trainer__eval_interval=2, trainer__grad_accum=accum))
    a, b = losses(tmp_path / "acc1"), losses(tmp_path / "acc4")
    assert [x for _, x in a] == pytest.approx([x for _, x in b], abs=1e-5)
    evals = [[r[k] for r in T.read_metrics(tmp_path / f"acc{n}") if "val_loss" in r for k in ("train_loss", "val_loss")]
             for n in (1, 4)]
    assert len(evals[0]) == 6 and evals[0] == pytest.approx(evals[1], abs=1e-5)


@pytest.mark.parametrize("bad", ["nan", "inf"])  # an overflowing loss is divergence too
def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, bad: str
) -> None:
    forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 7:  # training steps 8.. diverge
                loss = loss * float(bad)
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    code = T.main(flags(tmp_path, text_file, trainer__max_iters=20, trainer__eval_interval=5))
    assert code == 1
    err = capsys.readouterr().err
    assert f"loss is {bad} at iter 8" in err and "iter 5" in err
    last = load_checkpoint(tmp_path / "run" / "last")
    assert last.state["iter"] == 5
    assert all(torch.isfinite(t).all() for t in last.model_state.values())


def test_run_diverged_before_its_first_checkpoint_points_to_overwrite(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = GPT.forward

    def diverging(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        return logits, loss * float("nan") if self.training else loss

    monkeypatch.setattr(GPT, "forward", diverging)
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=20, trainer__eval_interval=10)) == 1
    assert not (tmp_path / "run" / "last").exists()
    with pytest.raises(UsageError, match="start it over with --system.overwrite=True instead of --trainer.resume"):
        T.main(flags(tmp_path, text_file, trainer__resume=True))
    monkeypatch.setattr(GPT, "forward", forward)
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2, system__overwrite=True)) == 0


def test_finetune_from_a_run(tmp_path: Path, text_file: Path) -> None:
    assert T.main(flags(tmp_path, text_file, "base", trainer__max_iters=3)) == 0
    base = load_checkpoint(tmp_path / "base" / "last")
    # --model.pretrained_folder (the chargpt fork's name) starts from those weights; block_size may shrink.
    assert T.main(flags(tmp_path, text_file, "ft", trainer__max_iters=0 + 2, trainer__learning_rate=1e-9,
                        model__pretrained_folder=tmp_path / "base", data__block_size=16)) == 0
    ft = load_checkpoint(tmp_path / "ft" / "last")
    assert ft.config.block_size == 16 and ft.config.n_layer == base.config.n_layer
    # A learning rate of ~0 keeps the weights: they really came from the base run.
    assert torch.allclose(ft.model_state["transformer.h.0.attn.c_attn.weight"],
                          base.model_state["transformer.h.0.attn.c_attn.weight"], atol=1e-6)
    with pytest.raises(UsageError, match="changes the architecture"):
        T.main(flags(tmp_path, text_file, "ft2", init=tmp_path / "base", model__n_layer=5))


def test_finetune_a_hugging_face_gpt2_directory(tmp_path: Path, text_file: Path) -> None:
    # A GPT-2-format directory (what --init=gpt2 downloads), tiny: its tokenizer is GPT-2's, chosen automatically.
    config = T.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)
    GPT(config).save_pretrained(tmp_path / "hf")
    assert T.main(flags(tmp_path, text_file, "ft", init=tmp_path / "hf", trainer__max_iters=2)) == 0
    ck = load_checkpoint(tmp_path / "ft" / "last")
    assert ck.tokenizer.name == "gpt2" and ck.config == config  # --init replaces the preset's model


@pytest.mark.parametrize("vocab", [40, 300])
def test_finetune_refuses_a_model_without_a_usable_tokenizer(tmp_path: Path, text_file: Path, vocab: int) -> None:
    # A Llama-format directory with its own (non-GPT-2) vocabulary and no gptlab tokenizer: char ids built from
    # the text would silently stand for the Llama's tokens (300 > the text's characters: it used to train).
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    with pytest.raises(UsageError, match=f"no gptlab tokenizer.json and its vocabulary \\({vocab}\\) is not GPT-2"):
        T.main(flags(tmp_path, text_file, "ft", init=tmp_path / "llama", trainer__max_iters=2))
    assert not (tmp_path / "ft").exists()


def test_finetune_names_the_tokenizer_flag_that_conflicts(tmp_path: Path, text_file: Path) -> None:
    GPT(T.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)).save_pretrained(tmp_path / "hf")
    with pytest.raises(UsageError, match="--data.tokenizer=char: the model was trained with the gpt2 tokenizer"):
        T.main(flags(tmp_path, text_file, "ft", init=tmp_path / "hf", data__tokenizer="char"))


def test_resuming_a_finished_run_says_so(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2)) == 0
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2, trainer__resume=True)) == 0
    assert "already at iter 2" in capsys.readouterr().out


def test_batch_must_split_over_accumulation(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(UsageError, match="batch_size=10 must be divisible by --trainer.grad_accum=4"):
        T.main(flags(tmp_path, text_file, trainer__batch_size=10, trainer__grad_accum=4))


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_exits_0(
    tmp_path: Path, text_file: Path, sig: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "gptlab", "train", *flags(tmp_path, text_file, trainer__max_iters=100_000,
                                                         trainer__log_interval=1, trainer__eval_interval=10_000)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert _wait_for(lambda: len(losses(work)) >= 3, timeout=60), "training did not start"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"stopped by {sig.name}" in out and "--trainer.resume=True" in out
    stopped_at = load_checkpoint(work / "last").state["iter"]
    assert stopped_at >= 3 and not (work / "last.new").exists()
    # ... and the run continues from there, with the command it printed (told to stop 2 steps later).
    hint = next(line for line in out.splitlines() if line.startswith("continue with: "))
    argv = shlex.split(hint.removeprefix("continue with: "))
    assert argv[0] == "gptlab"
    monkeypatch.chdir(tmp_path)  # the printed work_dir is relative to where the run was started
    assert cli.main([*argv[1:], f"--trainer.max_iters={stopped_at + 2}"]) == 0
    assert load_checkpoint(work / "last").state["iter"] == stopped_at + 2


def test_a_bad_model_setting_leaves_no_work_dir(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(UsageError, match="n_head"):
        T.main(flags(tmp_path, text_file, model__n_head=5))
    assert not (tmp_path / "run").exists()


def test_resume_applies_changed_optimizer_flags(tmp_path: Path, text_file: Path) -> None:
    """The optimizer state restores the old param_groups; weight decay and betas given on resume must win."""
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2)) == 0
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=3, trainer__resume=True,
                        trainer__weight_decay=0.05, trainer__beta2=0.95)) == 0
    groups = load_checkpoint(tmp_path / "run" / "last").optimizer_state["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # biases and norm gains still get none
    assert all(tuple(g["betas"]) == (0.9, 0.95) for g in groups)


def test_a_kill_between_saving_last_and_copying_best_is_repaired_on_resume(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2, trainer__eval_interval=2)) == 0
    shutil.copytree(run / "best", tmp_path / "best_at_2")
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=4, trainer__eval_interval=2,
                        trainer__resume=True)) == 0
    assert load_checkpoint(run / "last").state["best_iter"] == 4  # iter 4 improved: best/ was copied from it
    shutil.rmtree(run / "best")
    shutil.copytree(tmp_path / "best_at_2", run / "best")  # as if killed before that copy
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=4, trainer__eval_interval=2,
                        trainer__resume=True)) == 0
    assert load_checkpoint(run / "best").state["iter"] == 4


def test_a_run_refused_before_writing_anything_leaves_no_folder(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        T.main(flags(tmp_path, text_file, data__path=tmp_path / "nope.txt"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is left alone, even empty
    with pytest.raises(DataError):
        T.main(flags(tmp_path, text_file, "mine", data__path=tmp_path / "nope.txt"))
    assert (tmp_path / "mine").is_dir()


# ---- Tests from a mutation-testing pass of train.py, checkpoint.py, data.py, tokenizer.py, distributed.py.


def _nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """nanoGPT's get_lr (train.py), written out independently of gptlab."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@pytest.mark.parametrize(("min_lr", "decay"), [(None, None), (0.0, None), (3e-4, 30), (None, 45)])
def test_learning_rate_min_lr_and_decay_end(min_lr: float | None, decay: int | None) -> None:
    # min_lr=None means learning_rate / 10 (--help says so); an explicit min_lr (0 included) is used as given.
    t = T.TrainerConfig(learning_rate=2e-3, min_lr=min_lr, warmup_iters=5, max_iters=40, lr_decay_iters=decay)
    floor = 2e-4 if min_lr is None else min_lr
    end = 40 if decay is None else decay
    for it in range(60):
        assert T.learning_rate(it, t) == pytest.approx(_nanogpt_lr(it, 2e-3, floor, 5, end), rel=1e-12, abs=1e-15), it


@pytest.mark.parametrize("clip", [0.5, 4.0])  # grad norms here are ~2.7: clipping on every step, and never
def test_three_steps_match_a_hand_written_training_loop(tmp_path: Path, text_file: Path, clip: float) -> None:
    """The trainer's steps from pretrained weights equal nanoGPT's loop written out here: batches from a generator
    seeded with system.seed, micro-batch losses / grad_accum, clip_grad_norm_, AdamW (decay on matrices only), the
    warmup + cosine learning rate of each step; the logged loss is the step's mean micro-batch loss."""
    from gptlab.data import prepare_dataset

    assert T.main(flags(tmp_path, text_file, "base", trainer__max_iters=1)) == 0
    hp = dict(trainer__learning_rate=3e-3, trainer__min_lr=2e-4, trainer__warmup_iters=1, trainer__lr_decay_iters=3,
              trainer__beta1=0.8, trainer__beta2=0.95, trainer__weight_decay=0.5, trainer__grad_clip=clip)
    assert T.main(flags(tmp_path, text_file, "ft", init=tmp_path / "base" / "last", model__dropout=0.0,
                        trainer__max_iters=3, trainer__grad_accum=2, trainer__log_interval=1, **hp)) == 0

    base = load_checkpoint(tmp_path / "base" / "last")
    model = GPT(base.config)
    model.load_state_dict(base.model_state)
    model.train()
    data = prepare_dataset(text_file, "char", tmp_path / "cache", 32)
    generator = torch.Generator().manual_seed(1337)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.5},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.8, 0.95))
    step_losses = []
    for it in range(3):
        for group in opt.param_groups:
            group["lr"] = _nanogpt_lr(it, 3e-3, 2e-4, 1, 3)
        micro = []
        for _ in range(2):  # batch_size 8 in 2 micro-batches of 4
            x, y = data.get_batch("train", 4, 32, generator)
            _, loss = model(x, y)
            (loss / 2).backward()
            micro.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad()
        step_losses.append(sum(micro) / 2)

    ft = load_checkpoint(tmp_path / "ft" / "last")
    n = base.config.n_embd
    for name, value in model.state_dict().items():
        got = ft.model_state[name]
        if name.endswith("attn.c_attn.bias"):  # the key bias gets a zero gradient (softmax ignores a constant
            got, value = got[torch.arange(3 * n) // n != 1], value[torch.arange(3 * n) // n != 1]  # shift): noise
        torch.testing.assert_close(got, value, rtol=0, atol=1e-5, msg=name)
    assert [x for _, x in losses(tmp_path / "ft")] == pytest.approx(step_losses, abs=1e-5)


def test_best_is_the_lowest_val_loss_and_survives_resume(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Scripted eval losses: iter 0 (not a checkpoint), 2, 4, 6, 8; then 10 and 12 in resumed runs.
    vals = iter([5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 2.9])
    monkeypatch.setattr(T, "estimate_loss", lambda *args, **kwargs: {"train": 1.0, "val": next(vals)})
    run = tmp_path / "run"
    common = dict(trainer__eval_interval=2)
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=8, **common)) == 0
    state = load_checkpoint(run / "last").state
    assert (state["iter"], state["best_val_loss"], state["best_iter"]) == (8, 3.0, 6)
    assert load_checkpoint(run / "best").state["iter"] == 6
    # 3.2 at iter 10 is worse than the 3.0 the resumed run must remember: best/ stays the iter-6 model.
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=10, trainer__resume=True, **common)) == 0
    state = load_checkpoint(run / "last").state
    assert (state["iter"], state["best_val_loss"], state["best_iter"]) == (10, 3.0, 6)
    assert load_checkpoint(run / "best").state["iter"] == 6
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=12, trainer__resume=True, **common)) == 0
    assert load_checkpoint(run / "best").state["iter"] == 12
    out = capsys.readouterr().out
    assert [int(i) for i in re.findall(r"^iter (\d+): train loss .*\(best\)$", out, re.MULTILINE)] == [2, 6, 12]


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"
    common = dict(trainer__log_interval=1, trainer__eval_interval=4)
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=4, **common)) == 0
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:  # logged by a run killed at iter 7, after iter 4
        f.write(json.dumps({"iter": 5, "loss": 99.0}) + "\n" + json.dumps({"iter": 6, "loss": 99.0}) + '\n{"iter": 7')
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=6, trainer__resume=True, **common)) == 0
    rows = losses(run)
    assert [i for i, _ in rows] == [1, 2, 3, 4, 5, 6] and 99.0 not in [x for _, x in rows]


def test_resume_keeps_its_data(tmp_path: Path, text_file: Path) -> None:
    data = tmp_path / "input.txt"
    text = text_file.read_text(encoding="utf-8")
    assert "z" in text and "~" not in text
    data.write_text(text, encoding="utf-8")
    assert T.main(flags(tmp_path, text_file, data__path=data, trainer__max_iters=2)) == 0
    other = tmp_path / "other.txt"
    other.write_text(text[::-1], encoding="utf-8")  # the same characters, another text
    with pytest.raises(UsageError, match="--data.path=.*other.txt differs from the run being resumed"):
        T.main(flags(tmp_path, text_file, data__path=other, trainer__max_iters=4, trainer__resume=True))
    # The same file edited: as many characters, but a char model's id for "z" would now mean "~".
    data.write_text(text.replace("z", "~"), encoding="utf-8")
    with pytest.raises(UsageError, match="does not give the char tokenizer the model was trained with"):
        T.main(flags(tmp_path, text_file, data__path=data, trainer__max_iters=4, trainer__resume=True))
    assert load_checkpoint(tmp_path / "run" / "last").state["iter"] == 2


def test_a_run_that_only_logged_metrics_is_not_started_over_silently(tmp_path: Path, text_file: Path) -> None:
    # What a run that diverged before its first checkpoint leaves: metrics.jsonl only.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"iter": 0, "train_loss": 4.2, "val_loss": 4.2}) + "\n")
    with pytest.raises(UsageError, match="already holds a run"):
        T.main(flags(tmp_path, text_file, trainer__max_iters=2))


def test_overwrite_leaves_nothing_of_the_old_run(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=4, trainer__eval_interval=2)) == 0
    assert (run / "best").is_dir() and (run / "last").is_dir()
    forward = GPT.forward

    def diverging(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        return logits, loss * float("nan") if self.training else loss

    # The new run dies before its first checkpoint: no best/ or metrics of the old run may pass for its own.
    monkeypatch.setattr(GPT, "forward", diverging)
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=4, system__overwrite=True)) == 1
    assert not (run / "best").exists() and not (run / "last").exists()
    assert [r["iter"] for r in T.read_metrics(run)] == [0]  # the new run's iter-0 eval, nothing else


def test_overwrite_with_a_bad_flag_keeps_the_old_run(tmp_path: Path, text_file: Path) -> None:
    # --system.overwrite deletes the old run only once the new one's data and model are known to be good.
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2)) == 0
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(DataError, match="not found"):
        T.main(flags(tmp_path, text_file, data__path=tmp_path / "typo.txt", system__overwrite=True))
    with pytest.raises(ValueError, match="does not exist"):  # CheckpointError
        T.main(flags(tmp_path, text_file, init=tmp_path / "nope", system__overwrite=True))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=1, system__overwrite=True)) == 0
    assert [i for i, _ in losses(tmp_path / "run")] == [1]  # a new run: nothing of the old one's 2 steps


def test_run_preset_schedule_follows_max_iters() -> None:
    # --preset=baby with fewer steps decays over those steps (it once kept the preset's lr_decay_iters=2000
    # and ended a 400-step run at 9.5e-4); an explicit --trainer.lr_decay_iters still wins.
    t = T.parse_train_args(["--preset=baby", "--trainer.max_iters=400"]).trainer
    assert T.learning_rate(399, t) == pytest.approx(1e-4, rel=1e-3)
    assert T.parse_train_args(["--preset=baby"]).trainer.max_iters == 2000  # nanoGPT's run is unchanged
    t = T.parse_train_args(["--preset=baby", "--trainer.max_iters=400", "--trainer.lr_decay_iters=2000"]).trainer
    assert T.learning_rate(399, t) > 9e-4


def test_warmup_past_the_run_warns(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture) -> None:
    # tiny's warmup is 5 steps: a 3-step run never reaches the peak learning rate, and says so in one line.
    assert T.main(flags(tmp_path, text_file, "short", trainer__max_iters=3)) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "--trainer.warmup_iters=5 >= --trainer.max_iters=3" in warnings[0], err
    assert T.main(flags(tmp_path, text_file, "long", trainer__max_iters=6)) == 0
    assert "warning" not in capsys.readouterr().err


def test_elapsed_time_continues_across_resume(tmp_path: Path, text_file: Path) -> None:
    # elapsed_s is the run's training time, not this process's: it once restarted at 0 on resume.
    common = dict(trainer__log_interval=1, trainer__eval_interval=5)
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=5, **common)) == 0
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=10, trainer__resume=True, **common)) == 0
    elapsed = [(r["iter"], r["elapsed_s"]) for r in T.read_metrics(tmp_path / "run") if "elapsed_s" in r]
    assert [i for i, _ in elapsed] == list(range(1, 11))
    times = [e for _, e in elapsed]
    assert all(a <= b for a, b in zip(times, times[1:], strict=False)), times  # rounded to 0.01 s
    assert times[5] > times[4] > 0  # the first step after the resume comes after the last one before it
    saved = load_checkpoint(tmp_path / "run" / "last").state["elapsed_s"]
    assert saved >= times[-1]


@pytest.mark.parametrize("lowercase", [False, True])
def test_the_printed_sample_command_works(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture, lowercase: bool
) -> None:
    # The hint once asked for 200 new tokens of every model, past the 32 positions of this learned-position one
    # (exit 2), and for "ROMEO:", which a model of lowercase text cannot encode. A work dir with a space: quoted.
    text = tmp_path / "lower.txt"
    text.write_text(text_file.read_text(encoding="utf-8").lower(), encoding="utf-8")
    data = text if lowercase else text_file
    assert T.main(flags(tmp_path, data, "my run", trainer__max_iters=2)) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sample more: "))
    argv = shlex.split(hint.removeprefix("sample more: "))
    assert argv[:3] == ["gptlab", "sample", str(tmp_path / "my run")]
    assert cli.main(argv[1:]) == 0, hint
    assert len(capsys.readouterr().out) > 0


def test_training_losses_say_they_are_estimates(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture) -> None:
    # tiny evaluates 2 batches per split: each printed loss says so (`gptlab eval` gives the whole split).
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2)) == 0
    out = capsys.readouterr().out
    evals = [line for line in out.splitlines() if line.startswith("iter ") and "val loss" in line]
    assert len(evals) == 2 and all("val loss" in e and "(2-batch estimates)" in e for e in evals), evals
    assert re.search(r"best val loss \d\.\d{4} \(2-batch estimate\)", out), out


def test_quiet_prints_nothing_and_a_resume_by_hand_prints_again(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture
) -> None:
    # gptlab compare trains quietly (its log is one line per run); a quiet run resumed by hand is not quiet.
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=2, trainer__quiet=True)) == 0
    assert capsys.readouterr().out == ""
    assert "trainer.quiet" not in load_checkpoint(tmp_path / "run" / "last").state["train_config"]
    assert T.main(flags(tmp_path, text_file, trainer__max_iters=3, trainer__resume=True)) == 0
    assert "resuming at iter 2" in capsys.readouterr().out
