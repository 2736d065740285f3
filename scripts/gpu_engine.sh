#!/usr/bin/env bash
# Engine speed on the GPU machine: the quick bench (Wan2.1-1.3B shape, 8x8 grid at 288x512) with
# its table printed and its JSON in $OUT, the engine's GPU option tests, and the inductor code of
# the compiled graphs (to see which kernels inductor fused).
#
#   scripts/gpu_engine.sh [all|bench|tests]   # from the repository root, .whl/ carried (diffusers, ...)
#
# "all" (default) takes about 8 minutes on an H100 (bench < 5 min at --budget-s 230, tests ~3 min):
# inside one 10-minute call, but split it into "bench" and "tests" if the machine is slower.
# Everything printed also goes to $OUT/engine.log, so a run cut short still leaves its log.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_engine
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, diffusers; print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__)'
  if [[ $what == all || $what == bench ]]; then
    echo "=== quick engine bench"
    time python3 launch.py bench --device cuda --quick --budget-s 260 --json "$OUT/bench_engine_quick.json"
    # the generated code of the bench's compiled graphs, newest first (for the next round)
    find "$TORCHINDUCTOR_CACHE_DIR" -name '*.py' -size +2k -print0 2>/dev/null | xargs -0 -r ls -t \
      | head -60 | tar -czf "$OUT/inductor_code.tgz" -T - 2>/dev/null
  fi
  if [[ $what == all || $what == tests ]]; then
    echo "=== engine GPU tests"
    time python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_engine_options.py 2>&1 | tail -25
  fi
} 2>&1 | tee -a "$OUT/engine.log"
