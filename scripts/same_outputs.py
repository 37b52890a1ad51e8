"""Check that a change leaves a study's outputs as they were (issue 21: behaviour unchanged).

Runs the same tiny study (fake CIFAR-10 tree; base and bn, two epochs, probes, report) and
a two-epoch course-recipe run with the code of BASE (a commit) and with this checkout's,
each in the same folder in turn, then compares every file they wrote: equal bytes, or, for
JSON (the write gate's .dnnlab-output marker too), CSV and checkpoints, equal content once
times, commits and devices are left out (seconds, wall_seconds, date, stage_seconds,
commits, device_names; stages.json holds only seconds and devices). Exit status 1 if
anything else differs.

    python scripts/same_outputs.py 06b145a
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Times, commits and devices: what differs from one run of the same code to the next.
TIMES = {"seconds", "wall_seconds", "date", "stage_seconds", "commits", "device_names"}
TIME_FILES = {"stages.json"}  # a run's wall seconds per stage and its devices, nothing else

# What each checkout runs (its own dnnlab and tests.fakes, from its root).
JOB = """
import sys
from pathlib import Path
from tests.fakes import make_image_tree
from dnnlab.cifar.train import TrainConfig, train
from dnnlab.study.config import study_config
from dnnlab.study.study import run_study
work = Path(sys.argv[1])
tree = make_image_tree(work / "cifar", n_train=14, n_test=5)
cfg = study_config(["base", "bn"], quick=True, data_root=str(tree), train_subset=60, epochs=2,
                   n_val=20, test_subset=30, max_per_split=40, cka_samples=0)
run_study(cfg, work / "study", log=lambda *_: None, plan=False)
train(TrainConfig(model="base", recipe="course", epochs=2, n_val=20, data_root=str(tree)),
      work / "course", progress=False)
"""


def run_job(checkout: Path, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{checkout / 'src'}{os.pathsep}{checkout}"}
    done = subprocess.run(
        [sys.executable, "-c", JOB, str(work)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{checkout}: the tiny study failed:\n{done.stderr[-3000:]}")


def _without_times(o):
    if isinstance(o, dict):
        return {k: _without_times(v) for k, v in o.items() if k not in TIMES}
    if isinstance(o, list):
        return [_without_times(v) for v in o]
    return o


def _equal(u, v) -> bool:
    if isinstance(u, torch.Tensor):
        return isinstance(v, torch.Tensor) and torch.equal(u, v)
    if isinstance(u, dict):
        return isinstance(v, dict) and u.keys() == v.keys() and all(_equal(u[k], v[k]) for k in u)
    if isinstance(u, (list, tuple)):
        return type(u) is type(v) and len(u) == len(v) and all(map(_equal, u, v))
    return u == v


def same_content(a: Path, b: Path) -> bool:
    """Equal bytes, or equal content with times left out (JSON, CSV, checkpoints)."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.name in TIME_FILES:  # the same stages (devices: recorded since 2026-12-07)
        keys = [set(json.loads(p.read_text())) - {"devices"} for p in (a, b)]
        return keys[0] == keys[1]
    if a.suffix == ".json" or a.name == ".dnnlab-output":  # the write gate's marker is JSON
        # Compared as text: NaN (an undefined NC1) equals NaN there.
        a_, b_ = (_without_times(json.loads(p.read_text())) for p in (a, b))
        return json.dumps(a_, sort_keys=True) == json.dumps(b_, sort_keys=True)
    if a.suffix == ".csv":
        rows = [[_without_times(r) for r in csv.DictReader(p.open())] for p in (a, b)]
        return rows[0] == rows[1]
    if a.suffix == ".pt":
        return _equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
    return False


def compare(a: Path, b: Path) -> list[str]:
    """What differs between the two output trees, one line each."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    problems = [f"only with BASE: {p}" for p in sorted(files_a - files_b)]
    problems += [f"only with this checkout: {p}" for p in sorted(files_b - files_a)]
    problems += [
        f"differs: {p}" for p in sorted(files_a & files_b) if not same_content(a / p, b / p)
    ]
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the commit to compare with (e.g. main's last)")
    ap.add_argument("--keep", metavar="DIR", help="keep both output trees in DIR (base/, here/)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(base)], check=True)
        subprocess.run(["git", "-C", str(base), "checkout", "-q", args.base], check=True)
        work = tmp / "work"  # the same path for both: the records name it
        results = {}
        for name, checkout in (("base", base), ("here", ROOT)):
            run_job(checkout, work)
            results[name] = tmp / name / "out"
            shutil.move(work, results[name])
        problems = compare(results["base"], results["here"])
        n = sum(1 for p in results["here"].rglob("*") if p.is_file())
        if args.keep:
            for name, path in results.items():
                shutil.copytree(path, Path(args.keep) / name, dirs_exist_ok=True)
    for line in problems:
        print(line)
    print(f"{n} files from {args.base} and from this checkout: {len(problems)} differ")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
