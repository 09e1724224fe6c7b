"""The switch table (config.SWITCHES) is what every list of switches reads: checked against each reader."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from pathlib import Path

from conftest import combines, single_switches, switch_combinations, with_switches

from gptlab.compare import COMPARE_USAGE, LABELS, default_grid
from gptlab.config import SWITCHES, GPTConfig, gpt2_reference
from gptlab.info import describe

ROOT = Path(__file__).resolve().parent.parent


def base() -> GPTConfig:
    return GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)


def test_each_switch_is_a_field_whose_default_is_gpt2():
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    assert len({s.field for s in SWITCHES}) == len(SWITCHES)
    for s in SWITCHES:
        assert s.field in fields, s.field
        assert not s.is_on(GPTConfig()) and not s.is_on(base()), s.field  # the defaults are GPT-2
        for v in s.variants:
            on = base().replace(**v.changes(base()))
            assert s.is_on(on), v.name
            # A variant turns on its own switch and no other, but the ones its switch declares it builds on.
            assert {t.field for t in SWITCHES if t.is_on(on)} == {s.field, *s.builds_on}, v.name
            assert set(s.builds_on) <= {t.field for t in SWITCHES} - {s.field}
        assert (ROOT / "docs" / s.doc).is_file(), s.doc


def test_gpt2_reference_keeps_sizes_and_resets_the_rest():
    c = with_switches(base(), ("modern",), tie_embeddings=False, norm_eps=1e-6)
    ref = gpt2_reference(c)
    assert ref == base()
    assert all(s.is_on(c) == s.in_modern for s in SWITCHES)


def test_compare_grid_labels_and_usage_come_from_the_table():
    grid = default_grid(base())
    names = [v.name for s in SWITCHES for v in s.variants]
    assert list(grid) == ["baseline", *names, "modern"]
    for s in SWITCHES:
        for v in s.variants:
            assert grid[v.name] == v.changes(base()) and LABELS[v.name] == v.label
            assert v.name in COMPARE_USAGE
    modern = base().replace(**grid["modern"])
    assert [s.field for s in SWITCHES if s.is_on(modern)] == [s.field for s in SWITCHES if s.in_modern]


def test_info_describes_every_switch():
    gpt2 = describe(base())
    for names in single_switches():
        c = with_switches(base(), names)
        text = describe(c)
        assert text != gpt2, names
        for s in SWITCHES:
            named = s.describe(c)
            assert named in text if named is not None else not s.is_on(c), s.field  # a switch that is on is named


def test_combinations_put_every_three_switches_together_in_every_setting():
    # Checked by brute force against the full product: for every three switches, every setting of the three that
    # some mixture GPTConfig accepts is in at least one of the chosen mixtures.
    combos = switch_combinations()
    options = [[None, *(v.name for v in s.variants)] for s in SWITCHES]
    every = list(itertools.product(*options))
    valid = [combo for combo in every if combines(tuple(n for n in combo if n))]
    refused = [tuple(n for n in combo if n) for combo in every if combo not in valid]
    assert refused and all({"qk_norm", "mla"} <= set(names) for names in refused)  # the one mixture refused
    assert len(combos) == len(set(combos)) and combos[0] == () and len(combos) < len(valid) // 10
    chosen = [tuple(next((n for n in opts[1:] if n in c), None) for opts in options) for c in combos]
    assert all(combo in valid for combo in chosen)
    for i, j, k in itertools.combinations(range(len(SWITCHES)), 3):
        need = {(v[i], v[j], v[k]) for v in valid}
        assert need == {(v[i], v[j], v[k]) for v in chosen}, (SWITCHES[i].field, SWITCHES[j].field, SWITCHES[k].field)


def test_docs_switch_tables_have_a_row_per_switch():
    spec = importlib.util.spec_from_file_location("docs_sync", ROOT / "docs" / "sync_docs.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    readme, index = sync.render_switches("readme"), sync.render_switches("index")
    assert len(readme.splitlines()) == len(index.splitlines()) == 2 + len(SWITCHES)
    for s in SWITCHES:
        assert f"[`{s.field}`](docs/{s.doc})" in readme and f"[{s.title}]({s.doc})" in index
        assert s.summary in readme and s.summary in index
    assert readme in (ROOT / "README.md").read_text() and index in (ROOT / "docs" / "README.md").read_text()
