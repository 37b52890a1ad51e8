"""The evidence behind the budget recipe (recipe.BUDGET): short runs scored on the validation
split, never on test.

Each candidate is `dnnlab train --recipe corrected` with explicit flags, on a stratified
15,000-image training subset for 3 epochs (the step count of one 45,000-image epoch, and the
budget's three-epoch schedule shape). Runs go two at a time, one CPU thread each, and a
finished run is kept, so the script resumes. Prints one row per run: final and best
validation accuracy, seconds.

    python benchmarks/budget_recipe.py --data-root ../shared/data/cifar10-jpeg.tar.gz \
        --out /tmp/budget-search [--only NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BUDGET = "--schedule linear --nesterov --weight-decay 5e-4 --label-smoothing 0.1"
B256 = f"--batch-size 256 {BUDGET}"
CANDIDATES = {
    # Budgeted Training's reference: linear decay to zero, the course's augmentation and loss.
    "bn-reference": "--model bn --lr 0.05 --schedule linear --augmentation flip-rotate",
    "bn-budget": f"--model bn --lr 0.1 {B256} --warmup-epochs 0.3 --augmentation flip-translate",
    "bn-budget-rotate": f"--model bn --lr 0.1 {B256} --warmup-epochs 0.3 "
    "--augmentation flip-rotate",
    "bn-budget-lr0.2": f"--model bn --lr 0.2 {B256} --warmup-epochs 0.3 "
    "--augmentation flip-translate",
    "base-reference": "--model base --lr 0.05 --schedule linear --augmentation flip-rotate",
    "base-budget": f"--model base --lr 0.1 {B256} --warmup-epochs 0.3 "
    "--augmentation flip-translate",
    "bn-budget-lr0.05": f"--model bn --lr 0.05 {B256} --warmup-epochs 0.3 "
    "--augmentation flip-translate",
    "bn-budget-b128": f"--model bn --lr 0.1 --batch-size 128 {BUDGET} --warmup-epochs 0.3 "
    "--augmentation flip-translate",
}
COMMON = "--recipe corrected --epochs 3 --train-subset 15000 --val-size 5000 --test-subset 1000"


def run_one(name: str, out: Path, data_root: str) -> dict:
    run = out / name
    if not (run / "summary.json").exists():
        cmd = [sys.executable, "-m", "dnnlab", "train", "--out", str(run), "--data-root"]
        cmd += [data_root, *COMMON.split(), *CANDIDATES[name].split()]
        if run.exists():
            cmd.append("--overwrite")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DNNLAB_THREADS": "1"}
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    rows = json.loads((run / "metrics.json").read_text())
    return {
        "name": name,
        "val_acc": rows[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in rows),
        "train_loss": rows[-1]["train_loss"],
        "seconds": sum(r["seconds"] for r in rows),
        "flags": CANDIDATES[name],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="comma-separated candidate names")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(CANDIDATES)
    with ThreadPoolExecutor(2) as pool:
        for r in pool.map(lambda n: run_one(n, out, args.data_root), names):
            print(
                f"{r['name']:18} val {r['val_acc']:.4f} (best {r['best_val_acc']:.4f})  "
                f"train loss {r['train_loss']:.3f}  {r['seconds']:.0f} s  [{r['flags']}]",
                flush=True,
            )
    print(f"common: {COMMON}")


if __name__ == "__main__":
    main()
