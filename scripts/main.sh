#!/usr/bin/env bash
# Sets up the environment when needed, then runs dnnlab's main job:
# - with DNNLAB_DATA (CIFAR-10): the quick architecture study (train + probe + report);
# - with DNNLAB_CATS (a VOC folder holding train/ and valid/) and DNNLAB_BACKBONE (MobileNetV2
#   weights) as well: the cat detector is built, trained, evaluated and run on a sample
#   photo, and joins the report;
# - with neither: the separability demo on scikit-learn's bundled digits.
# The study goes to DNNLAB_STUDY_OUT (default study-quick) and the detector beside it, in
# "$DNNLAB_STUDY_OUT-detector". Relative paths are read from the repository root, where
# this script runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${DNNLAB_STUDY_OUT:-study-quick}"
# "study/", "study//" and "study/." name the same folder; its detector is "study-detector".
while [[ "$out" == */ || "$out" == */. ]] && [[ "$out" != / ]]; do
  out="${out%/}"
  out="${out%/.}"
done
# A folder named only by "/", "." or ".." has no name to put the detector beside.
case "$out" in
  "" | / | . | .. | */..)
    if [ -n "${DNNLAB_DATA:-}" ]; then
      echo "main.sh: DNNLAB_STUDY_OUT=${DNNLAB_STUDY_OUT}: name the study's own folder, e.g. my-study (its detector goes beside it, in my-study-detector)" >&2
      exit 2
    fi
    ;;
esac
source scripts/env.sh
if [ -z "${DNNLAB_DATA:-}" ]; then
  echo "DNNLAB_DATA is not set: running the separability demo instead of the study." >&2
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
  # Beside the study folder, not inside it: the study may replace its folder as a whole, so
  # it refuses an input (the detector) that lives there.
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
dnnlab study --quick --out="$out" --published docs/results "${detector[@]}" "$@"
