"""gptlab runs: one table of run directories (settings that differ, params, KV, losses, tok/s, steps, live),
and the numbers in gptlab plot's legend."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab import checkpoint as ckpt
from gptlab import cli, rundir, runs
from gptlab import train as T
from gptlab.data import shakespeare_text
from gptlab.info import model_stats


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished tiny runs in root/runs: learned MHA, and RoPE with 2 K/V heads."""
    root = tmp_path_factory.mktemp("runs")
    text = root / "input.txt"
    text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    argv = ["--preset=tiny", f"--data.path={text}", f"--data.cache_dir={root / 'cache'}", "--trainer.device=cpu",
            "--trainer.max_iters=6", "--trainer.eval_interval=3", "--trainer.log_interval=2",
            "--trainer.sample_tokens=0", "--trainer.quiet=True"]
    assert T.main([*argv, f"--system.work_dir={root / 'runs' / 'mha'}"]) == 0
    assert T.main([*argv, f"--system.work_dir={root / 'runs' / 'gqa'}", "--model.rope=True",
                   "--model.n_kv_head=2"]) == 0
    return root


def _json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert cli.main(["runs", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_table_shows_what_differs_and_each_runs_numbers(root: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = root / "runs" / "mha", root / "runs" / "gqa"
    assert cli.main(["runs", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    header, row_a, row_b = out.splitlines()[:3]
    # Only the settings that differ get a column: the position embedding and K/V heads, not n_layer or the seed.
    assert header.split()[:3] == ["run", "n_kv_head", "pos_emb"] and "n_layer" not in header and "seed" not in header
    assert row_a.split()[:3] == ["mha", "4", "learned"] and row_b.split()[:3] == ["gqa", "2", "rope"]
    assert "6/6" in row_a and row_a.rstrip().endswith("finished")
    # The losses are labelled as the estimates they are (the tiny preset estimates over 2 batches).
    assert "training's 2-batch estimates of the val split" in out and "gptlab eval" in out

    s = runs.summarize(a)
    metrics = T.read_metrics(a)
    vals = [(r["iter"], r["val_loss"]) for r in metrics if "val_loss" in r]
    assert (s.final_iter, s.final_val_loss) == vals[-1] and s.best_val_loss == min(v for _, v in vals)
    assert f"{s.final_val_loss:.4f} @6" in row_a
    config = ckpt.read_config(a / "last")
    stats = model_stats(config)
    assert (s.params, s.kv_bytes_per_token, s.context) == (stats.total_params, stats.kv_bytes_per_token, 32)
    rates = sorted(r["tokens_per_s"] for r in metrics if "tokens_per_s" in r)
    assert len(rates) == 3 and s.tokens_per_s == rates[1]  # the median of the logged windows
    assert (s.steps, s.max_iters, s.val_loss_batches, s.status) == (6, 6, 2, "finished")


def test_runs_json_and_csv_hold_the_same_numbers(root: Path, capsys: pytest.CaptureFixture) -> None:
    data = _json(capsys, str(root / "runs"))
    assert [r["name"] for r in data["runs"]] == ["gqa", "mha"]  # a folder of runs: each run inside, sorted
    gqa, mha = data["runs"]
    assert gqa["kv_bytes_per_token"] * 2 == mha["kv_bytes_per_token"]  # 2 K/V heads instead of 4
    assert data["differing_settings"] == ["model.n_kv_head", "model.pos_emb"]
    assert gqa["settings"]["trainer.max_iters"] == 6 and "system.work_dir" not in gqa["settings"]
    assert "2-batch estimates" in data["loss_note"]

    assert cli.main(["runs", str(root / "runs"), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["gqa", "mha"]
    assert rows[0]["model.pos_emb"] == "rope" and rows[1]["model.n_kv_head"] == "4"
    assert float(rows[1]["final_val_loss"]) == mha["final_val_loss"] and int(rows[0]["params"]) == gqa["params"]


def test_runs_expands_globs_and_compare_folders(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A glob names the runs (root/cache and input.txt are not runs and are left out).
    names = [r["name"] for r in _json(capsys, str(root / "*" / "*"))["runs"]]
    assert names == ["gqa", "mha"]
    # A compare OUT holds its runs in OUT/runs; one name twice counts once.
    out = tmp_path / "cmp"
    shutil.copytree(root / "runs" / "mha", out / "runs" / "baseline-s0", ignore=shutil.ignore_patterns(".lock"))
    (out / "report.md").write_text("# report\n")
    data = _json(capsys, str(out), str(out / "runs" / "baseline-s0"))
    assert [r["name"] for r in data["runs"]] == ["baseline-s0"] and data["differing_settings"] == []
    # Two runs of one name in different folders: each named by its path.
    shutil.copytree(root / "runs" / "gqa", tmp_path / "other" / "gqa", ignore=shutil.ignore_patterns(".lock"))
    data = _json(capsys, str(root / "runs" / "gqa"), str(tmp_path / "other" / "gqa"))
    assert [r["name"] for r in data["runs"]] == [str(root / "runs" / "gqa"), str(tmp_path / "other" / "gqa")]


@pytest.mark.parametrize("argv, message", [
    (["nowhere"], "nowhere does not exist"),
    (["EMPTY"], "holds no run"),
    (["EMPTY/*"], "matches nothing"),
    ([], "pass run directories"),
    (["RUNS", "--csv", "--json"], "--csv and --json: pick one"),
])
def test_runs_errors_are_one_line(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                  message: str) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.replace("EMPTY", str(tmp_path / "empty")).replace("RUNS", str(root / "runs")) for a in argv]
    assert cli.main(["runs", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: ") and message in err and err.count("\n") == 1


def test_a_run_without_a_checkpoint_yet_is_shown_as_far_as_known(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                 ) -> None:
    run = tmp_path / "early"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"iter": 0, "train_loss": 4.2, "val_loss": 4.25}) + "\n"
                                       + json.dumps({"iter": 5, "loss": 4.0, "tokens_per_s": 900.0}) + "\n{torn")
    s = runs.summarize(run)
    assert (s.steps, s.max_iters, s.params, s.final_val_loss, s.tokens_per_s, s.status) == (
        5, None, None, 4.25, 900.0, "stopped")
    assert cli.main(["runs", str(run)]) == 0
    assert "5/-" in capsys.readouterr().out


def test_a_run_cut_short_is_stopped(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "cut"
    shutil.copytree(root / "runs" / "mha", run, ignore=shutil.ignore_patterns(".lock", "best"))
    state_path = run / "last" / "state.json"
    state = json.loads(state_path.read_text())
    state["train_config"]["trainer.max_iters"] = 100  # planned 100, stopped (Ctrl-C, a kill) at 6
    state_path.write_text(json.dumps(state))
    assert cli.main(["runs", str(run)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "6/100" in row and row.rstrip().endswith("stopped")
    state_path.unlink()  # a checkpoint without its state: the model's numbers are still known
    s = runs.summarize(run)
    assert s.params == runs.summarize(root / "runs" / "mha").params and s.max_iters is None


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="reads /proc/locks (Linux)")
def test_a_live_run_is_found_without_taking_its_lock(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    import fcntl

    run = tmp_path / "live"
    shutil.copytree(root / "runs" / "mha", run, ignore=shutil.ignore_patterns(".lock"))
    assert not runs.run_is_live(run)  # no lock file
    # Another process trains there (holds the run's lock): a subprocess, as a trainer would be.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gptlab.checkpoint import RunLock; "
         f"lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # Taking the lock, even for an instant, could make a trainer starting then fail: never done here.
        real_flock = fcntl.flock

        def no_flock(*args: object) -> None:
            raise AssertionError("gptlab runs must not take a run's lock")

        monkeypatch.setattr(fcntl, "flock", no_flock)
        assert runs.run_is_live(run)
        assert runs.summarize(run).status == "live"
        assert not runs.run_is_live(root / "runs" / "mha")  # its trainer is done: the lock file stays, unheld
        monkeypatch.setattr(fcntl, "flock", real_flock)
        # Without /proc/locks (macOS): the PID in the lock file, checked for a live process.
        monkeypatch.setattr(runs, "PROC_LOCKS", tmp_path / "no-proc-locks")
        assert runs.run_is_live(run)
    finally:
        holder.kill()
        holder.wait()
    assert not runs.run_is_live(run)  # the kernel dropped the lock with the process; the PID is gone too
    monkeypatch.setattr(runs, "PROC_LOCKS", Path("/proc/locks"))
    assert not runs.run_is_live(run) and runs.summarize(run).status == "finished"
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # what the fallback reads


def test_plot_legend_carries_each_runs_numbers(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = root / "runs" / "mha", root / "runs" / "gqa"
    s = runs.summarize(a)
    label = runs.legend_label(a, "learned")
    assert label.startswith("learned (") and f"final val {s.final_val_loss:.4f}, 2-batch est." in label
    assert "tok/s" in label
    seen = {}
    real = rundir.plot_losses

    def spy(run_dirs: list, out: Path, labels: list[str] | None = None) -> Path:
        seen["labels"] = labels
        return real(run_dirs, out, labels)

    monkeypatch.setattr(rundir, "plot_losses", spy)
    out = tmp_path / "ab.png"
    assert cli.main(["plot", str(a), str(b), f"--out={out}"]) == 0
    assert seen["labels"] == [runs.legend_label(a), runs.legend_label(b)] and seen["labels"][0].startswith("mha (")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", str(a), f"--out={out}", "--labels=baseline"]) == 0
    assert seen["labels"] == [label.replace("learned", "baseline")]


def test_runs_is_a_command(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--help"]) == 0
    assert "  runs " in capsys.readouterr().out
    assert cli.main(["runs", "--help"]) == 0
    assert "--csv" in capsys.readouterr().out
