#!/usr/bin/env bash
# The 10-epoch CPU study (issue 35), run across sessions, and its recipe factorial.
#
#   bash scripts/cpu_study.sh start [COMMIT]   # clone COMMIT (default HEAD), start in background
#                                              # (NICE=19 in front: other work goes first;
#                                              # JOBS=2: two runs at a time, default 1)
#   bash scripts/cpu_study.sh status           # runs published, running, the log's last lines
#   bash scripts/cpu_study.sh stop
#
# The studies run from their own clone of this repository at a fixed commit ($WORK/code),
# so edits to the checkout do not reach them; their run folders (with weights) live in
# $WORK/study (the main study) and $WORK/factorial-* (the factorial's cells). Every run that
# finishes (trained and probed) is published at once into this checkout's
# docs/results/clipped-cpu or docs/results/factorial-* (`dnnlab study --publish`, with its
# manifest), and a loop here commits that folder alone (`git commit -- FOLDER`) as soon as
# it changes and passes `dnnlab verify`. A stopped machine loses at most the run in
# progress: `start` again (same COMMIT) resumes it from its last epoch, and a finished run
# is never trained again: $WORK holds it, or, on a new machine that lost $WORK (a new
# session's), the study adopts it from its publication (study.py). To go on at a newer
# commit (for what its publication writes), stop, move $WORK/code aside and start with that
# commit: do it only where `python scripts/same_outputs.py OLD` shows training and probing
# unchanged; a commit whose recipe differs is refused by the study itself (study.json's
# recipe_settings).
#
# The plan, in order: first the factorial's course cell for base and bn (the course's
# optimizer and double softmax, seeds 0 and 1: with the main study's base and bn, already
# published, it is all the interaction needs, the answer the study exists for); then every
# variant with seeds 0 and 1, then base and bn with seed 2 (the main study,
# docs/results/clipped-cpu); then the factorial's other cells and paths4-shared under the
# course's recipe (docs/results/factorial-*), see FACTORIAL below.
#
# The study's shell runs a copy of this script taken at `start` (bash reads a script as it
# goes: once the running command returns, an edited checkout's copy would be read from the
# old offset). A study that fails is logged and the next one goes on.
#
# One run at a time (JOBS=1) by default: on the 2-core AMD EPYC, two one-thread workers
# train 1.06-1.12x the images/s of one two-thread run (benchmarks/study_jobs.sh, RESULTS
# §15), but one run at a time finishes and publishes each run in half the wall time, so a
# session's end (when everything it started stops) loses one run's epochs, not two.
set -euo pipefail
repo="$(cd "${DNNLAB_STUDY_REPO:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
WORK="${DNNLAB_STUDY_WORK:-/work/cpu-study}"
DATA="${DNNLAB_DATA:-$repo/../shared/data/cifar10-jpeg.tar.gz}"
MEASURES="si,csi,knn:5,nc1"
MODELS="base,bn,gn,ln,noskip,conv4-1x1,paths2,paths4,paths2-shared,paths4-shared,wide"
# name: flags. The main study's base and bn (clipped recipe, logits) are the factorial's
# fourth cell; the course's optimizer is the corrected recipe (SGD 0.01, momentum 0.9, no
# smoothing or decay, flip + rotation) with StepLR(40) shortened to StepLR(4) for 10 epochs.
COURSE="--recipe corrected --epochs 10 --step-size 4"
FACTORIAL=(
  "factorial-clipped-softmax: --recipe clipped --softmax-head --models base,bn"
  "factorial-course-logits: $COURSE --models base,bn"
  "factorial-course-softmax: $COURSE --softmax-head --models base,bn,paths4-shared"
)

commit_loop() {  # commit each published folder as soon as it changes and verifies
  while true; do
    for dir in "$repo"/docs/results/clipped-cpu "$repo"/docs/results/factorial-*; do
      [ -f "$dir/manifest.json" ] || continue
      rel="${dir#"$repo"/}"
      if [ -n "$(git -C "$repo" status --porcelain -- "$rel")" ] \
          && "$WORK/code/.venv/bin/dnnlab" verify "$dir" >/dev/null 2>&1; then
        n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['published_variants']))" "$dir/study.json")
        # Only this folder (a pathspec commit); a busy index is tried again next minute.
        if git -C "$repo" add -- "$rel" && git -C "$repo" commit -q -m \
            "$rel: $n runs published by the running CPU study (code $(cat "$WORK/commit"))" \
            -- "$rel"; then
          echo "$(date -u +%H:%M) committed $rel ($n runs)"
        fi
      fi
    done
    sleep 60
  done
}

one_study() {  # a study command; its failure is logged, and the plan goes on
  if ! dnnlab study "$@"; then echo "cpu_study: failed: dnnlab study $*" >&2; fi
}

run_all() {
  cd "$WORK/code"
  source scripts/env.sh
  local common=(--seeds 0,1 --jobs "${JOBS:-1}" --measures "$MEASURES" --data-root "$DATA")
  # shellcheck disable=SC2086  # $COURSE is flags, split on purpose
  one_study $COURSE --softmax-head --models base,bn "${common[@]}" \
    --out "$WORK/factorial-course-softmax" \
    --publish "$repo/docs/results/factorial-course-softmax"
  one_study --recipe clipped --models "$MODELS" "${common[@]}" --out "$WORK/study" \
    --publish "$repo/docs/results/clipped-cpu"
  one_study --recipe clipped --models base,bn --seeds 2 --jobs "${JOBS:-1}" \
    --measures "$MEASURES" --data-root "$DATA" --out "$WORK/study" \
    --publish "$repo/docs/results/clipped-cpu"
  for cell in "${FACTORIAL[@]}"; do
    name="${cell%%:*}"
    read -r -a flags <<< "${cell#*: }"
    one_study "${flags[@]}" "${common[@]}" --out "$WORK/$name" \
      --publish "$repo/docs/results/$name"
  done
}

case "${1:-status}" in
  start)
    want="$(git -C "$repo" rev-parse "${2:-HEAD}")"
    mkdir -p "$WORK"
    if [ -f "$WORK/study.pid" ] && kill -0 "$(cat "$WORK/study.pid")" 2>/dev/null; then
      echo "cpu_study: a study is running already (pid $(cat "$WORK/study.pid")); stop it first" >&2
      exit 2
    fi
    if [ -d "$WORK/code" ] && [ "$(cat "$WORK/commit")" != "$want" ]; then
      echo "cpu_study: $WORK/code is at $(cat "$WORK/commit"), not $want. To resume at" \
        "another commit: stop, move $WORK/code aside (the runs in $WORK/study stay), then" \
        "start again; the study itself refuses a commit whose recipe differs" >&2
      exit 2
    fi
    if [ ! -d "$WORK/code" ]; then
      git clone -q "$repo" "$WORK/code" && git -C "$WORK/code" checkout -q "$want"
      echo "$want" > "$WORK/commit"
    fi
    (cd "$WORK/code" && source scripts/env.sh >/dev/null)  # the clone's own environment
    # A new file (not rewritten in place: a shell still reading the old one keeps it).
    cp "${BASH_SOURCE[0]}" "$WORK/.cpu_study.sh.new" && mv -f "$WORK/.cpu_study.sh.new" "$WORK/cpu_study.sh"
    export DNNLAB_STUDY_REPO="$repo"
    setsid nohup bash "$WORK/cpu_study.sh" _run >> "$WORK/study.log" 2>&1 &
    echo $! > "$WORK/study.pid"
    setsid nohup bash "$WORK/cpu_study.sh" _commit >> "$WORK/commits.log" 2>&1 &
    echo $! > "$WORK/commit.pid"
    echo "cpu_study: started at $want; log $WORK/study.log, commits $WORK/commits.log"
    ;;
  _run)
    # NICE=19 lets other work go first. setsid gave the study its own scheduler autogroup,
    # and across autogroups a process's nice value has no effect: the group's has (set
    # here, by the study's own shell: setsid may fork, so the starter's $! is not it).
    if [ -n "${NICE:-}" ] && [ -w "/proc/$$/autogroup" ]; then echo "$NICE" > "/proc/$$/autogroup"; fi
    run_all; echo "cpu_study: all done $(date -u)" ;;
  _commit) commit_loop ;;
  stop)
    for p in study commit; do
      [ -f "$WORK/$p.pid" ] && kill -- -"$(cat "$WORK/$p.pid")" 2>/dev/null || true
    done
    pkill -f "dnnlab.study.worker $WORK/" || true
    ;;
  status)
    echo "code: $(cat "$WORK/commit" 2>/dev/null || echo 'not started')"
    for dir in "$repo"/docs/results/clipped-cpu "$repo"/docs/results/factorial-*; do
      [ -f "$dir/study.json" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], 'published:', ', '.join(d['published_variants']) or 'none')" "$dir/study.json"
    done
    tail -n 5 "$WORK/study.log" 2>/dev/null || true
    ;;
  *) echo "usage: bash scripts/cpu_study.sh start [COMMIT] | status | stop" >&2; exit 2 ;;
esac
