"""The switch combinations every switch-level test runs over, built from gptlab.config.SWITCHES.

A test that takes `switches` runs once per mixture of the table's switches (each switch off or in one of its
variants: rope; gqa or mqa; swa; ...), over mixtures that put every three switches together in every setting,
so a switch added to the table is tested with the others without editing a test. A test that takes `switch` runs
once per variant alone, plus "modern" (all together).
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
    """Mixtures of the switches (per switch: off or one of its variants) such that every three switches meet in
    every setting they can take together: a covering array of strength 3, chosen greedily from the full product
    in a fixed order, plain GPT-2 first. The full product (576 mixtures for nine switches) would take the suite
    past its time budget while adding nothing a triple of switches does not show: every interaction between
    switches that a test here has caught was one between two of them. Mixtures GPTConfig refuses are left out
    (QK-norm with MLA: a norm over each key head cannot be folded into the query)."""
    options = [[None, *(v.name for v in s.variants)] for s in SWITCHES]
    valid = [combo for combo in itertools.product(*options) if combines(tuple(n for n in combo if n is not None))]
    triples = lambda combo: {(i, combo[i], j, combo[j], k, combo[k])  # noqa: E731
                             for i, j, k in itertools.combinations(range(len(combo)), 3)}
    uncovered = set().union(*map(triples, valid))
    chosen = [valid[0]]  # every switch off: GPT-2
    uncovered -= triples(valid[0])
    while uncovered:
        best = max(valid, key=lambda combo: len(triples(combo) & uncovered))  # the first of the best, in order
        chosen.append(best)
        uncovered -= triples(best)
    return [tuple(n for n in combo if n is not None) for combo in chosen]


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
