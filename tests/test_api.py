"""The Python API (`from gptlab import train, compare`, api.py) and `gptlab train --print-config`."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab import train as train_module
from gptlab.options import UsageError, flatten, model_config_from_dict
from gptlab.train_config import TrainConfig, parse_train_args

ROOT = Path(__file__).resolve().parents[1]


def test_readme_train_and_compare_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, run as written (it is what users copy), so the docs cannot rot."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"### Training and comparing from Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    run, study = namespace["run"], namespace["study"]
    assert run.iters == 20 and run.work_dir == Path("out/notebook") and (tmp_path / "out/notebook/last").is_dir()
    assert run.val_loss == run.metrics[-1]["val_loss"] and run.best_val_loss <= run.val_loss
    assert namespace["model"].config.n_layer == 2 and not namespace["model"].training
    assert study.report == Path("reports/notebook/report.md") and (tmp_path / study.report).is_file()
    paired = study.summary["gqa"]["paired_delta"]
    assert paired["seeds"] == 2 and paired["ci95_half_width"] > 0
    assert study.results["meta"]["match"]["by"] == "params"
    assert "--match=params" in study.results["meta"]["command"]


def test_train_takes_dotted_keys_a_trainconfig_and_refuses_bad_settings(tmp_path: Path) -> None:
    from gptlab import train

    work = tmp_path / "run"
    first = train(preset="tiny", **{"trainer.max_iters": 3, "trainer.eval_interval": 3}, system={"work_dir": work},
                  trainer={"sample_tokens": 0})
    assert first.iters == 3
    # A TrainConfig as it is, keywords over it: resume the same run to 5 steps.
    cfg = parse_train_args(["--preset=tiny", f"--system.work_dir={work}"])
    again = train(cfg, trainer={"resume": True, "max_iters": 5})
    assert again.iters == 5 and again.work_dir == work
    with pytest.raises(UsageError, match="did you mean --trainer.max_iters"):
        train(trainer={"max_iter": 3})
    with pytest.raises(TypeError, match="TrainConfig or keyword settings"):
        train({"trainer": {"max_iters": 3}})


def test_gptlab_train_is_the_module_and_the_function_and_import_stays_light() -> None:
    import gptlab

    assert gptlab.train is train_module and callable(train_module) and train_module.main  # the command's module too
    code = ("import sys, gptlab; heavy = [m for m in ('matplotlib', 'transformers') if m in sys.modules]; "
            "from gptlab import train, compare; heavy += [m for m in ('matplotlib', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(train) and callable(compare)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv", [["--preset=baby", "--trainer.max_iters=400"],
                                  ["--preset=tiny", "--model.pos_emb=rope", "--data.tokenizer=gpt2"],
                                  ["--preset=gpt2-124m"],
                                  []])
def test_print_config_round_trips_and_creates_nothing(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_module.main([*argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # no run directory
    path = tmp_path / "settings.yaml"
    path.write_text(printed)
    want, got = parse_train_args(argv), parse_train_args([f"--config={path}"])
    flat_want, flat_got = (flatten(dataclasses.asdict(c)) for c in (want, got))
    flat_want.pop("config"), flat_got.pop("config")
    assert flat_got == flat_want  # every section, presets applied
    assert model_config_from_dict(got.model) == model_config_from_dict(want.model)
    assert train_module.main([f"--config={path}", "--print_config"]) == 0
    assert capsys.readouterr().out == printed  # printing what it read gives the same text
    model = model_config_from_dict(want.model)
    assert f"n_layer={model.n_layer}, n_head={model.n_head}, n_embd={model.n_embd}" in printed
    assert isinstance(want, TrainConfig)
