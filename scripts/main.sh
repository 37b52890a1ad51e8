#!/usr/bin/env bash
# Sets up the environment when needed, then runs dnnlab's main job:
# - with DNNLAB_DATA (CIFAR-10): the published studies' results, and the first epoch of a
#   published run trained again here and compared with its published curve (+ report);
# - with DNNLAB_CATS (a VOC folder holding train/ and valid/) and DNNLAB_BACKBONE (MobileNetV2
#   weights) as well: the cat detector is built, trained, evaluated and run on a sample
#   photo, and joins the report;
# - with neither: the separability demo on scikit-learn's bundled digits.
# The report goes to DNNLAB_STUDY_OUT (default main-job) and the detector beside it, in
# "$DNNLAB_STUDY_OUT-detector". Relative paths are read from the repository root, where
# this script runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${DNNLAB_STUDY_OUT:-main-job}"
# "out/", "out//" and "out/." name the same folder; its detector is "out-detector".
while [[ "$out" == */ || "$out" == */. ]] && [[ "$out" != / ]]; do
  out="${out%/}"
  out="${out%/.}"
done
# A folder named only by "/", "." or ".." has no name to put the detector beside.
case "$out" in
  "" | / | . | .. | */..)
    if [ -n "${DNNLAB_DATA:-}" ]; then
      echo "main.sh: DNNLAB_STUDY_OUT=${DNNLAB_STUDY_OUT}: name the main job's own folder, e.g. my-run (its detector goes beside it, in my-run-detector)" >&2
      exit 2
    fi
    ;;
esac
source scripts/env.sh
if [ -z "${DNNLAB_DATA:-}" ]; then
  echo "DNNLAB_DATA is not set: running the separability demo instead of the CIFAR-10 results." >&2
  echo "Give CIFAR-10 as DNNLAB_DATA=PATH (a cifar-10-batches-py folder, an image-folder tree or its .tar.gz)." >&2
  [ -z "${DNNLAB_CATS:-}" ] || echo "DNNLAB_CATS is set but ignored without DNNLAB_DATA." >&2
  exec dnnlab si --demo digits "$@"
fi
if [ -n "${DNNLAB_CATS:-}" ] && [ -z "${DNNLAB_BACKBONE:-}" ]; then
  echo "DNNLAB_CATS is set but DNNLAB_BACKBONE is not: no detector in this run." >&2
elif [ -z "${DNNLAB_CATS:-}" ] && [ -n "${DNNLAB_BACKBONE:-}" ]; then
  echo "DNNLAB_BACKBONE is set but DNNLAB_CATS is not: no detector in this run." >&2
fi
detector=()
if [ -n "${DNNLAB_CATS:-}" ] && [ -n "${DNNLAB_BACKBONE:-}" ]; then
  # Beside the output folder, not inside it: dnnlab refuses an input (the detector) inside
  # a folder it may replace as a whole.
  det="$out-detector"
  # The sample photos (the first three), checked before the detector's build and training.
  # A glob, not `ls | head`: paths may hold spaces, and under pipefail a large folder's ls
  # ends on SIGPIPE, which stopped the job without a word.
  photos=("$DNNLAB_CATS"/valid/*.jpg)
  if [ ! -e "${photos[0]}" ]; then
    echo "main.sh: no .jpg photo in $DNNLAB_CATS/valid to run the detector on" >&2
    exit 1
  fi
  [ -f "$det/index.csv" ] || dnnlab detect build "$DNNLAB_CATS/train" --out="$det"
  [ -f "$det/model.pt" ] || dnnlab detect train "$det" --backbone-weights "$DNNLAB_BACKBONE"
  dnnlab detect eval "$DNNLAB_CATS/valid" --model="$det"
  # The sample photos are redrawn from the current model on every run of the main job.
  dnnlab detect run "${photos[@]:0:3}" --model="$det" --out="$det/photos" --overwrite
  detector=(--detector="$det")
fi
# A published run trained again here for its first epoch and compared with its published
# curve (dnnlab reproduce): the 10-epoch study's base once published, else the 3-epoch one's.
run=docs/results/clipped-cpu/runs/base
[ -d "$run" ] || run=docs/results/budget-cpu/runs/base
dnnlab reproduce "$run" --epochs 1 --out="$out" --published docs/results "${detector[@]}" "$@"
