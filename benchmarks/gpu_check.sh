#!/usr/bin/env bash
# The prepared GPU check (one short run on a lent GPU machine). Usage, from the repo root:
#   bash benchmarks/gpu_check.sh PATH/TO/cifar10-jpeg.tar.gz [OUT_DIR]
set -uo pipefail
data="$1"; out="${2:-gpu-out}"; mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1 DNNLAB_CACHE="${TMPDIR:-/tmp}/dnnlab-cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
echo "== separability: N=50,000 D=16384 float32 (no TF32), dnnlab and the cdist reference"
timeout 200 python3 benchmarks/bench_separability.py --device cuda --n 50000 --d 16384 \
  --max-memory 40GB --json "$out/sep50k.json"
echo "== separability: N=20,000 D=4096/16384"
timeout 120 python3 benchmarks/bench_separability.py --device cuda --n 20000 --d 4096 16384 \
  --max-memory 40GB
echo "== CUDA tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
echo "== training throughput: bn, full recipe, 4 epochs"
timeout 150 python3 benchmarks/bench_train_gpu.py --data-root "$data" --model bn --epochs 4
echo "== same with torch.compile"
timeout 150 python3 benchmarks/bench_train_gpu.py --data-root "$data" --model bn --epochs 4 --compile
