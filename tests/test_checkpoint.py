"""gptlab.checkpoint: round trips, atomic publish and recovery, safetensors/JSON only, the run lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab import checkpoint as C
from gptlab.config import GPTConfig
from gptlab.model import GPT
from gptlab.options import UsageError
from gptlab.tokenizer import CharTokenizer


def _model_and_optimizer(**overrides: object) -> tuple[GPT, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", **overrides))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 65, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    return model, opt


def _save(directory: Path, model: GPT, opt: torch.optim.Optimizer | None = None, **state: object) -> Path:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return C.save_checkpoint(
        directory, config=model.config, model_state=model.state_dict(), tokenizer=CharTokenizer("abc"),
        optimizer_state=get_optimizer_state_dict(model, opt) if opt is not None else None, state=state,
    )


def test_round_trip(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    rng = torch.Generator().manual_seed(5).get_state()
    _save(tmp_path / "last", model, opt, iter=7, rng=C.rng_state_to_json(rng))
    ck = C.load_checkpoint(tmp_path / "last")
    assert ck.config == model.config and ck.tokenizer == CharTokenizer("abc")
    assert ck.state["iter"] == 7 and ck.state["format_version"] == C.FORMAT_VERSION
    assert torch.equal(C.rng_state_from_json(ck.state["rng"]), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model_state[k], v), k
    # The optimizer state comes back keyed by parameter name, loadable into a fresh optimizer.
    saved = opt.state_dict()
    fresh_model = GPT(model.config)
    fresh_model.load_state_dict(ck.model_state)
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=1e-3)
    from gptlab.distributed import load_optimizer_state

    load_optimizer_state(fresh_model, fresh, ck.optimizer_state)
    loaded = fresh.state_dict()
    assert list(loaded["param_groups"][0]["betas"]) == list(saved["param_groups"][0]["betas"])
    for i, s in saved["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(loaded["state"][i][key], s[key])


def test_files_are_safetensors_and_json_with_tied_head_dropped(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, opt = _model_and_optimizer()
    directory = _save(tmp_path / "ck", model, opt)
    weights = load_file(directory / "model.safetensors")
    assert "lm_head.weight" not in weights and "transformer.wte.weight" in weights
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gptlab" and config["gptlab"] == model.config.to_dict()
    assert set(load_file(directory / "optimizer.safetensors")) >= {
        "transformer.wte.weight/exp_avg", "transformer.wte.weight/exp_avg_sq", "transformer.wte.weight/step"
    }
    # GPT.from_pretrained reads it (hf.py's gptlab format), re-tying lm_head.
    loaded = GPT.from_pretrained(directory)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    x = torch.randint(0, 65, (1, 8))
    model.eval()
    assert torch.equal(loaded(x)[0], model(x)[0])


def test_untied_head_is_kept(tmp_path: Path) -> None:
    model, _ = _model_and_optimizer(tie_embeddings=False)
    ck = C.load_checkpoint(_save(tmp_path / "ck", model))
    assert not torch.equal(ck.model_state["lm_head.weight"], ck.model_state["transformer.wte.weight"])
    assert ck.optimizer_state is None


def test_a_kill_between_the_renames_is_read_and_recovered(tmp_path: Path) -> None:
    model, _ = _model_and_optimizer()
    _save(tmp_path / "last", model, iter=1)
    # Simulate a kill after `last` -> `last.old` and before `last.new` -> `last`.
    (tmp_path / "last").rename(tmp_path / "last.old")
    (tmp_path / "last.new").mkdir()
    (tmp_path / "last.new" / "model.safetensors").write_bytes(b"half")
    # Readers read what is published and change nothing: a writer may be between its renames right now.
    assert C.load_checkpoint(tmp_path / "last").state["iter"] == 1
    assert C.find_checkpoint(tmp_path, prefer=("last",)) == tmp_path / "last.old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.new", "last.old"]
    # The run's lock holder repairs.
    C.recover(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # A stale last.old next to a complete last is removed; the newer checkpoint wins.
    (tmp_path / "last.old").mkdir()
    _save(tmp_path / "last", model, iter=2)
    assert C.load_checkpoint(tmp_path / "last").state["iter"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_two_kills_never_lose_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill 1 leaves only best.old (between the renames); the next publish, killed between its own renames,
    must not have deleted it first."""
    model, _ = _model_and_optimizer()
    src = _save(tmp_path / "last", model, iter=7)
    _save(tmp_path / "best", model, iter=3)
    (tmp_path / "best").rename(tmp_path / "best.old")  # kill 1
    real_rename = os.rename

    def killed_at_second_rename(a: object, b: object) -> None:
        if str(a).endswith("best.new"):
            raise KeyboardInterrupt  # stands in for SIGKILL: the publish stops here
        real_rename(a, b)

    monkeypatch.setattr(C.os, "rename", killed_at_second_rename)
    with pytest.raises(KeyboardInterrupt):
        C.copy_checkpoint(src, tmp_path / "best")
    monkeypatch.setattr(C.os, "rename", real_rename)
    C.recover(tmp_path / "best")
    assert C.load_checkpoint(tmp_path / "best").state["iter"] == 3  # the previous best, intact
    C.copy_checkpoint(src, tmp_path / "best")
    assert C.load_checkpoint(tmp_path / "best").state["iter"] == 7


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _model_and_optimizer()
    _save(tmp_path / "last", model, iter=1)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(C, "_write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "last", model, iter=2)
    assert C.load_checkpoint(tmp_path / "last").state["iter"] == 1
    assert not (tmp_path / "last.new").exists()


def test_corrupt_files_are_one_line_errors(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    directory = _save(tmp_path / "ck", model, opt)
    (directory / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(C.CheckpointError, match="model.safetensors is not a readable safetensors file"):
        C.load_checkpoint(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(C.CheckpointError, match="config.json is not valid JSON"):
        C.load_checkpoint(directory)


def test_find_checkpoint(tmp_path: Path) -> None:
    model, _ = _model_and_optimizer()
    _save(tmp_path / "run" / "last", model, iter=2)
    assert C.find_checkpoint(tmp_path / "run") == tmp_path / "run" / "last"  # no best yet
    C.copy_checkpoint(tmp_path / "run" / "last", tmp_path / "run" / "best")
    assert C.find_checkpoint(tmp_path / "run") == tmp_path / "run" / "best"
    assert C.find_checkpoint(tmp_path / "run", prefer=("last", "best")) == tmp_path / "run" / "last"
    assert C.find_checkpoint(tmp_path / "run" / "best") == tmp_path / "run" / "best"
    with pytest.raises(C.CheckpointError, match="holds no checkpoint"):
        C.find_checkpoint(tmp_path)


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    model, opt = _model_and_optimizer()
    directory = _save(tmp_path / "ck", model, opt)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a checkpoint load unpickled something")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert C.load_checkpoint(directory).optimizer_state is not None


def test_run_lock_refuses_a_second_process(tmp_path: Path) -> None:
    with C.RunLock(tmp_path):
        other = subprocess.run(
            [sys.executable, "-c", f"from gptlab.checkpoint import RunLock; RunLock({str(tmp_path)!r}).acquire()"],
            capture_output=True, text=True, timeout=60,
        )
        assert other.returncode != 0 and "another gptlab process is training in" in other.stderr
    C.RunLock(tmp_path).acquire().release()  # released on exit: free again


def test_run_lock_message(tmp_path: Path) -> None:
    import fcntl

    with open(tmp_path / ".lock", "w") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        # flock locks belong to the open file description: a second open in this process conflicts too.
        with pytest.raises(UsageError, match="another gptlab process"):
            C.RunLock(tmp_path).acquire()


def test_a_stale_old_copy_next_to_a_complete_checkpoint_is_cleared(tmp_path: Path) -> None:
    """A kill while the previous copy was being removed (after both renames) leaves a partial last.old/ next to a
    complete last/: readers use last/, and the next publish and recover() clear the leftover instead of failing."""
    import shutil

    model, _ = _model_and_optimizer()
    _save(tmp_path / "last", model, iter=1)
    shutil.copytree(tmp_path / "last", tmp_path / "last.old")
    (tmp_path / "last.old" / "model.safetensors").unlink()  # rmtree got this far
    assert C.load_checkpoint(tmp_path / "last").path == tmp_path / "last"
    _save(tmp_path / "last", model, iter=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert C.load_checkpoint(tmp_path / "last").state["iter"] == 2
    shutil.copytree(tmp_path / "last", tmp_path / "last.old")
    C.recover(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert C.load_checkpoint(tmp_path / "last").state["iter"] == 2


def test_checkpoint_files_are_readable_by_others(tmp_path: Path) -> None:
    # safetensors and mkstemp create owner-only (0600) files; a run shared with a group must stay readable.
    model, opt = _model_and_optimizer()
    directory = _save(tmp_path / "last", model, opt, iter=1)
    C.copy_checkpoint(directory, tmp_path / "best")
    for d in (directory, tmp_path / "best"):
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in d.iterdir()}
        assert set(modes) == {"config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors",
                              "state.json"}
        assert set(modes.values()) == {"0o644"}, modes


def test_checkpoint_iter(tmp_path: Path) -> None:
    model, _ = _model_and_optimizer()
    assert C.checkpoint_iter(tmp_path / "last") is None  # nothing there
    _save(tmp_path / "last", model, iter=7, best_iter=3)
    assert C.checkpoint_iter(tmp_path / "last") == 7  # the checkpoint's own iteration, not its best one
    (tmp_path / "last").rename(tmp_path / "last.old")  # between a publish's renames: the published copy
    assert C.checkpoint_iter(tmp_path / "last") == 7
    GPT(model.config).save_pretrained(tmp_path / "model")  # a model directory, not a training checkpoint
    assert C.checkpoint_iter(tmp_path / "model") is None


# --------------------------------------------------------------------------------------------------------
# model_config: the one path from whatever names a model to its GPTConfig
# --------------------------------------------------------------------------------------------------------


def test_model_config_of_everything_a_user_may_name(tmp_path: Path) -> None:
    from gptlab.hf import export_format

    small = dict(vocab_size=16, block_size=16)
    configs = {  # one of each format save_pretrained writes: HF GPT-2, HF Llama, gptlab's own
        "gpt2": GPTConfig.from_preset("tiny", **small),
        "llama": GPTConfig.from_preset("tiny", **small, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False),
        "gptlab": GPTConfig.from_preset("tiny", **small, pos_emb="rope", norm="layernorm", bias=False),
    }
    for kind, config in configs.items():
        assert export_format(config) == kind  # the directory really is in that format
        GPT(config).save_pretrained(tmp_path / kind)
        assert C.model_config(tmp_path / kind) == (config, tmp_path / kind)
        assert C.model_config(str(tmp_path / kind / "config.json")) == (config, tmp_path / kind)  # the file itself
    run = tmp_path / "run"  # a run directory: best/ unless told otherwise, last/ when there is no best/
    C.copy_checkpoint(tmp_path / "gpt2", run / "best")
    C.copy_checkpoint(tmp_path / "llama", run / "last")
    assert C.model_config(run) == (configs["gpt2"], run / "best")
    assert C.model_config(run, prefer=("last", "best")) == (configs["llama"], run / "last")
    configs["gpt2"].save(tmp_path / "bare.json")  # GPTConfig.save: the fields alone
    assert C.model_config(tmp_path / "bare.json")[0] == configs["gpt2"]
    # Hub ids: GPT-2's sizes are known offline (the hub's configs: vocab 50257, block 1024).
    assert C.model_config("gpt2") == (GPTConfig.from_preset("gpt2"), None)
    assert C.model_config("openai-community/gpt2-medium") == (GPTConfig.from_preset("gpt2-medium"), None)


def test_load_model_finds_what_model_config_finds(tmp_path: Path) -> None:
    # The one loader of every command that loads a model a user names (sample, eval, export, attention, train --init,
    # convert, compare): a run's best/ unless told last/, the other when that one is missing; eval mode, on CPU.
    run = tmp_path / "run"
    _save(run / "last", GPT(GPTConfig.from_preset("tiny", n_layer=1)))
    model, tokenizer, directory = C.load_model(run)
    assert (directory, model.config.n_layer) == (run / "last", 1)  # no best/ yet
    assert not model.training and model.lm_head.weight.is_cpu and tokenizer == CharTokenizer("abc")
    _save(run / "best", GPT(GPTConfig.from_preset("tiny")))
    assert C.load_model(run)[2] == C.model_config(run)[1] == run / "best"
    assert C.load_model(run, "last")[2] == C.model_config(run, prefer=("last", "best"))[1] == run / "last"
    assert C.load_model(run / "last")[0].config == C.model_config(run / "last")[0]
    assert C.load_model(run, device="meta")[0].lm_head.weight.is_meta  # the device asked for (sample's --device)
    with pytest.raises(C.CheckpointError, match="holds no checkpoint"):
        C.load_model(tmp_path)


def test_load_model_refuses_a_model_without_a_tokenizer_in_each_callers_words(tmp_path: Path) -> None:
    # A Llama-format directory with its own 16-id vocabulary: no tokenizer gptlab can pair with it.
    config = GPTConfig.from_preset("tiny", vocab_size=16, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    GPT(config).save_pretrained(tmp_path / "llama")
    name = str(tmp_path / "llama")
    with pytest.raises(C.CheckpointError, match="has no gptlab tokenizer.json") as e:  # sample, eval, attention
        C.load_model(name)
    assert str(e.value).startswith(f"{name} has no") and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="has no gptlab tokenizer.json") as e:  # train --init: the flag, and a hint
        C.load_model(name, flag="--init", hint="fine-tune another")
    assert str(e.value).startswith(f"--init={name} has no") and str(e.value).endswith("; fine-tune another")
    model, tokenizer, directory = C.load_model(name, need_tokenizer=False)  # export, convert: the model alone
    assert (model.config, tokenizer, directory) == (config, None, tmp_path / "llama")


@pytest.mark.parametrize("name,message", [
    ("missing/dir/x", "does not exist"),  # looks local: never sent to the hub
    ("empty", "holds no checkpoint"),
    ("bad/config.json", "is not valid JSON"),
    ("odd", "unknown model_type 'bert'"),
])
def test_model_config_refuses_in_one_line(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(C.CheckpointError, match=message) as e:
        C.model_config(str(tmp_path / name))
    assert "\n" not in str(e.value)
    with pytest.raises(C.CheckpointError, match="not a directory"):  # hub=False: a name is a path, nothing else
        C.model_config("gpt2", hub=False)
