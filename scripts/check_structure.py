"""The house rules that can be counted: import cycles among dnnlab's modules (imports inside
functions included; a package's __init__ counts as a module), files over 500 lines and
functions over 60 lines.

    python scripts/check_structure.py        # from the repository root; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500


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
    long, big = [], []
    for name, path in mods.items():
        graph[name]
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            big.append(f"{path.relative_to(ROOT)} ({lines} lines)")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
            graph[name] |= {m for m in imported(node, package) if m in mods and m != name}
    found = cycles(graph)
    for c in found:
        print("import cycle:", " <-> ".join(c))
    for f in big:
        print(f"file over {MAX_FILE_LINES} lines:", f)
    for f in long:
        print(f"function over {MAX_FUNCTION_LINES} lines:", f)
    print(
        f"{len(mods)} modules: {len(found)} import cycles, {len(big)} files over "
        f"{MAX_FILE_LINES} lines, {len(long)} functions over {MAX_FUNCTION_LINES} lines"
    )
    return 1 if found or big or long else 0


if __name__ == "__main__":
    raise SystemExit(main())
