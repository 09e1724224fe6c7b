"""gptlab.tracking: TensorBoard and W&B (offline) get metrics.jsonl's rows, the settings and the samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptlab import tracking

ROWS = [{"iter": 1, "loss": 4.25, "lr": 1e-3, "tokens_per_s": 900.0}, {"iter": 2, "loss": 3.5, "lr": 9e-4},
        {"iter": 2, "train_loss": 3.4, "val_loss": 3.6, "note": "text is not a scalar", "best": True}]
SETTINGS = {"model.n_layer": 2, "trainer.learning_rate": 1e-3, "model.window": None, "data.path": "x.txt"}


def test_log_to_names_the_choices_and_the_missing_extra(monkeypatch):
    assert tracking.parse_log_to("") == [] and tracking.parse_log_to(None) == []
    with pytest.raises(ValueError, match="unknown tracker 'neptune'; choose from tensorboard, wandb"):
        tracking.parse_log_to("tensorboard,neptune")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs the wandb package: pip install 'gptlab\[wandb\]'"):
        tracking.parse_log_to("wandb")


def test_scalars_are_the_rows_numbers_without_its_step():
    assert tracking.scalars(ROWS[2]) == {"train_loss": 3.4, "val_loss": 3.6}


def _read_tensorboard(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_the_same_scalars_settings_and_samples(tmp_path):
    pytest.importorskip("tensorboard")
    tb = tracking.open_trackers(["tensorboard"], tmp_path, SETTINGS, start_iter=0)[0]
    for row in ROWS:
        tb.log(row)
    tb.text(2, "sample", "ROMEO: <b>hi</b>")
    tb.close()
    acc = _read_tensorboard(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 4.25), (2, 3.5)]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("val_loss")] == [(2, 3.6)]
    assert "note" not in acc.Tags()["scalars"] and "best" not in acc.Tags()["scalars"]
    sample = acc.Tensors("sample/text_summary")[0]
    assert sample.step == 2 and b"ROMEO: &lt;b&gt;hi&lt;/b&gt;" in sample.tensor_proto.string_val[0]
    hparams = [p for p in (tmp_path / "tensorboard").iterdir() if p.name.startswith("events")]
    assert hparams  # add_hparams wrote into the run's own folder, not a timestamped sibling
    assert b"model.n_layer" in b"".join(p.read_bytes() for p in hparams)


def test_tensorboard_resume_purges_what_was_logged_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    tb = tracking.open_trackers(["tensorboard"], tmp_path, SETTINGS, start_iter=0)[0]
    for i in range(1, 6):
        tb.log({"iter": i, "loss": float(i)})
    tb.close()
    tb = tracking.open_trackers(["tensorboard"], tmp_path, SETTINGS, start_iter=3)[0]  # the checkpoint was iter 3
    for i in range(4, 6):
        tb.log({"iter": i, "loss": 10.0 + i})
    tb.close()
    acc = _read_tensorboard(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0)]


def test_wandb_offline_writes_its_run_folder_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "myrun"
    run_dir.mkdir()
    wb = tracking.open_trackers(["wandb"], run_dir, SETTINGS, start_iter=0)[0]
    for row in ROWS:
        wb.log(row)
    wb.text(2, "sample", "ROMEO: hi")
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert wb.run.id == run_id and wb.run.name == "myrun" and wb.run.config["model.n_layer"] == 2
    wb.close()
    runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and list(runs[0].glob(f"run-{run_id}.wandb"))
    assert (runs[0].glob(f"run-{run_id}.wandb").__next__()).stat().st_size > 0
    again = tracking.open_trackers(["wandb"], run_dir, SETTINGS, start_iter=2)[0]
    assert again.run.id == run_id
    again.close()


def _train_argv(tmp_path: Path, iters: int, resume: bool, log_to: str) -> list[str]:
    from gptlab.data import shakespeare_text

    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    return ["--preset=tiny", f"--data.path={text}", f"--data.cache_dir={tmp_path / 'cache'}",
            f"--system.work_dir={tmp_path / 'run'}", "--trainer.device=cpu", f"--trainer.max_iters={iters}",
            "--trainer.log_interval=2", "--trainer.eval_interval=4", "--trainer.sample_tokens=8",
            f"--trainer.resume={resume}", f"--trainer.log_to={log_to}"]


def test_a_training_run_mirrors_metrics_jsonl_to_tensorboard_across_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from gptlab import train as T

    assert T.main(_train_argv(tmp_path, 8, False, "tensorboard")) == 0
    assert T.main(_train_argv(tmp_path, 12, True, "tensorboard")) == 0
    rows = T.read_metrics(tmp_path / "run")
    acc = _read_tensorboard(tmp_path / "run" / "tensorboard")
    for name in ("loss", "lr", "val_loss", "train_loss"):
        want = [(r["iter"], r[name]) for r in rows if name in r]
        got = [(e.step, e.value) for e in acc.Scalars(name)]
        assert [s for s, _ in got] == [s for s, _ in want] and len(want) >= 3, name
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), name  # float32 in the file
    assert {e.step for e in acc.Tensors("sample/text_summary")} >= {4, 8}


def test_log_to_errors_are_one_line(tmp_path, capsys):
    from gptlab.cli import main

    assert main(["train", *_train_argv(tmp_path, 2, False, "tensorbored")]) == 2
    assert "unknown tracker 'tensorbored'; choose from tensorboard, wandb" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
