"""The switch combinations every switch-level test runs over, built from gptlab.config.SWITCHES.

A test that takes `switches` runs once per combination of the table's switches: each switch off or in one of its
variants (rope; gqa or mqa; swa; ...), so a switch added to the table is tested in every mixture with the others
without editing a test. A test that takes `switch` runs once per variant alone, plus "modern" (all together).
Both are tuples of variant names; `with_switches(base, names)` turns them into a config.
Also: the suite's environment (GPTLAB_NATIVE_BF16=0, below).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from gptlab.config import SWITCHES, GPTConfig, modern_changes

# The suite checks training against fp32 references. On CPUs with native bf16 (AMX, AVX512-BF16)
# --trainer.dtype=auto trains in bf16, so the suite pins the detection to "not native"; tests of the bf16
# choice patch it back. Subprocesses inherit the variable.
os.environ.setdefault("GPTLAB_NATIVE_BF16", "0")


def switch_combinations() -> list[tuple[str, ...]]:
    """Every mixture of the switches: per switch, off or one of its variants; but the mixtures GPTConfig refuses
    (QK-norm with MLA: a norm over each key head cannot be folded into the query)."""
    options = [[None, *(v.name for v in s.variants)] for s in SWITCHES]
    combos = [tuple(n for n in combo if n is not None) for combo in itertools.product(*options)]
    return [combo for combo in combos if combines(combo)]


def combines(names: tuple[str, ...]) -> bool:
    """Whether GPTConfig accepts these variants together (on a small model)."""
    try:
        with_switches(GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32), names)
    except ValueError:
        return False
    return True


def single_switches() -> list[tuple[str, ...]]:
    """Each variant alone, and "modern": every switch that compare's modern variant turns on."""
    return [(v.name,) for s in SWITCHES for v in s.variants] + [("modern",)]


def switch_changes(base: GPTConfig, names: tuple[str, ...]) -> dict[str, Any]:
    """The field changes of the named variants ("modern": all of the modern ones), for a model shaped like base."""
    variants = {v.name: v for s in SWITCHES for v in s.variants}
    changes: dict[str, Any] = {}
    for name in names:
        changes.update(modern_changes(base) if name == "modern" else variants[name].changes(base))
    return changes


def with_switches(base: GPTConfig, names: tuple[str, ...], **overrides: Any) -> GPTConfig:
    """base with the named variants switched on, then overrides applied."""
    return base.replace(**{**switch_changes(base, names), **overrides})


def _label(names: tuple[str, ...]) -> str:
    return "+".join(names) or "gpt2"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "switches" in metafunc.fixturenames:
        combos = switch_combinations()
        metafunc.parametrize("switches", combos, ids=[_label(c) for c in combos])
    if "switch" in metafunc.fixturenames:
        singles = single_switches()
        metafunc.parametrize("switch", singles, ids=[_label(c) for c in singles])
