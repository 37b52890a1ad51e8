"""The house rules that can be counted: import cycles among dnnlab's modules (imports inside
functions included; a package's __init__ counts as a module), and imports inside a function
whose reason is not given beside them. (Line limits on files and functions were dropped: a
function is as long as its idea, and a file holds one idea whole.)

An import inside a function is for a measured start-up reason only, said in a comment (or
the function's docstring) that names benchmarks/lazy_imports.py, which measures it; cli.py's
are covered by its HELP comment and docs/RESULTS.md §9.

    python scripts/check_structure.py        # from the repository root; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
# What a lazy import's comment names: the benchmark that measured what it saves.
LAZY_EVIDENCE = "lazy_imports.py"
LAZY_EXEMPT = {"cli.py"}


def unexplained_imports(path: Path, tree: ast.Module) -> list[str]:
    """Imports inside a function of `path` with no comment naming LAZY_EVIDENCE in the
    five lines above them, nor in the function's docstring."""
    if path.name in LAZY_EXEMPT:
        return []
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(fn) or ""
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                above = "\n".join(lines[max(0, node.lineno - 6) : node.lineno - 1])
                if LAZY_EVIDENCE not in above and LAZY_EVIDENCE not in doc:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return list(dict.fromkeys(found))  # a nested function's import: once, not per enclosing


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module under src/dnnlab."""
    out = {}
    for p in (ROOT / "dnnlab").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def imported(node: ast.AST, package: str) -> list[str]:
    """The module names an import statement may bring in (a `from M import x` may be M.x)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(
            parts[: len(parts) - node.level + 1] + ([node.module] if node.module else [])
        )
    return [base] + [f"{base}.{a.name}" for a in node.names]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    lazy = []
    for name, path in mods.items():
        graph[name]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        lazy += unexplained_imports(path, tree)
        for node in ast.walk(tree):
            graph[name] |= {m for m in imported(node, package) if m in mods and m != name}
    found = cycles(graph)
    for c in found:
        print("import cycle:", " <-> ".join(c))
    for f in lazy:
        print("import inside a function, its reason not given:", f)
    print(
        f"{len(mods)} modules: {len(found)} import cycles, "
        f"{len(lazy)} unexplained imports inside functions"
    )
    return 1 if found or lazy else 0


if __name__ == "__main__":
    raise SystemExit(main())
