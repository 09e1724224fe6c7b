"""Keep the generated parts of docs/*.md true: code citations, `gptlab info` output, comparison results.

Four kinds of blocks in the Markdown are written by this script, never by hand:

    <!-- code: src/gptlab/model.py "def apply_rotary" -->          the block of code starting at the first line
    ...                                                             that starts with the anchor (a def, a class,
    <!-- /code -->                                                  a statement with its indented body)

    <!-- code: src/gptlab/model.py "q, k, v = " .. "v = v.view" -->  from the start anchor to the end anchor
                                                                      ('single quotes' for an anchor with ")

    <!-- info: --model.preset=gpt2 --compare --model.preset=gpt2-modern -->   the output of `gptlab info ...`
    ...                                                                       (optionally `| sections: KV, FLOPs`
    <!-- /info -->                                                            to keep only sections starting so)

    <!-- report: reports/cpu rope -->         what the comparison report in reports/cpu measured for a variant,
    ...                                      against the baseline: a table and the report's own commentary,
    <!-- /report -->                         from its results.json (`+uptrain` adds the MHA -> GQA experiment)

    <!-- include: docs/reliability.md "### Command line" .. "## Static guarantees" -->   the lines of another
    ...                                                                                  Markdown file from the
    <!-- /include -->                                                                    first anchor up to
                                                                                         (not including) the second

    <!-- switches: readme -->             the table of switches, from gptlab.config.SWITCHES (`index`: the same
    ...                                  table with each page's title, for docs/README.md)
    <!-- /switches -->

The top-level README.md is processed too (its includes keep the catalogue there and here the same).

Code is found by its content, not its line number, so a citation follows the code when lines move; the link
shows the current line numbers. An anchor must match exactly one line (stripped), or this script fails.

    python docs/sync_docs.py           # rewrite the blocks in docs/*.md
    python docs/sync_docs.py --check   # exit 1 if any block is stale (what tests/test_docs.py runs)
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

BLOCK = re.compile(
    r"(?P<open><!-- (?P<kind>code|info|report|include|switches): (?P<spec>.*?) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- /(?P=kind) -->)",
    re.DOTALL,
)
# Anchors in double quotes, or in single quotes when they contain double quotes.
_ANCHOR = r"""(?:"(?P<{0}d>[^"]+)"|'(?P<{0}s>[^']+)')"""
CODE_SPEC = re.compile(rf"(?P<path>\S+) {_ANCHOR.format('start')}(?: \.\. {_ANCHOR.format('end')})?$")


class DocsError(ValueError):
    """A marker that cannot be resolved: an anchor that is missing or matches several lines."""


def _find(lines: list[str], anchor: str, path: str, after: int = -1) -> int:
    hits = [i for i, line in enumerate(lines) if i > after and line.strip().startswith(anchor)]
    if not hits:
        raise DocsError(f'{path}: no line starts with "{anchor}"; the code moved or was renamed: fix the marker')
    if after < 0 and len(hits) > 1:
        where = ", ".join(str(i + 1) for i in hits)
        raise DocsError(f'{path}: "{anchor}" starts lines {where}; make the anchor longer so it is unique')
    return hits[0]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def code_span(path: str, start: str, end: str | None = None) -> tuple[int, int, list[str]]:
    """(first, last) 1-based line numbers and the lines of the cited code."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    i = _find(lines, start, path)
    if end is not None:
        j = _find(lines, end, path, after=i)
    else:  # the statement and everything indented under it (a closing bracket at its indent included)
        j, base = i, _indent(lines[i])
        while j + 1 < len(lines):
            nxt = lines[j + 1]
            if nxt.strip() and _indent(nxt) <= base:
                if _indent(nxt) == base and nxt.strip()[0] in ")]}":
                    j += 1
                break
            j += 1
        while not lines[j].strip():
            j -= 1
    return i + 1, j + 1, lines[i : j + 1]


def render_code(spec: str) -> str:
    m = CODE_SPEC.match(spec.strip())
    if m is None:
        raise DocsError(f'bad code marker "{spec}"; expected: PATH "START" or PATH "START" .. "END"')
    first, last, lines = code_span(m["path"], m["startd"] or m["starts"], m["endd"] or m["ends"])
    width = min(_indent(line) for line in lines if line.strip())
    body = "\n".join(line[width:] for line in lines)
    name = m["path"].removeprefix("src/gptlab/")
    where, anchor = (f"line {first}", f"L{first}") if first == last else (f"lines {first}–{last}", f"L{first}-L{last}")
    return f"[`{name}`, {where}](../{m['path']}#{anchor}):\n\n```python\n{body}\n```\n"


def info_output(args: list[str]) -> str:
    """What `gptlab info ARGS` prints."""
    from gptlab.info_cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(args)
    if status != 0:
        raise DocsError(f"gptlab info {' '.join(args)} failed with status {status}")
    return out.getvalue().rstrip("\n")


def _keep_sections(text: str, prefixes: list[str]) -> str:
    """The header (lines before the first blank line) and the sections whose title starts with a prefix."""
    chunks = text.split("\n\n")
    kept = [chunks[0]] + [c for c in chunks[1:] if any(c.startswith(p) for p in prefixes)]
    return "\n\n".join(kept)


def render_info(spec: str) -> str:
    args_text, _, sections = spec.partition(" | sections: ")
    args = shlex.split(args_text)
    text = info_output(args)
    if sections:
        text = _keep_sections(text, [s.strip() for s in sections.split(",")])
    return f"```text\n$ gptlab info {args_text.strip()}\n{text}\n```\n"


def _loss(v: list[float] | None) -> str:
    return "n/a (learned positions end at block_size)" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"


def render_report(spec: str) -> str:
    """A variant's numbers from a comparison report's results.json, next to the baseline's."""
    from gptlab.compare import LABELS, commentary

    directory, name, *extra = spec.split()
    path = ROOT / directory / "results.json"
    if not path.is_file():
        raise DocsError(f"{directory}/results.json not found: run gptlab compare --out={directory} first")
    data = json.loads(path.read_text(encoding="utf-8"))
    summary, meta = data["summary"], data["meta"]
    if name not in summary or "baseline" not in summary:
        raise DocsError(f"{directory}/results.json has no variant {name!r} (or no baseline): {', '.join(summary)}")
    base, v = summary["baseline"], summary[name]
    names = ["baseline"] if name == "baseline" else ["baseline", name]
    cols, heads = [summary[n] for n in names], [LABELS.get(n, n) for n in names]
    t = meta["trainer"]
    # Each loss says how it was measured: the trainer's last eval and the windows are few-batch estimates.
    from gptlab.compare import PRESETS

    windows = meta.get("eval_batches") or PRESETS.get(meta["preset"], {}).get("eval_batches")
    est = f" ({windows}-batch estimate)" if windows else ""
    for s in summary.values():  # results of an older gptlab do not carry these; the meta says them
        s.setdefault("val_loss_batches", t["eval_iters"])
        s.setdefault("window_batches", windows)
    rows = [
        (f"final val loss ({t['eval_iters']}-batch estimate, mean ± std)",
         lambda s: f"{s['val_loss'][0]:.3f} ± {s['val_loss'][1]:.3f}"),
        ("parameters", lambda s: f"{s['params']:,}"),
        ("KV cache bytes / token (fp32)", lambda s: f"{s['kv_bytes_per_token']:,}"),
        ("train tokens/s", lambda s: f"{s['train_tokens_per_s']:,.0f}"),
        ("decode tokens/s", lambda s: f"{s['decode_tokens_per_s']:,.0f}"),
        (f"val loss at 2× the context{est}", lambda s: _loss(s["extrapolation"].get("2x"))),
        (f"val loss at 4× the context{est}", lambda s: _loss(s["extrapolation"].get("4x"))),
    ]
    lines = [
        f"From [`{directory}/report.md`](../{directory}/report.md): the `{meta['preset']}` preset, "
        f"{t['max_iters']} steps of {t['batch_size']} x {meta['model']['block_size']} tokens, "
        f"{meta['seeds']} seeds, {meta['data']}, {meta['device']}"
        + ("; tokens/s measured side by side in one process after training." if v.get("speed_side_by_side") else "."),
        "",
        "| | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    lines += [f"| {label} | " + " | ".join(fmt(s) for s in cols) + " |" for label, fmt in rows]
    text = commentary(name, v, base)
    if text:
        lines += ["", text]
    u = data.get("uptrain")
    if "+uptrain" in extra and u:
        lines += [
            "",
            f"Uptraining (Ainslie et al. 2023): the baseline (seed 0) converted to {u['n_kv_head']} K/V heads by "
            "mean-pooling "
            f"went from {u['mha']:.3f} to {u['converted']:.3f} at once; {u['uptrain_iters']} steps of uptraining "
            f"({u['uptrain_iters'] / u['iters']:.0%} of the original {u['iters']}) brought it to {u['uptrained']:.3f}, "
            f"against {u['scratch']:.3f} for GQA trained from scratch for {u['iters'] + u['uptrain_iters']} steps.",
        ]
    return "\n".join(lines) + "\n"


def render_include(spec: str) -> str:
    """Lines of a Markdown file from the line starting with the first anchor up to the one starting with the second."""
    m = CODE_SPEC.match(spec.strip())
    if m is None or not (m["endd"] or m["ends"]):
        raise DocsError(f'bad include marker "{spec}"; expected: PATH "START" .. "END"')
    lines = (ROOT / m["path"]).read_text(encoding="utf-8").splitlines()
    i = _find(lines, m["startd"] or m["starts"], m["path"])
    j = _find(lines, m["endd"] or m["ends"], m["path"], after=i)
    return "\n".join(lines[i:j]).strip("\n") + "\n"


def render_switches(spec: str) -> str:
    """The switch table: one row per entry of gptlab.config.SWITCHES, linking its page."""
    from gptlab.config import SWITCHES

    if spec.strip() not in ("readme", "index"):
        raise DocsError(f'bad switches marker "{spec}"; expected: readme or index')
    index = spec.strip() == "index"
    lines = ["| page | switch | GPT-2 | modern | what it changes |" if index else
             "| switch | GPT-2 | modern | what it changes |", "|---|---|---|---|" + ("---|" if index else "")]
    for s in SWITCHES:
        page = f"[{s.title}]({s.doc}) | `{s.field}`" if index else f"[`{s.field}`](docs/{s.doc})"
        lines.append(f"| {page} | {s.gpt2} | {s.modern} | {s.summary} |")
    return "\n".join(lines) + "\n"


def render(markdown: str) -> str:
    """markdown with every block regenerated."""
    renderers = {"code": render_code, "info": render_info, "report": render_report, "include": render_include,
                 "switches": render_switches}

    def one(m: re.Match) -> str:
        return m["open"] + renderers[m["kind"]](m["spec"]) + m["close"]

    return BLOCK.sub(one, markdown)


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def stale() -> list[str]:
    """Paths (from the repository root) of the pages whose generated blocks are not what their sources give now."""
    texts = {p: p.read_text(encoding="utf-8") for p in pages()}
    return [str(p.relative_to(ROOT)) for p, text in texts.items() if render(text) != text]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        if bad:
            print(f"stale generated blocks in {', '.join(bad)}: run python docs/sync_docs.py", file=sys.stderr)
            return 1
        return 0
    for p in pages():
        text = p.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            p.write_text(new, encoding="utf-8")
            print(f"updated {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
