"""Aggregate training images/s of a concurrent study against one variant trained alone.

    python benchmarks/study_throughput.py STUDY_DIR ALONE_RUN_DIR

Both figures come from the runs' metrics (per-epoch seconds, training + validation), first
epoch (compilation, autotuning) left out. Concurrent: the images all variants trained in
their steady epochs over the longest variant's steady seconds; this assumes the workers ran
at the same time (--jobs >= the number of variants), which full_study_gpu.sh does. Alone:
one run's steady images over its steady seconds. Printed side by side, with the ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def steady(run: Path) -> tuple[int, float]:
    """(training images in epochs 2.., their seconds) of one run directory."""
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = (
        json.loads((run / "summary.json").read_text())["train_images"]
        if (run / "summary.json").exists()
        else len(json.loads((run / "split.json").read_text())["train"])
    )
    rows = rows[1:] or rows
    return n * len(rows), sum(float(r["seconds"]) for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("alone")
    args = ap.parse_args()
    runs = sorted(p for p in (Path(args.study) / "runs").iterdir() if (p / "metrics.csv").exists())
    if not runs:
        print("no trained runs in", args.study)
        return 1
    per = {r.name: steady(r) for r in runs}
    images = sum(n for n, _ in per.values())
    span = max(s for _, s in per.values())
    agg = images / span
    n1, s1 = steady(Path(args.alone))
    alone = n1 / s1
    print(
        f"concurrent study: {len(runs)} variants, {images:,} steady training images in "
        f"{span:.1f} s (longest variant) = {agg:,.0f} images/s aggregate"
    )
    print(
        f"one variant alone ({Path(args.alone).name}): {n1:,} images in {s1:.1f} s = "
        f"{alone:,.0f} images/s"
    )
    print(f"ratio concurrent / alone: {agg / alone:.2f}x (same machine, same command)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
