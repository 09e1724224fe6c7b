"""Every preset resolves to the values pinned in tests/data/presets.json: the model presets (config.PRESETS and
minGPT's names), the run presets as `gptlab train --preset=NAME` resolves them (settings and model), and the compare
presets as every run of a comparison shares them. The file was written from the code before the presets moved into
one table (gptlab/presets.py); a change to a preset's values must change the file too, on purpose."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gptlab import compare
from gptlab.config import GPTConfig
from gptlab.options import flatten, model_config_from_dict
from gptlab.presets import COMPARE_PRESETS, MODEL_PRESETS, RUN_PRESETS
from gptlab.train_config import parse_train_args

PINNED = Path(__file__).parent / "data" / "presets.json"


def _model_presets() -> dict[str, Any]:
    return {name: model_config_from_dict({"preset": name}).to_dict() for name in MODEL_PRESETS}


def _run_presets() -> dict[str, Any]:
    out = {}
    for name in RUN_PRESETS:
        cfg = parse_train_args([f"--preset={name}"])
        out[name] = {"settings": flatten(dataclasses.asdict(cfg)), "model": model_config_from_dict(cfg.model).to_dict()}
    return out


def _compare_presets() -> dict[str, Any]:
    return {name: compare.shared_preset(name, []) for name in COMPARE_PRESETS}


def resolved() -> dict[str, Any]:
    """Every preset's resolved values, JSON-shaped (as the pinned file holds them)."""
    return json.loads(json.dumps({"model": _model_presets(), "run": _run_presets(), "compare": _compare_presets()}))


def _pinned_keys(now: Any, pinned: Any) -> Any:
    """`now` cut to the keys `pinned` has, at every level: a setting added later (a new GPTConfig or trainer field)
    is not a change to the presets, as long as it keeps its default (which test_new_fields_keep_their_defaults
    checks)."""
    if isinstance(pinned, dict) and isinstance(now, dict):
        return {k: _pinned_keys(now[k], v) if k in now else "(missing)" for k, v in pinned.items()}
    return now


def test_every_preset_resolves_to_its_pinned_values() -> None:
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    now = resolved()
    for kind in ("model", "run", "compare"):
        assert list(now[kind]) == list(pinned[kind]), kind  # the same presets, in the same order
        for name in pinned[kind]:
            assert _pinned_keys(now[kind][name], pinned[kind][name]) == pinned[kind][name], f"{kind} preset {name}"


def test_new_fields_keep_their_defaults() -> None:
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    defaults = json.loads(json.dumps(GPTConfig().to_dict()))
    for name, config in resolved()["model"].items():
        new = {k: v for k, v in config.items() if k not in pinned["model"][name]}
        assert new == {k: defaults[k] for k in new}, name


if __name__ == "__main__":  # rewrite the pinned file (only when a preset is meant to change)
    PINNED.write_text(json.dumps(resolved(), indent=1) + "\n", encoding="utf-8")


def test_presets_name_presets_that_exist() -> None:
    for name, preset in RUN_PRESETS.items():
        assert preset.get("model.preset", "baby") in MODEL_PRESETS, name  # the demo's model is the baby preset
    for name, preset in COMPARE_PRESETS.items():
        assert preset["run"] in RUN_PRESETS, name


def test_every_help_lists_the_presets_of_the_table(capsys) -> None:
    from gptlab import cli, info

    assert info.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*MODEL_PRESETS, *RUN_PRESETS])
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in RUN_PRESETS)
    assert compare.main(["--help"]) == 0
    assert f"[--preset={'|'.join(COMPARE_PRESETS)}]" in capsys.readouterr().out
