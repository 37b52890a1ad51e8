"""The search for a recipe that trains all eleven variants (issue 34): every candidate is
screened for divergence on the family's extremes through its learning-rate peak, and the
survivors are ranked by bn's and base's validation accuracy at the study's 10 epochs.
Validation split only, never test.

Each run is `dnnlab train --recipe corrected --epochs 10` with a candidate's flags (the
budget recipe's settings with one change), 45,000 training images, one CPU thread. A screen
run is stopped (SIGTERM) once `--screen-epochs` epochs are saved: with 10 epochs the warmup
is 0.3 or 1 epoch (106 or 352 of 3,520 steps), so one epoch covers the 0.3-epoch peak and two
the 1-epoch one (CANDIDATES' third value). A stopped run resumes exactly, so
`--accuracy` later continues bn's and base's screen runs to 10 epochs instead of retraining.

The queue is ordered so that the variants that diverged before (paths4-shared, paths2,
paths2-shared), seed 0, are screened first for every candidate, and a candidate is dropped
from the queue at its first divergence. Every finished run appends one line to
OUT/results.jsonl (the script resumes from it); the table is printed at the end and with
`--table`.

    python benchmarks/recipe_search.py --data-root ../shared/data/cifar10-jpeg.tar.gz \
        --out /tmp/recipe-search [--candidates clip1,lr0.05] [--jobs 2]
    python benchmarks/recipe_search.py ... --accuracy       # bn, base to 10 epochs
    python benchmarks/recipe_search.py --out /tmp/recipe-search --table
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The budget recipe (recipe.BUDGET) spelled out; each candidate changes it in one way.
BUDGET = (
    "--lr 0.1 --batch-size 128 --momentum 0.9 --nesterov --weight-decay 5e-4 "
    "--label-smoothing 0.1 --schedule linear --warmup-epochs 0.3 --augmentation flip-translate"
)
# name: (what changes, flags replacing the budget's, epochs that cover the peak)
CANDIDATES = {
    # Gradient-norm clipping (Pascanu et al. 2013; NFNets' reason for it: un-normalized
    # residual networks at large learning rates), the budget's peak kept.
    "clip1": ("gradient norm clipped to 1", "--grad-clip 1", 1),
    # A lower peak: 0.05 was 1.6 points better than 0.1 on bn at batch 256 (RESULTS §10).
    "lr0.05": ("peak 0.05", "--lr 0.05", 1),
    # A longer warmup (Goyal et al. 2017's gradual warmup; Budgeted Training warms up too).
    "warm1": ("warmup 1 epoch", "--warmup-epochs 1", 2),
    "lr0.05-clip1": ("peak 0.05, gradient norm clipped to 1", "--lr 0.05 --grad-clip 1", 1),
}
SCREEN = ("paths4-shared", "paths2", "paths2-shared", "base", "noskip", "bn", "ln")
SEEDS = (0, 1, 2)
ACCURACY = ("bn", "base")
COMMON = "--recipe corrected --epochs 10 --val-size 5000"


def flags(name: str) -> list[str]:
    """The candidate's full flags: the budget's, with the candidate's given last (argparse
    keeps the last value of a flag given twice)."""
    return [*BUDGET.split(), *CANDIDATES[name][1].split()]


def run_dir(out: Path, name: str, model: str, seed: int) -> Path:
    return out / "runs" / f"{name}-{model}-s{seed}"


def read_rows(run: Path) -> list[dict]:
    try:
        return json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return []


def train(out: Path, data_root: str, name: str, model: str, seed: int, epochs: int | None):
    """Train (or resume) one run; stop it once `epochs` epochs are saved (None: all 10).
    Returns its record."""
    run = run_dir(out, name, model, seed)
    cmd = [sys.executable, "-m", "dnnlab", "train", "--out", str(run), "--data-root", data_root]
    cmd += [*COMMON.split(), "--model", model, "--seed", str(seed), *flags(name)]
    if (run / "last.pt").exists():
        cmd.append("--resume")
    elif run.exists():
        cmd.append("--overwrite")  # a run killed before its first epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DNNLAB_THREADS": "1"}
    t0 = time.time()
    log = open(out / "logs" / f"{run.name}.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    stopped = False
    while proc.poll() is None:
        time.sleep(5)
        if epochs is not None and len(read_rows(run)) >= epochs:
            proc.send_signal(signal.SIGTERM)  # the checkpoint of that epoch is complete
            proc.wait()
            stopped = True
    log.close()
    rows = read_rows(run)
    diverged = (run / "divergence.json").exists()
    if proc.returncode != 0 and not stopped and not diverged:
        raise RuntimeError(f"{run}: dnnlab train failed (exit {proc.returncode}); see its log")
    record = {
        "candidate": name,
        "model": model,
        "seed": seed,
        "diverged": diverged,
        "epochs_done": len(rows),
        "val_acc": [r["val_acc"] for r in rows],
        "train_loss": [r["train_loss"] for r in rows],
        "seconds": round(time.time() - t0, 1),
        "stage": "accuracy" if epochs is None else "screen",
    }
    if diverged:
        d = json.loads((run / "divergence.json").read_text())
        bad = d["first_non_finite_step"]
        record.update(epoch=d["epoch"], first_non_finite_step=bad, lr=d["steps"][bad]["lr"])
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root")
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--models", default=",".join(SCREEN), help="the screened variants to run")
    ap.add_argument("--accuracy", action="store_true", help="bn, base to 10 epochs")
    ap.add_argument("--table", action="store_true", help="print the table and stop")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = []
    if results.exists():
        done = [json.loads(line) for line in results.read_text().splitlines()]
    if not args.table:
        names = args.candidates.split(",")
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown or not args.data_root:
            sys.exit(f"unknown candidates {unknown}" if unknown else "--data-root is required")
        models = args.models.split(",")
        run_queue(out, args.data_root, names, models, args.jobs, args.accuracy, done, results)
        done = [json.loads(line) for line in results.read_text().splitlines()]
    print_table(done)


def run_queue(out, data_root, names, models, jobs, accuracy, done, results) -> None:
    """Screen `models` (or, with `accuracy`, finish bn and base of the candidates that
    passed)."""
    lock = threading.Lock()
    key = lambda r: (r["candidate"], r["model"], r["seed"], r["stage"])  # noqa: E731
    finished = {key(r) for r in done}
    dropped = {r["candidate"] for r in done if r["diverged"]}
    if accuracy:
        queue = [(n, m, s) for n in names if n not in dropped for m in ACCURACY for s in SEEDS]
    else:
        # The three that diverged before, seed 0, for every candidate first; then the rest.
        first = [(n, m, 0) for m in SCREEN[:3] for n in names]
        rest = [(n, m, s) for n in names for s in SEEDS for m in SCREEN]
        queue = first + [item for item in rest if item not in first]
    queue = [item for item in queue if item[1] in models]
    stage = "accuracy" if accuracy else "screen"

    def one(item):
        name, model, seed = item
        with lock:
            if name in dropped or (name, model, seed, stage) in finished:
                return
        epochs = None if accuracy else CANDIDATES[name][2]
        record = train(out, data_root, name, model, seed, epochs)
        with lock:
            with open(results, "a") as f:
                f.write(json.dumps(record) + "\n")
            if record["diverged"]:
                dropped.add(name)
            print(json.dumps(record), flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, queue))


def print_table(done: list[dict]) -> None:
    """One row per candidate: its screen's divergences, and bn's and base's accuracy."""
    print(f"common: {COMMON}  budget: {BUDGET}")
    print(
        "| candidate | change | screened (variant × seed) | diverged | bn val @10 | base val @10 |"
    )
    print("|---|---|---|---|---|---|")
    for name, (change, _, epochs) in CANDIDATES.items():
        screen = [r for r in done if r["candidate"] == name and r["stage"] == "screen"]
        if not screen:
            continue
        bad = [
            f"{r['model']} s{r['seed']} (step {r['first_non_finite_step']} of epoch "
            f"{r['epoch']}, lr {r['lr']:.4g})"
            for r in screen
            if r["diverged"]
        ]
        acc = {}
        for m in ACCURACY:
            vals = [
                r["val_acc"][-1]
                for r in done
                if r["candidate"] == name
                and r["model"] == m
                and r["stage"] == "accuracy"
                and r["epochs_done"] == 10
            ]
            acc[m] = f"{100 * sum(vals) / len(vals):.2f} ({len(vals)} seeds)" if vals else "–"
        print(
            f"| {name} | {change} | {len(screen)} of {len(SCREEN) * len(SEEDS)} "
            f"through epoch {epochs} | {len(bad)}: {'; '.join(bad) or 'none'} | "
            f"{acc['bn']} | {acc['base']} |"
        )
    print("\nper run (screen: val acc and train loss after the screened epochs):")
    for r in done:
        tail = (
            f"DIVERGED at step {r['first_non_finite_step']} of epoch {r['epoch']}"
            if r["diverged"]
            else f"val {r['val_acc'][-1]:.4f} train loss {r['train_loss'][-1]:.3f}"
        )
        print(
            f"  {r['stage']:8} {r['candidate']:13} {r['model']:14} s{r['seed']}  "
            f"epochs {r['epochs_done']:>2}  {tail}  {r['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
