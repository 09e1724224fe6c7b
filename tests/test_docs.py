"""docs/ stays true: figures are drawn by the code, cited code and `gptlab info` outputs are current, cited tests
exist, links resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest

from gptlab.config import SWITCHES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# One page per switch of the table, plus loading GPT-2.
PAGES = [s.doc for s in SWITCHES] + ["loading_gpt2.md"]
SECTIONS = [
    "## What it is",
    "## The equation",
    "## The code",
    "## What the tests prove",
    "## What `gptlab info` says it costs or saves",
    "## What the comparison report measured",
]


def load(name: str):
    """A script of docs/ as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sync():
    return load("sync_docs")


def test_make_figures_draws_every_figure(tmp_path):
    figures = load("make_figures")
    start = time.perf_counter()
    paths = figures.main(tmp_path)
    elapsed = time.perf_counter() - start
    assert sorted(p.name for p in paths) == sorted(figures.FIGURES)
    import matplotlib.image

    for p in paths:
        assert p.stat().st_size > 10_000, p.name
        img = matplotlib.image.imread(p)
        assert img.shape[0] > 300 and img.shape[1] > 300, (p.name, img.shape)
        assert img[..., :3].std() > 0.05, f"{p.name} is nearly blank"
        assert (DOCS / "figures" / p.name).is_file(), f"run python docs/make_figures.py and commit {p.name}"
    assert elapsed < 30, f"make_figures took {elapsed:.1f} s"


def test_every_committed_figure_is_drawn_and_shown():
    figures = load("make_figures")
    text = "".join((DOCS / p).read_text() for p in ["README.md", *PAGES])
    for name in figures.FIGURES:
        assert f"figures/{name}" in text, f"{name} is drawn but no page shows it"
    for p in (DOCS / "figures").glob("*.png"):
        assert p.name in figures.FIGURES, f"docs/figures/{p.name} is not drawn by make_figures.py"


def test_kernel_blocks_cover_the_window_mask_exactly():
    figures = load("make_figures")
    for T, w, bq in [(24, 8, 4), (16, 4, 4), (12, 3, 3), (7, 1, 1), (5, 8, 8), (40, 6, 4)]:
        figures.forward_tiles(T, w, bq)  # asserts inside


def test_generated_blocks_are_current(sync):
    stale = sync.stale()
    assert not stale, (
        f"the generated blocks (code citations, gptlab info outputs, report numbers, includes) in {', '.join(stale)} "
        "no longer match their sources; "
        "run: python docs/sync_docs.py (and check the prose around them still holds)"
    )


def test_every_page_cites_code_and_info_output(sync):
    for page in PAGES:
        text = (DOCS / page).read_text()
        kinds = [m["kind"] for m in sync.BLOCK.finditer(text)]
        assert "code" in kinds and "info" in kinds, page


def test_a_moved_or_edited_line_makes_the_citation_stale(sync):
    text = (DOCS / "rope.md").read_text()
    edited = text.replace("    rotated = torch.cat((-x2, x1), dim=-1)\n", "    rotated = torch.cat((x2, x1), dim=-1)\n")
    assert edited != text
    assert sync.render(edited) == text  # the checker restores the code as it is
    moved = re.sub(r"lines (\d+)–", lambda m: f"lines {int(m[1]) + 1}–", text, count=1)
    assert moved != text and sync.render(moved) == text


def test_anchors_must_exist_and_be_unique(sync):
    with pytest.raises(sync.DocsError, match="no line starts with"):
        sync.code_span("src/gptlab/model.py", "def no_such_function")
    with pytest.raises(sync.DocsError, match="make the anchor longer"):
        sync.code_span("src/gptlab/model.py", "def forward")
    first, last, lines = sync.code_span("src/gptlab/model.py", "def apply_rotary")
    assert lines[0].startswith("def apply_rotary") and last > first
    assert lines[-1].strip().startswith("return")


def test_pages_have_every_section_and_are_linked_from_the_index():
    index = (DOCS / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    measured = set(json.loads((ROOT / "reports" / "cpu" / "results.json").read_text())["summary"])
    variants = {s.doc: [v.name for v in s.variants] for s in SWITCHES}
    for page in PAGES:
        text = (DOCS / page).read_text()
        positions = [text.find(s) for s in SECTIONS]
        assert -1 not in positions, (page, [s for s, p in zip(SECTIONS, positions, strict=True) if p < 0])
        assert positions == sorted(positions), f"{page}: sections out of order"
        assert f"]({page})" in index, f"docs/README.md does not link {page}"
        if page in variants:
            assert f"](docs/{page})" in readme, f"README.md's switch table does not link {page}"
        if page not in variants or measured & set(variants[page]):
            # The measured section shows the committed report's numbers (a report block sync_docs.py fills in).
            assert "<!-- report: reports/cpu " in text and "](../reports/cpu/report.md)" in text, page
        else:  # a switch newer than the committed report: the page says how to measure it
            assert f"--grid=baseline,{variants[page][0]}" in text, f"{page}: say how to measure it"


def test_cited_tests_exist():
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))
    for page in ["README.md", *PAGES, "adding_a_switch.md"]:
        for name in re.findall(r"`(test_\w+)`", (DOCS / page).read_text()):
            assert name in defined, f"docs/{page} cites {name}, which no test defines"


def test_relative_links_resolve():
    for page in ["README.md", *PAGES, "adding_a_switch.md"]:
        text = (DOCS / page).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (DOCS / target).exists(), f"docs/{page} links {target}, which does not exist"


def test_report_blocks_show_the_committed_report(sync):
    results = json.loads((ROOT / "reports" / "cpu" / "results.json").read_text())
    for name in ("rope", "gqa", "swa"):
        text = sync.render_report(f"reports/cpu {name} +uptrain")
        for variant in ("baseline", name):
            m, sd = results["summary"][variant]["val_loss"]
            assert f"{m:.3f} ± {sd:.3f}" in text, (name, variant)
        assert f"{results['uptrain']['scratch']:.3f}" in text
    with pytest.raises(sync.DocsError, match="no variant 'nope'"):
        sync.render_report("reports/cpu nope")
    with pytest.raises(sync.DocsError, match="not found"):
        sync.render_report("reports/nowhere rope")


def test_include_blocks_copy_the_lines_between_anchors(sync):
    text = sync.render_include('docs/reliability.md "### Python API" .. "## Static guarantees"')
    source = (DOCS / "reliability.md").read_text()
    assert text.startswith("### Python API") and text.strip() in source
    assert "## Static guarantees" not in text and "### Command line" not in text
    with pytest.raises(sync.DocsError, match="bad include marker"):
        sync.render_include('docs/reliability.md "### Python API"')


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's Python API block, run as written, with "path/to/gpt2" a small GPT-2 that transformers saved."""
    transformers = pytest.importorskip("transformers")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    hf_dir = tmp_path / "path" / "to" / "gpt2"
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(hf_dir)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # the README's own code: it is what users copy
    assert namespace["loss"] is not None and namespace["out"].shape == (1, 5 + 50)
    assert (tmp_path / "out" / "export" / "config.json").is_file()


def test_adding_a_switch_lists_the_readers_of_the_table():
    text = (DOCS / "adding_a_switch.md").read_text()
    assert "](adding_a_switch.md)" in (DOCS / "README.md").read_text()
    for reader in ("compare.py", "info.py", "hf.py", "sync_docs.py", "conftest.py", "test_docs.py"):
        assert reader in text, reader
