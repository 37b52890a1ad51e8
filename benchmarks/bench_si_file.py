"""Peak memory and time of `dnnlab si X.npy y.npy` on a feature file, against a baseline.

Each command runs in its own process; its peak resident memory is the kernel's (wait4's
ru_maxrss). Three processes per size, side by side in one run:

  interpreter   `dnnlab si` on a 20 x 4 file: Python, torch and dnnlab, no features;
  this code     the features read by blocks from the .npy (separability.featurefile);
  baseline      the same command from another source tree (--baseline-src: e.g. a
                `git worktree` of the commit before), which loads the file whole.

Their values must agree exactly; the table gives each peak above the interpreter's. The
features are written by a separate process: Linux counts the parent's resident memory at
fork time in a child's ru_maxrss, so this process keeps none.

    python benchmarks/bench_si_file.py --n 9000 --d 16384 --baseline-src /tmp/before/src
    python benchmarks/bench_si_file.py --n 60000 --d 16384 --max-memory 1GB
    python benchmarks/bench_si_file.py --n 20000 --d 16384 --distinct 2 --max-memory 100MB

The features: C classes of Gaussian points around random centres (written by row chunks,
float32), labels 0..C-1; --dir keeps them between runs (they are rebuilt when the size or
seed differs). With --distinct R, every row is a copy of one of R Gaussian rows (drawn at
random) and the labels are drawn independently: the exact-ties case of issue 36, where
each row's nearest neighbours are its copies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def write_features(
    folder: Path, n: int, d: int, classes: int, seed: int, distinct: int = 0
) -> tuple[Path, Path]:
    """X.npy (n, d) float32 and y.npy (n,) int64 in folder; reused when they match.
    distinct > 0: every row a copy of one of `distinct` rows (see the module docstring)."""
    x_path, y_path, tag = folder / "X.npy", folder / "y.npy", folder / "made.json"
    want = {"n": n, "d": d, "classes": classes, "seed": seed}
    if distinct:
        want["distinct"] = distinct
    if tag.exists() and json.loads(tag.read_text()) == want and x_path.exists():
        return x_path, y_path
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32) * 0.08
    y = rng.integers(0, classes, n)
    rows = rng.standard_normal((distinct, d), np.float32) if distinct else None
    which = rng.integers(0, distinct, n) if distinct else None
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(n, d))
    step = max(1, (1 << 24) // d)
    for s in range(0, n, step):
        e = min(n, s + step)
        if distinct:
            x[s:e] = rows[which[s:e]]
            continue
        x[s:e] = rng.standard_normal((e - s, d), np.float32)
        x[s:e] += centres[y[s:e]]
    x.flush()
    del x
    np.save(y_path, y)
    tag.write_text(json.dumps(want))
    return x_path, y_path


def write_elsewhere(folder: Path, n: int, d: int, classes: int, seed: int, distinct: int = 0):
    """write_features in a child process (see the module docstring)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from bench_si_file import write_features;"
        "from pathlib import Path; write_features(Path(sys.argv[2]), *map(int, sys.argv[3:]))"
    )
    here = str(Path(__file__).resolve().parent)
    args = [str(folder), str(n), str(d), str(classes), str(seed), str(distinct)]
    subprocess.run([sys.executable, "-c", code, here, *args], check=True)
    return folder / "X.npy", folder / "y.npy"


def run_si(src: Path, x: Path, y: Path, measures: str, max_memory: str) -> dict:
    """One `dnnlab si` process: its values, seconds and peak RSS (bytes)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "dnnlab", "si", str(x), str(y), "--measures", measures]
    cmd += ["--max-memory", max_memory, "--json", "--no-progress"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.decode()}")
    values = json.loads(out)
    return {"seconds": secs, "peak": usage.ru_maxrss * 1024, "values": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=9000)
    ap.add_argument("--d", type=int, default=16384)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distinct", type=int, default=0, help="rows all copies of R rows")
    ap.add_argument("--measures", default="si,csi")
    ap.add_argument("--max-memory", default="2GB")
    ap.add_argument("--baseline-src", type=Path, help="another tree's src/ to compare with")
    ap.add_argument(
        "--baseline-max-memory",
        help="the baseline's budget (default: --max-memory), e.g. "
        "room for its in-memory copy where this code runs within less",
    )
    ap.add_argument("--dir", type=Path, help="where the feature files live (default: a temp)")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="si-file-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    x, y = write_elsewhere(folder, args.n, args.d, args.classes, args.seed, args.distinct)
    print(f"features: {x} ({x.stat().st_size / 2**30:.2f} GiB), {time.perf_counter() - t0:.0f} s")
    tiny = Path(tempfile.mkdtemp(prefix="si-tiny-"))
    tx, ty = write_elsewhere(tiny, 20, 4, 2, 0)
    base = run_si(SRC, tx, ty, "si", args.max_memory)
    rows = [("this code", run_si(SRC, x, y, args.measures, args.max_memory))]
    if args.baseline_src:
        budget = args.baseline_max_memory or args.max_memory
        rows.append(("baseline", run_si(args.baseline_src, x, y, args.measures, budget)))
    gib = 2**30
    print(f"interpreter: peak {base['peak'] / gib:.3f} GiB")
    copies = f" (copies of {args.distinct} rows)" if args.distinct else ""
    print(f"N={args.n} D={args.d}{copies} measures={args.measures} --max-memory {args.max_memory}")
    if args.baseline_src and args.baseline_max_memory:
        print(f"baseline: --max-memory {args.baseline_max_memory}")
    print(f"{'':<11}{'seconds':>9}{'peak GiB':>10}{'above interp. GiB':>19}  values")
    for name, r in rows:
        vals = {k: r["values"][k] for k in args.measures.split(",")}
        above = (r["peak"] - base["peak"]) / gib
        print(f"{name:<11}{r['seconds']:>9.1f}{r['peak'] / gib:>10.3f}{above:>19.3f}  {vals}")
    if len(rows) == 2:
        new, old = rows[0][1], rows[1][1]
        same = all(new["values"][k] == old["values"][k] for k in args.measures.split(","))
        print(
            f"this code / baseline: time {new['seconds'] / old['seconds']:.2f}x, memory above "
            f"the interpreter {(new['peak'] - base['peak']) / (old['peak'] - base['peak']):.2f}x;"
            f" values identical: {same}"
        )


if __name__ == "__main__":
    main()
