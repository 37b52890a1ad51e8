"""The longest functions in src/dnnlab at a git revision, and cli.py's length (issue 15).

python benchmarks/longest_functions.py REV [--top 8]
"""

from __future__ import annotations

import argparse
import ast
import subprocess


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    found = []
    for path in git("ls-tree", "-r", "--name-only", args.rev, "src/dnnlab").split():
        if not path.endswith(".py"):
            continue
        tree = ast.parse(git("show", f"{args.rev}:{path}"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                found.append((lines, f"{path.removeprefix('src/dnnlab/')}:{node.name}"))
    for lines, name in sorted(found, reverse=True)[: args.top]:
        print(f"{lines:4d}  {name}")
    print("cli.py lines:", len(git("show", f"{args.rev}:src/dnnlab/cli.py").splitlines()))


if __name__ == "__main__":
    main()
