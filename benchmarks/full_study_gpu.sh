#!/usr/bin/env bash
# The full study on one lent GPU, in one command (issue 12 sections 1 and 3). From the repo root:
#   bash benchmarks/full_study_gpu.sh
# Carry CIFAR-10 into the tree first (../shared does not travel): DATA (default
# data/cifar10-jpeg.tar.gz, an ignored path, e.g. `carry: ["data"]`).
#
# Steps, each under a `timeout` that keeps the whole script inside BUDGET seconds:
#   1. the card's name (nvidia-smi) and the Python packages there (nothing is downloaded);
#   2. `dnnlab study --recipe corrected` (all 11 variants x 100 epochs, --jobs, --compile) with
#      its probes and report, published (no weights) to WORK/published/full-study-corrected;
#   3. one variant (bn) trained alone for a few epochs: aggregate training images/s of the
#      concurrent study against it, as a ratio (benchmarks/study_throughput.py);
#   4. the CUDA tests (tests/test_cuda.py: the measures on the GPU against the CPU), where
#      pytest and scikit-learn are installed there (CUDA=0 skips them);
#   5. if time remains, the same study with --recipe course, published to full-study-course.
# Whatever is finished is packed (no weights) into ONE archive, $OUT/full-study.tar.gz, even
# when a step is cut off: a trap packs on exit. WORK lives in the tree (gpu-work/, ignored), so
# a second command on the same warm machine resumes every run where the first stopped.
#
# The copied tree may lack .git: pass the commit as COMMIT=$(git rev-parse --short=12 HEAD) in
# the command so that study.json records it.
#
# On the CPU, for testing the logic (about 1-2 minutes with tests' fake data):
#   DEVICE=cpu COMPILE=0 EPOCHS=1 MODELS=base,noskip JOBS=2 ALONE_EPOCHS=2 \
#     STUDY_ARGS="--val-size 20 --test-subset 30 --max-per-split 40" TRAIN_ARGS="--val-size 20" \
#     DATA=fake.tar.gz OUT=/tmp/o WORK=/tmp/w bash benchmarks/full_study_gpu.sh
set -uo pipefail
start=$(date +%s)
BUDGET=${BUDGET:-570}      # seconds in all (a lent machine's command limit is 600)
RESERVE=${RESERVE:-20}     # kept back for packing
DATA=${DATA:-data/cifar10-jpeg.tar.gz}
OUT=${OUT:-gpu-out}
WORK=${WORK:-$PWD/gpu-work}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-11}
MODELS=${MODELS:-base,bn,gn,ln,noskip,conv4-1x1,paths2,paths4,paths2-shared,paths4-shared,wide}
EPOCHS=${EPOCHS:-100}
STUDY_ARGS=${STUDY_ARGS:-}  # extra `dnnlab study` flags (a smaller budget for tests)
TRAIN_ARGS=${TRAIN_ARGS:-}  # extra `dnnlab train` flags for the variant alone
COMPILE=${COMPILE:-1}
ALONE_EPOCHS=${ALONE_EPOCHS:-4}
CUDA=${CUDA:-1}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DNNLAB_CACHE=${DNNLAB_CACHE:-$WORK/cache} DNNLAB_COMMIT=${COMMIT:-}
mkdir -p "$OUT" "$WORK/published"
OUT=$(cd "$OUT" && pwd)
log="$WORK/full_study.log"

pack() {
  echo "== packing (t=$(( $(date +%s) - start )) s)"
  cp "$log" "$OUT/full_study.log" 2>/dev/null
  tar -czf "$OUT/full-study.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.tmp' \
    --exclude=cache --ignore-failed-read \
    $(cd "$WORK" && ls -d published study-* alone info.txt throughput.txt cuda-tests.txt full_study.log 2>/dev/null)
  ls -l "$OUT"
}
trap pack EXIT

left() { echo $(( start + BUDGET - RESERVE - $(date +%s) )); }
# step NAME MIN_SECONDS CMD...: run CMD under the time left (SIGINT first, then KILL).
step() {
  local name=$1 need=$2; shift 2
  local t; t=$(left)
  if [ "$t" -lt "$need" ]; then echo "== $name: skipped, ${t}s left (needs ${need}s)"; return 124; fi
  echo "== $name (up to ${t}s; t=$(( $(date +%s) - start )) s)"
  timeout --signal=INT --kill-after=10 "$t" "$@"
  local rc=$?
  echo "== $name: exit $rc (t=$(( $(date +%s) - start )) s)"
  return $rc
}

{
  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  nproc
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  git log -1 --format='commit %H %cd' 2>/dev/null || echo "commit: not a git tree"
} 2>&1 | tee "$WORK/info.txt" | tee -a "$log"

if [ ! -e "$DATA" ]; then echo "DATA=$DATA: not found (carry CIFAR-10 into the tree)" | tee -a "$log"; exit 2; fi
common=(--device "$DEVICE" --jobs "$JOBS" --models "$MODELS" --data-root "$DATA")
[ "$COMPILE" = 1 ] && common+=(--compile)
common+=(--epochs "$EPOCHS")
# shellcheck disable=SC2206
common+=($STUDY_ARGS)

step "study, corrected recipe" 60 "$PY" -m dnnlab study "${common[@]}" --recipe corrected \
  --out "$WORK/study-corrected" --published "$WORK/published" \
  --publish "$WORK/published/full-study-corrected" 2>&1 | tee -a "$log"

alone=(--model bn --device "$DEVICE" --epochs "$ALONE_EPOCHS" --data-root "$DATA")
[ "$COMPILE" = 1 ] && alone+=(--compile)
# shellcheck disable=SC2206
alone+=($TRAIN_ARGS)
[ -f "$WORK/alone/config.json" ] && alone+=(--resume)
step "one variant alone (bn, $ALONE_EPOCHS epochs)" 45 "$PY" -m dnnlab train "${alone[@]}" \
  --out "$WORK/alone" 2>&1 | tee -a "$log"
"$PY" benchmarks/study_throughput.py "$WORK/study-corrected" "$WORK/alone" 2>&1 \
  | tee "$WORK/throughput.txt" | tee -a "$log"

if [ "$CUDA" = 1 ] && "$PY" -c "import pytest, sklearn" 2>/dev/null; then
  step "CUDA tests" 30 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tee "$WORK/cuda-tests.txt" | tee -a "$log"
else
  echo "== CUDA tests: skipped (CUDA=$CUDA, or no pytest/scikit-learn there)" | tee -a "$log"
fi

step "study, course recipe" 90 "$PY" -m dnnlab study "${common[@]}" --recipe course \
  --out "$WORK/study-course" --published "$WORK/published" \
  --publish "$WORK/published/full-study-course" 2>&1 | tee -a "$log"
echo "== done (t=$(( $(date +%s) - start )) s)" | tee -a "$log"
