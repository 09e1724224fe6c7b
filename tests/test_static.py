"""Static guarantees over src/: nothing gptlab reads can execute code.

Every source file is parsed (ast, not grep, so comments and docstrings do not count) and the test fails on:
`torch.load` without a literal `weights_only=True`; any use of pickle (or its relatives marshal, shelve, dill,
cloudpickle, joblib); the builtins `eval`, `exec`, `compile` and `__import__`; and config or data loaded any
way but a parser: `yaml.load`/`unsafe_load`/`full_load` (only `yaml.safe_load`), `runpy`, `np.load` with
`allow_pickle=True`, `torch.jit.load`, and importing a module from a file path.

And the house's limits: no function over 100 lines, no module over 700, no import cycle at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gptlab"
FILES = sorted(SRC.rglob("*.py"))

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "runpy"}
BAD_BUILTINS = {"eval", "exec", "compile", "__import__"}
BAD_ATTR_CALLS = {
    ("yaml", "load"): "yaml.load can build arbitrary objects; use yaml.safe_load",
    ("yaml", "unsafe_load"): "yaml.unsafe_load; use yaml.safe_load",
    ("yaml", "full_load"): "yaml.full_load; use yaml.safe_load",
    ("yaml", "load_all"): "yaml.load_all; use yaml.safe_load_all",
    ("jit", "load"): "torch.jit.load runs TorchScript from the file",
    ("util", "spec_from_file_location"): "importing a module from a file path executes it",
    ("util", "module_from_spec"): "importing a module from a file path executes it",
    ("pickle", "load"): "pickle", ("pickle", "loads"): "pickle",
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kwarg(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def violations(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, problem) for every forbidden construct in a parsed module."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    out.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in PICKLE_MODULES:
                out.append((node.lineno, f"from {node.module} import ..."))
            if mod == "torch" or mod == "yaml":
                for alias in node.names:
                    if alias.name in ("load", "unsafe_load", "full_load"):
                        out.append((node.lineno, f"from {node.module} import {alias.name}: call it qualified"))
        elif isinstance(node, ast.Name) and node.id in PICKLE_MODULES:
            out.append((node.lineno, f"uses {node.id}"))
        elif isinstance(node, ast.Attribute) and node.attr in ("pickle", "_pickle", "cPickle", "Unpickler"):
            out.append((node.lineno, f"uses .{node.attr}"))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in BAD_BUILTINS:
                out.append((node.lineno, f"calls builtin {func.id}()"))
            if not isinstance(func, ast.Attribute):
                continue
            name = _dotted(func)
            if name.endswith("torch.load") or name == "torch.load":
                wo = _kwarg(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append((node.lineno, "torch.load without weights_only=True"))
            owner = name.split(".")[-2] if "." in name else ""
            if (owner, func.attr) in BAD_ATTR_CALLS:
                out.append((node.lineno, BAD_ATTR_CALLS[(owner, func.attr)]))
            if func.attr == "load" and owner in ("np", "numpy"):
                ap = _kwarg(node, "allow_pickle")
                if not (ap is None or (isinstance(ap, ast.Constant) and ap.value is False)):
                    out.append((node.lineno, "np.load with allow_pickle"))
            if func.attr == "__reduce__" or func.attr == "Unpickler":
                out.append((node.lineno, f"uses {func.attr}"))
    return out


def test_there_are_sources() -> None:
    assert len(FILES) >= 10 and (SRC / "checkpoint.py") in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_code_execution_in_source(path: Path) -> None:
    found = violations(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    assert not found, "\n".join(f"{path.relative_to(SRC.parent)}:{line}: {what}" for line, what in found)


@pytest.mark.parametrize("code", [
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import torch\nflag = True\ntorch.load('x.pt', weights_only=flag)",
    "import pickle",
    "from pickle import loads",
    "import torch\ntorch.serialization.pickle",
    "eval('1')",
    "exec('x = 1')",
    "compile('1', 'f', 'eval')",
    "import yaml\nyaml.load(open('c.yaml'))",
    "import yaml\nyaml.unsafe_load('a: 1')",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "import runpy\nrunpy.run_path('config.py')",
    "import importlib.util\nimportlib.util.spec_from_file_location('c', 'config.py')",
    "import torch\ntorch.jit.load('m.pt')",
])
def test_the_checker_catches(code: str) -> None:
    assert violations(ast.parse(code)), code


@pytest.mark.parametrize("code", [
    "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=True)",
    "import yaml\nyaml.safe_load('a: 1')",
    "import json\njson.loads('{}')",
    "model.eval()",
    "import torch\ntorch.compile(model)",
    "import re\nre.compile('a')",
    "import numpy as np\nnp.load('a.npy')",
])
def test_the_checker_allows(code: str) -> None:
    assert not violations(ast.parse(code)), code


# --------------------------------------------------------------------------------------------------------
# The house's size and shape: no function over 100 lines, no module over 700, no import cycle at module level
# --------------------------------------------------------------------------------------------------------


def test_functions_and_modules_fit_their_limits() -> None:
    too_long = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 700:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines (split it by job)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                too_long.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def module_imports(path: Path) -> set[str]:
    """The gptlab modules `path` imports at module level (imports inside functions run later, when called)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptlab."):
            out.add(node.module.split(".")[1])
    return out


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the import graph {module: modules it imports}, as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for dep in sorted(graph.get(module, ())):
            if cycle := visit(dep, [*path, module]):
                return cycle
        done.add(module)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def test_no_import_cycle_at_module_level() -> None:
    graph = {path.stem: module_imports(path) for path in FILES}
    assert import_cycle(graph) is None, " -> ".join(import_cycle(graph))
    assert import_cycle({"config": {"presets"}, "presets": {"config"}}) == ["config", "presets", "config"]
