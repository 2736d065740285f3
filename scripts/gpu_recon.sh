#!/usr/bin/env bash
# The reconstruction benchmark in one GPU call (about 4-6 minutes on one H100):
#   1. synthesises the evaluation grid(s) (8x8 at 288x512, ground truth, --no-video),
#   2. warms gsplat up (its CUDA kernels compile on first use, 60-90 s; kept out of every fit time),
#   3. runs `python -m core.recon.bench --holdout 8` on them and prints a short table
#      (fit / held-out PSNR, camera errors, cameras / seeding / loop seconds), JSON in $OUT.
#
#   OUT=/some/dir scripts/gpu_recon.sh            # seeds 1000000001 1000000002
#   RECON_SEEDS="1000000001" scripts/gpu_recon.sh # one grid
#
# Run from the repository root; the wheels of .whl/ (gsplat, ...) are installed to /tmp/site
# when the folder is there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  grids=()
  for seed in ${RECON_SEEDS:-1000000001 1000000002}; do
    dir=/tmp/recon_bench/$seed
    rm -rf "$dir"
    python3 launch.py synth --seed "$seed" --views 8 --times 8 --size 288x512 --device cuda --no-video --out "$dir" \
      && grids+=(--grid "$dir")
  done
  time python3 -m core.recon.bench --json "$OUT/bench_recon.json" --holdout 8 "${grids[@]}"
  for g in "${grids[@]}"; do
    [ "$g" = --grid ] && continue
    cp "$g/recon.json" "$OUT/recon_$(basename "$g").json" 2>/dev/null
  done
} 2>&1 | tee "$OUT/gpu_recon.log"
