#!/usr/bin/env bash
# One GPU session in few calls: benchmarks, GPU tests, and background training of the default
# model; then collecting the weights and the reconstruction benchmark.
#
#   scripts/gpu_session.sh bench-and-train MINUTES   # benches + GPU tests, then training in the background
#   scripts/gpu_session.sh collect-and-recon         # stop/collect training, then the reconstruction bench
#   scripts/gpu_session.sh train MINUTES [train args] # train, score and hand back within this one call
#                                                    # ('gpu_train.sh run'; e.g. COMPARE=64 EVAL_SEEDS=2
#                                                    # BATCH=48 ... train 5 --lr 3e-4 --eval-every 5)
#
# The GPU machine is given back about 30 s after a call ends, and background jobs die with it:
# make the next call (e.g. `scripts/gpu_train.sh wait $OUT`) at once, back to back, until
# training is collected. One command may run at most 10 minutes.
#
# Run from the repository root on the GPU machine, with the wheels of .whl/ carried along
# (diffusers, gsplat, trimesh, ...). Results go to $OUT (at most 8 files come back).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 PYTHON=python3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
log=$OUT/session.log

case "${1:-}" in
bench-and-train)
  minutes=${2:-13}
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, diffusers; print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__)'
    echo "=== engine bench: Wan2.1-1.3B shape, 8x8 at 288x512"
    time python3 launch.py bench --device cuda --budget-s 260 --json "$OUT/bench_wan.json"
    echo "=== engine bench: default model shape, 8x8 at 72x128"
    time python3 launch.py bench --device cuda --preset default --no-ablations --budget-s 60 --json "$OUT/bench_default.json"
    echo "=== world bench"
    time python3 -m core.world.bench --device cuda --json "$OUT/bench_world.json"
    echo "=== GPU tests"
    time python3 -m pytest -q -p no:cacheprovider tests/gpu tests/test_world_gpu.py 2>&1 | tail -15
    echo "=== training: $minutes minutes in the background"
    scripts/gpu_train.sh start "$minutes"
  } 2>&1 | tee "$log"
  ;;
collect-and-recon)
  {
    scripts/gpu_train.sh status
    scripts/gpu_train.sh collect "$OUT/train"; rm -f "$OUT/train/log.jsonl"
    echo "=== reconstruction bench: evaluation scenes, 8x8 at 288x512, 8 cells held out"
    grids=()
    for seed in ${RECON_SEEDS:-1000000001 1000000002}; do
      python3 launch.py synth --seed "$seed" --views 8 --times 8 --size 288x512 --device cuda --no-video --out "/tmp/recon/$seed" && grids+=(--grid "/tmp/recon/$seed")
    done
    time python3 -m core.recon.bench --json "$OUT/bench_recon.json" --holdout 8 "${grids[@]}" 2>&1 | tail -40
  } 2>&1 | tee "$log"
  ;;
train)
  minutes=${2:?usage: $0 train MINUTES [extra train arguments]}
  shift 2
  # at most 8 files come back: the 7 of a hand-back and this log
  scripts/gpu_train.sh run "$minutes" "$OUT" "$@" 2>&1 | tee "$log"
  exit "${PIPESTATUS[0]}"
  ;;
*)
  echo "usage: $0 bench-and-train MINUTES | collect-and-recon | train MINUTES [train args]" >&2; exit 2 ;;
esac
