#!/usr/bin/env bash
# Sets up the environment when needed, then runs dnnlab's main job: the quick CIFAR-10
# architecture study (train + probe + report) when CIFAR-10 is given through DNNLAB_DATA,
# else the separability demo on scikit-learn's bundled digits.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -n "${DNNLAB_DATA:-}" ]; then
  dnnlab study --quick --out "${DNNLAB_STUDY_OUT:-study-quick}" "$@"
else
  echo "DNNLAB_DATA is not set: running the separability demo instead of the study." >&2
  echo "Give CIFAR-10 as DNNLAB_DATA=PATH (a cifar-10-batches-py folder, an image-folder tree or its .tar.gz)." >&2
  dnnlab si --demo digits "$@"
fi
