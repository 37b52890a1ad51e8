#!/usr/bin/env bash
# One study run at a time on all cores (`--jobs 1`) against one run per core at once
# (`--jobs 2` on a 2-core machine): training images per second of the whole machine, side by
# side, with the ratio. Each setup trains ln for one epoch of TRAIN images (clipped recipe,
# the study's precision) with `dnnlab train`; the figure is the epoch's seconds (training
# and validation) from metrics.csv. Run it on a quiet machine.
#
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/study_jobs.sh [OUT]
set -euo pipefail
DATA="${DATA:?DATA: the CIFAR-10 data root (e.g. ../shared/data/cifar10-jpeg.tar.gz)}"
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
TRAIN="${TRAIN:-6400}"
CORES="$(nproc)"
args=(--model ln --recipe clipped --epochs 1 --train-subset "$TRAIN" --val-size 500
  --test-subset 500 --data-root "$DATA" --overwrite)
epoch_seconds() { python -c "import csv,sys; print(list(csv.DictReader(open(sys.argv[1])))[0]['seconds'])" "$1/metrics.csv"; }

OMP_NUM_THREADS="$CORES" dnnlab train "${args[@]}" --out "$OUT/alone" >"$OUT/alone.log" 2>&1
for i in $(seq "$CORES"); do
  OMP_NUM_THREADS=1 dnnlab train "${args[@]}" --seed "$i" --out "$OUT/core$i" >"$OUT/core$i.log" 2>&1 &
done
wait
python - "$OUT" "$CORES" "$TRAIN" "$(epoch_seconds "$OUT/alone")" \
  $(for i in $(seq "$CORES"); do epoch_seconds "$OUT/core$i"; done) <<'EOF'
import sys
out, cores, n, alone, *each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), *map(float, sys.argv[5:])
a = n / alone
b = cores * n / max(each)
print(f"one run, {cores} threads (--jobs 1): {alone:.1f} s an epoch of {n} images = {a:.0f} images/s")
print(f"{cores} runs at once, 1 thread each (--jobs {cores}): {max(each):.1f} s (slowest) = {b:.0f} images/s in all")
print(f"ratio --jobs {cores} / --jobs 1: {b / a:.2f}x (same machine, same run; logs in {out})")
EOF
