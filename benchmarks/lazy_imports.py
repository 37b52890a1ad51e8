"""What each import inside a function saves: its marginal import time once its module is loaded.

    python benchmarks/lazy_imports.py [--runs 3] [--all]

dnnlab imports inside a function only for a measured start-up reason (or an optional
package). This finds every such import in src/dnnlab (cli.py's only with --all: RESULTS §9
measures those as a whole) and, in a fresh interpreter per run, imports the module that
holds it, then times the statement itself: what a user of that module would pay at import
if the statement moved to the top. Prints the median of --runs runs per statement, the
module's own import time beside it as the baseline, and their ratio.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

PROBE = """
import time
t0 = time.perf_counter()
import {module}
t1 = time.perf_counter()
try:
    {statement}
    status = "ok"
except ImportError as e:
    status = "missing: " + str(e).split(chr(10))[0]
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, status)
"""


def lazy_imports(include_cli: bool) -> list[tuple[str, int, str]]:
    """(module, line, statement) for every import inside a function in src/dnnlab."""
    found = []
    for path in sorted((SRC / "dnnlab").rglob("*.py")):
        if path.name == "cli.py" and not include_cli:
            continue
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.append((module, node.lineno, ast.unparse(node)))
    return sorted(set(found))


def time_one(module: str, statement: str) -> tuple[float, float, str]:
    """(module's import seconds, statement's seconds, status) in a fresh interpreter."""
    code = PROBE.format(module=module, statement=statement)
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    if res.returncode != 0:
        raise SystemExit(f"{module}: {statement}: {res.stderr.strip().splitlines()[-1]}")
    host, stmt, status = res.stdout.split(maxsplit=2)
    return float(host), float(stmt), status.strip()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh interpreters per statement")
    ap.add_argument("--all", action="store_true", help="cli.py's imports too")
    args = ap.parse_args(argv)
    rows = lazy_imports(args.all)
    print(f"{len(rows)} imports inside functions; median of {args.runs} fresh interpreters each")
    print("| module:line | statement | module import (s) | statement (ms) | ratio | |")
    print("|---|---|---|---|---|---|")
    for module, line, statement in rows:
        runs = [time_one(module, statement) for _ in range(args.runs)]
        host = statistics.median(r[0] for r in runs)
        stmt = statistics.median(r[1] for r in runs)
        status = runs[-1][2]
        print(
            f"| {module}:{line} | `{statement}` | {host:.2f} | {stmt * 1e3:.0f} | "
            f"{stmt / host:.3f} | {status} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
