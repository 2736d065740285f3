#!/usr/bin/env bash
# Train the embedded default model on the GPU machine in the background, then score it, then
# hand back the results. Run from the repository root (Python 3.12, torch + CUDA, diffusers on
# PYTHONPATH). Never writes mp4 (the GPU machine has no ffmpeg).
#
#   scripts/gpu_train.sh start [MINUTES] [extra 'launch.py train' arguments]
#       Starts training at once in the background (setsid nohup) and returns. Resumes exactly
#       from $TRAIN_DIR/run if a previous start left one on this machine (from its weights,
#       widened or grown, if it lacks the preset's anchor input or blocks), else from the weights
#       in assets/model if we trained them (it has training.json) and they have the shape of
#       the preset (same sizes, reference inputs, residual flow; stage 3 only; weights without
#       the anchor input resume into a preset with it: '--anchor-input on' widens them by zero
#       channels; weights with fewer blocks: '--layers N' puts identity blocks in; outputs
#       unchanged, optimizer fresh, training.json history kept; '--layers N' among the extra
#       arguments is the depth asked for in place of the preset's), else from scratch with preset
#       $PRESET (all stages) when assets/model holds no trained weights; trained weights that do
#       not fit stop it with a message (FRESH=1 trains from scratch anyway). After training it runs
#       'launch.py eval' on $EVAL_SEEDS evaluation scenes. MINUTES (default 16) is the training
#       loop's budget, compiling included (about 1 minute; 4 when a batch too large for the GPU
#       is compiled first and halved); loading and the final eval come on top.
#       RESUME_FROM=DIR starts from the weights in DIR in place of assets/model (e.g. a model
#       folder that came back from an earlier session and was not shipped, kept under .ckpt/ and
#       carried along; the optimizer starts fresh).
#       COMPARE=N (e.g. 64) adds a paired check after that: the weights it started from (or those
#       in COMPARE_WITH=DIR, e.g. assets/model when resuming a run that grew) and the trained ones
#       are both scored ('launch.py eval --modes soft --no-consistency') on the same N evaluation
#       scenes and 'scripts/compare_evals.py' says whether the new ones are measurably
#       better (compare.txt, in report.txt). On an H200 one such eval of 64 scenes took about
#       4.5 minutes, 41 s of it sampling (0.64 s a grid); most of the rest was likely SSIM on the
#       CPU (over half of an eval's time outside sampling on the development CPU), since made
#       about 10 x faster: on an H100 the 2-scene eval and the two of 64 scenes now take about
#       3 minutes together (0.62-0.87 s a grid sampling).
#       COMPARE_OLD=FILE (with COMPARE_WITH=DIR) takes DIR's scores from an earlier
#       'launch.py eval --seeds N --modes soft --no-consistency --json FILE' (e.g. docs/eval64_187min.json
#       for assets/model) instead of scoring DIR again: about 70 s of an H100 saved a call; refused
#       unless FILE scored the same weights (model hash) on N scenes. Against the shipped weights
#       scored afresh and as scored on an H100 sessions before, the same new weights gave the same
#       paired statistics to the last digit shown; an H100 and an H200 agree to 0.01 dB.
#   scripts/gpu_train.sh status        running or not, the last log lines, the curve so far
#       (the GPU machine is given back ~30 s after a call ends, killing the background job: chain
#       calls back to back, e.g. 'sleep 540; scripts/gpu_train.sh status', until collect)
#   scripts/gpu_train.sh collect OUT   stops training if it still runs (it checkpoints first),
#       and copies into OUT: model.tar (the model folder; split into <= 15 MB parts if larger),
#       learning_curve.json/.png, sample.png, log.jsonl, eval.json (if done), report.txt.
#   scripts/gpu_train.sh snapshot OUT  the same files from the last checkpoint, training left
#       running. End every waiting call with it ('sleep 540; scripts/gpu_train.sh snapshot $OUT'):
#       if the machine is released between two calls, only what came after that checkpoint is lost.
#   scripts/gpu_train.sh wait OUT      waits for the job (training, eval, paired check) to end, at
#       most until DEADLINE seconds after the command began (default 560, under one call's
#       10-minute limit), then hands back what 'snapshot' does; exit status 3 if the job still
#       runs then (call 'wait' again at once, or 'collect').
#   scripts/gpu_train.sh run MINUTES OUT [extra arguments]   'start' then 'wait' in one call, so a
#       machine released between calls loses nothing: size MINUTES so training, the evals and the
#       compile fit in DEADLINE (e.g. 'COMPARE=64 EVAL_SEEDS=2 ... run 5 $OUT' on an H100: about
#       1 minute loading and compiling, 5 training, 2 scoring). If the machine is still held, a
#       second 'run' resumes the first's run exactly.
#
# A resume draws the training noise levels at the model's own sampling shift (9 for the default
# model; '--sigma-shift S' among the extra arguments overrides it).
#
# Environment: TRAIN_DIR (default /tmp/train), BATCH (32; an exact resume goes on at the batch the
# run last trained at, if smaller: the trainer halves the batch when the GPU runs out of memory,
# as ten blocks at 48 did on an H100), COMPILE (1), RENDER_SHARE (0.25: the
# replay pool renders fresh grids for a quarter of a step's time; 0.5 waited 1.46 s per 20 steps
# on an H200, 0.25 0.8-0.9 s), STAGE (auto), FRESH (0; 1
# starts from scratch whatever exists), PRESET (default; the model of a fresh start), EVAL_SEEDS
# (8), PYTHON (python), DEVICE (cuda; cpu for a local dry run), EVAL_ARGS (extra eval arguments).
set -euo pipefail
SELF=$(realpath "$0")
T0=${GPU_TRAIN_T0:-$(date +%s)}  # when the command began (a run passes it on to its wait)
cd "$(dirname "$0")/.."
DIR=${TRAIN_DIR:-/tmp/train}
RUN=$DIR/run
PY=${PYTHON:-python}

running() { [ -f "$DIR/train.pid" ] && kill -0 "$(cat "$DIR/train.pid")" 2>/dev/null; }
busy() { [ -f "$DIR/job.pid" ] && kill -0 "$(cat "$DIR/job.pid")" 2>/dev/null; }

# Copy the last checkpoint (and what goes with it) into $1; training is not touched.
pack() {
  local out=$1
  mkdir -p "$out"
  model=$RUN/model; [ -d "$model" ] || model=$RUN/model.old
  [ -f "$model/transformer/config.json" ] || { echo "no model folder in $RUN"; return 1; }
  # a checkpoint being saved swaps folders by renaming: try again if the tar saw the swap
  local try
  for try in 1 2 3; do
    model=$RUN/model; [ -d "$model" ] || model=$RUN/model.old
    tar -C "$(dirname "$model")" --transform "s,^$(basename "$model"),model," -cf "$out/model.tar" "$(basename "$model")" && break
    [ "$try" = 3 ] && { echo "could not read a complete checkpoint in $RUN"; return 1; }
    sleep 5
  done
  if [ "$(stat -c %s "$out/model.tar")" -gt 15728640 ]; then
    split -b 15M -d "$out/model.tar" "$out/model.tar.part-" && rm "$out/model.tar"
  fi
  for f in learning_curve.json learning_curve.png log.jsonl summary.json; do
    [ -f "$RUN/$f" ] && cp "$RUN/$f" "$out/"
  done
  last=$(ls -1 "$RUN"/samples/*.png 2>/dev/null | tail -n 1 || true)
  [ -n "$last" ] && cp "$last" "$out/sample.png"
  [ -f "$DIR/eval.json" ] && cp "$DIR/eval.json" "$out/"
  {
    echo "train: $(cat "$DIR/train.cmd" 2>/dev/null)"; echo "train exit: $(cat "$DIR/train.rc" 2>/dev/null)"
    echo "eval: $(cat "$DIR/eval.cmd" 2>/dev/null)"; echo "eval exit: $(cat "$DIR/eval.rc" 2>/dev/null)"
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
    echo "--- summary.json"; cat "$RUN/summary.json" 2>/dev/null || true
    echo; echo "--- eval table"; cat "$DIR/eval.md" 2>/dev/null || true
    if [ -f "$DIR/compare.cmd" ]; then
      echo "--- paired check against the starting weights ($(tr '\n' ' ' < "$DIR/compare.cmd" | sed 's/ && / ; /g'))"
      cat "$DIR/compare.txt" 2>/dev/null || { echo "(not done yet)"; tail -n 5 "$DIR/compare.log" 2>/dev/null || true; }
    fi
    echo "--- train.log (first 15 and last 60 lines)"; head -n 15 "$DIR/train.log"; echo "..."; tail -n 60 "$DIR/train.log"
    echo "--- eval.log (last 30 lines)"; tail -n 30 "$DIR/eval.log" 2>/dev/null || true
  } > "$out/report.txt"
  # summary.json travels inside report.txt; keep at most 8 files
  rm -f "$out/summary.json"
  ls -la "$out"
}

cmd=${1:-}
case "$cmd" in
start)
  minutes=${2:-16}
  [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "MINUTES must be a number (give it before extra arguments), got '$minutes'"; exit 2; }
  shift $(( $# >= 2 ? 2 : $# ))
  compare=${COMPARE:-0}
  [[ "$compare" =~ ^[0-9]+$ ]] || { echo "COMPARE must be a number of evaluation scenes, got '$compare'"; exit 2; }
  # the depth asked for ('--layers N' among the extra arguments) replaces the preset's in the shape checks
  layers=None; prev=
  for a in "$@"; do
    [ "$prev" = --layers ] && layers=$a
    case "$a" in --layers=*) layers=${a#--layers=} ;; esac
    prev=$a
  done
  [[ "$layers" = None || "$layers" =~ ^[0-9]+$ ]] || { echo "--layers must be a whole number, got '$layers'"; exit 2; }
  if busy; then echo "already running (pid $(cat "$DIR/job.pid")); see: $0 status"; exit 1; fi
  FROM=${RESUME_FROM:-assets/model}
  if [ -n "${RESUME_FROM:-}" ] && [ ! -f "$FROM/training.json" ]; then
    echo "RESUME_FROM=$FROM is not a model folder we trained (no training.json in it)"; exit 2
  fi
  if [ -n "${COMPARE_WITH:-}" ] && [ ! -f "$COMPARE_WITH/transformer/config.json" ]; then
    echo "COMPARE_WITH=$COMPARE_WITH is not a model folder (no transformer/config.json in it)"; exit 2
  fi
  if [ -n "${COMPARE_OLD:-}" ]; then
    # scores of the COMPARE_WITH weights from an earlier run stand in for scoring them again
    if [ "$compare" -eq 0 ] || [ -z "${COMPARE_WITH:-}" ]; then
      echo "COMPARE_OLD=$COMPARE_OLD needs COMPARE=N and COMPARE_WITH=DIR (the weights it scored)"; exit 2
    fi
    why=$("$PY" -c '
import json, sys
from core.model.pipeline import model_hash
try:
    d = json.load(open(sys.argv[1]))
    have, n = d["model_info"]["hash"], len(d["seeds"])
except (OSError, ValueError, KeyError, TypeError):
    print("it is not a readable result of launch.py eval --json"); sys.exit()
want, m = model_hash(sys.argv[2]), int(sys.argv[3])
if (have, n) != (want, m):
    print(f"it scored model {have} on {n} scenes, not {want} on {m}")
' "$COMPARE_OLD" "$COMPARE_WITH" "$compare") || why="it could not be checked"
    if [ -n "$why" ]; then echo "COMPARE_OLD=$COMPARE_OLD cannot stand in for scoring $COMPARE_WITH: $why"; exit 2; fi
  fi
  mkdir -p "$DIR"
  rm -f "$DIR"/train.rc "$DIR"/eval.rc "$DIR"/skip-eval "$DIR"/compare.cmd "$DIR"/compare.txt
  rm -rf "$DIR/start_model"
  if [ "${FRESH:-0}" = 1 ]; then
    resume=(); stage=${STAGE:-all}
    [ -e "$RUN" ] && mv "$RUN" "$RUN.old.$(date +%s)"
  elif [ -f "$RUN/state.pt" ]; then
    resume=(--resume "$RUN"); stage=${STAGE:-3}
    # a run left without the anchor input or blocks that the preset has: go on from its weights, widened
    widen=$("$PY" -c "from core.train.checkpoint import model_dir_of as d, resume_flags as f; m = d('$RUN'); print(' '.join((f(m, '${PRESET:-default}', $layers) or []) if m else []))" || true)
    if [ -n "$widen" ]; then
      old="$RUN.old.$(date +%s)"; mv "$RUN" "$old"
      src=$old/model; [ -d "$src" ] || src=$old/model.old
      # shellcheck disable=SC2206  # widen: '--anchor-input on' and/or '--layers N'
      resume=(--resume "$src" $widen)
      echo "$RUN lacks what preset ${PRESET:-default} has: resuming its weights (moved to $old) with: $widen"
    fi
  elif [ -f "$FROM/transformer/config.json" ] && [ -f "$FROM/training.json" ] &&
       widen=$("$PY" -c "import sys; from core.train.checkpoint import resume_flags as f; r = f('$FROM', '${PRESET:-default}', $layers); print(' '.join(r)) if r is not None else sys.exit(1)"); then
    # shellcheck disable=SC2206  # widen: '', '--anchor-input on' and/or '--layers N'
    resume=(--resume "$FROM" $widen); stage=${STAGE:-3}
    if [ -n "$widen" ]; then echo "$FROM resumes into preset ${PRESET:-default} with: $widen"; fi
    [ -e "$RUN" ] && mv "$RUN" "$RUN.old.$(date +%s)"
  else
    if [ -f "$FROM/training.json" ]; then
      echo "$FROM holds trained weights that do not resume into preset ${PRESET:-default}$([ "$layers" != None ] && echo " with --layers $layers"):"
      echo "nothing started. Give the depth they have ('--layers N'), or FRESH=1 to train from scratch."
      exit 2
    fi
    resume=(); stage=${STAGE:-all}
    [ -e "$RUN" ] && mv "$RUN" "$RUN.old.$(date +%s)"
  fi
  [ ${#resume[@]} -eq 0 ] && resume=(--preset "${PRESET:-default}")
  start_from=
  if [ "$compare" -gt 0 ] && [ -n "${COMPARE_WITH:-}" ]; then
    start_from=$COMPARE_WITH
  elif [ "$compare" -gt 0 ] && [ "${resume[0]}" = --resume ]; then
    start_from=${resume[1]}
    [ -d "$start_from/model" ] && start_from=$start_from/model  # an exact resume of a run: its weights
  fi
  [ -n "$start_from" ] && cp -r "$start_from" "$DIR/start_model"
  compile=(); [ "${COMPILE:-1}" = 1 ] && compile=(--compile)
  batch=${BATCH:-32}
  # an exact resume on this machine goes on at the batch the run last trained at when that is
  # smaller (the trainer halved it when the GPU ran out of memory; asking for more again costs a
  # compile and an out-of-memory error, 1-2 minutes of the call)
  if [ "${resume[0]}" = --resume ] && [ "${resume[1]}" = "$RUN" ] && [ -f "$RUN/log.jsonl" ]; then
    last=$(tail -n 1 "$RUN/log.jsonl" | "$PY" -c 'import json, sys; print(int(json.loads(sys.stdin.read())["batch"]))' 2>/dev/null || true)
    if [[ "$last" =~ ^[0-9]+$ ]] && [ "$last" -lt "$batch" ]; then
      echo "the run last trained at batch $last on this machine (less than $batch fitted in GPU memory): going on at $last"
      batch=$last
    fi
  fi
  train_cmd=("$PY" launch.py train --out "$RUN" "${resume[@]}" --stage "$stage" --minutes "$minutes"
             --device "${DEVICE:-cuda}" "${compile[@]}" --batch "$batch" --eval-every 4 --eval-scenes 8
             --eval-steps 25 --save-every 4 --render-share "${RENDER_SHARE:-0.25}" "$@")
  eval_cmd=("$PY" launch.py eval --model "$RUN/model" --seeds "${EVAL_SEEDS:-8}" --device "${DEVICE:-cuda}"
            --json "$DIR/eval.json" ${EVAL_ARGS:-})
  printf '%q ' "${train_cmd[@]}" > "$DIR/train.cmd"
  printf '%q ' "${eval_cmd[@]}" > "$DIR/eval.cmd"
  if [ -n "$start_from" ]; then
    cmp_args="--seeds $compare --device ${DEVICE:-cuda} --modes soft --no-consistency"
    {
      if [ -n "${COMPARE_OLD:-}" ]; then
        echo "cp $(printf '%q' "$COMPARE_OLD") $(printf '%q' "$DIR/compare_old.json") &&"
      else
        echo "$(printf '%q' "$PY") launch.py eval --model $(printf '%q' "$DIR/start_model") $cmp_args --json $(printf '%q' "$DIR/compare_old.json") &&"
      fi
      echo "$(printf '%q' "$PY") launch.py eval --model $(printf '%q' "$RUN/model") $cmp_args --json $(printf '%q' "$DIR/compare_new.json") &&"
      echo "$(printf '%q' "$PY") scripts/compare_evals.py $(printf '%q' "$DIR/compare_old.json") $(printf '%q' "$DIR/compare_new.json")"
    } > "$DIR/compare.cmd"
  fi
  # The job: train (its pid in train.pid, so collect can stop it alone), then evaluate.
  setsid nohup bash -c '
    dir=$1
    bash -c "exec $(cat "$dir/train.cmd")" > "$dir/train.log" 2>&1 &
    echo $! > "$dir/train.pid"
    wait $!; echo $? > "$dir/train.rc"
    if [ ! -f "$dir/skip-eval" ] && [ -f "$dir/run/model/transformer/config.json" ]; then
      bash -c "exec $(cat "$dir/eval.cmd")" > "$dir/eval.md" 2> "$dir/eval.log"; echo $? > "$dir/eval.rc"
      if [ -f "$dir/compare.cmd" ]; then
        bash -c "$(cat "$dir/compare.cmd")" > "$dir/compare.log" 2>&1 && grep -A2 "^parallel soft trained" "$dir/compare.log" > "$dir/compare.txt"
      fi
    fi
  ' job "$DIR" > "$DIR/job.log" 2>&1 < /dev/null &
  echo $! > "$DIR/job.pid"
  echo "started (job pid $(cat "$DIR/job.pid")): $(cat "$DIR/train.cmd")"
  echo "then: $(cat "$DIR/eval.cmd")"
  echo "logs: $DIR/train.log, $DIR/eval.log; watch with: $0 status"
  ;;
status)
  if running; then echo "training: running (pid $(cat "$DIR/train.pid"))"
  elif [ -f "$DIR/train.rc" ]; then echo "training: finished, exit status $(cat "$DIR/train.rc")"
  else echo "training: not started"; fi
  if busy && ! running; then echo "eval: running"; fi
  [ -f "$DIR/eval.rc" ] && echo "eval: finished, exit status $(cat "$DIR/eval.rc")"
  [ -f "$DIR/train.log" ] && { echo "--- train.log (last lines)"; grep -v '^\s*$' "$DIR/train.log" | tail -n "${LINES_SHOWN:-12}" || true; }
  [ -f "$DIR/eval.md" ] && { echo "--- eval"; cat "$DIR/eval.md"; }
  [ -f "$DIR/eval.log" ] && [ ! -f "$DIR/eval.rc" ] && tail -n 3 "$DIR/eval.log"
  exit 0
  ;;
collect)
  out=${2:?usage: $0 collect OUT}
  mkdir -p "$out"
  if running; then
    echo "training still running: asking it to stop (it checkpoints first)"
    touch "$DIR/skip-eval"
    kill -TERM "$(cat "$DIR/train.pid")"
    for _ in $(seq 1 120); do running || break; sleep 1; done
    running && { echo "training did not stop in 120 s; killing it (the last checkpoint stays valid)"; kill -KILL "$(cat "$DIR/train.pid")"; }
  fi
  pack "$out"
  echo "unpack here with: tar -xf model.tar -C assets/   (or: cat model.tar.part-* | tar -x -C assets/)"
  ;;
snapshot)
  out=${2:?usage: $0 snapshot OUT}
  if running; then echo "training: running; copying its last checkpoint"; fi
  pack "$out"
  ;;
wait)
  out=${2:?usage: $0 wait OUT}
  deadline=${DEADLINE:-560}
  [[ "$deadline" =~ ^[0-9]+$ ]] || { echo "DEADLINE must be whole seconds, got '$deadline'"; exit 2; }
  [ -f "$DIR/job.pid" ] || { echo "no job started in $DIR (see: $0 start)"; exit 2; }
  while busy && [ $(( $(date +%s) - T0 )) -lt "$deadline" ]; do sleep 2; done
  if busy; then
    echo "the job still runs after ${deadline} s: handing back its last checkpoint; call '$0 wait OUT' again at once"
    pack "$out"; LINES_SHOWN=5 bash "$SELF" status || true; exit 3
  fi
  echo "the job ended after $(( $(date +%s) - T0 )) s"
  pack "$out"; LINES_SHOWN=5 bash "$SELF" status || true
  ;;
run)
  minutes=${2:?usage: $0 run MINUTES OUT [extra train arguments]}
  out=${3:?usage: $0 run MINUTES OUT [extra train arguments]}
  shift 3
  bash "$SELF" start "$minutes" "$@"
  GPU_TRAIN_T0=$T0 bash "$SELF" wait "$out"
  ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
