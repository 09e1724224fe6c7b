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
    for i in range(3, 5):
        tb.log({"iter": i, "loss": 10.0 + i})
    tb.close()
    acc = _read_tensorboard(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


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
