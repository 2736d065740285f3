#!/usr/bin/env bash
# Put weights that came back from the GPU machine in place of the embedded default model and
# score them the way the README's table is made, so shipping fits in what is left of a session.
#
#   scripts/ship_model.sh DIR [TABLE.json]
#
# DIR holds what 'scripts/gpu_train.sh collect|wait|snapshot' handed back: model.tar (or its
# model.tar.part-NN pieces), learning_curve.json and learning_curve.png. The script
#   1. checks that the tar holds a complete model folder and unpacks it over assets/model (the
#      weights replaced stay in git: 'git checkout -- assets/model' brings them back);
#   2. copies the learning curve into docs/;
#   3. makes the README's table, 'launch.py eval --model assets/model --seeds 8 --steps 25
#      --modes all --device cpu' (about 45 minutes on a 2-core CPU) into /tmp/ship/eval_new.json,
#      unless TABLE.json, a table of the same weights made elsewhere (e.g. on the GPU machine with
#      EVAL_SEEDS=8 EVAL_ARGS="--steps 25 --modes all"), is given: its model hash must match;
#   4. compares it scene by scene with docs/eval_default.json (the weights in use until now) on the
#      trained soft row and on image to 4D ('scripts/compare_evals.py').
# It stops before anything is committed: read the comparison, look at grid.png, then copy the table
# to docs/eval_default.json and update the README (table, status, "Trained so far") and
# docs/training.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: $0 DIR [TABLE.json]}
table=${2:-}
work=/tmp/ship
rm -rf "$work" && mkdir -p "$work"

if [ -f "$src/model.tar" ]; then
  parts=("$src/model.tar")
elif compgen -G "$src/model.tar.part-*" > /dev/null; then
  parts=("$src"/model.tar.part-*)
else
  echo "no model.tar (or model.tar.part-NN) in $src"; exit 2
fi
cat "${parts[@]}" | tar -xf - -C "$work" || { echo "$src: the model tar is damaged (a missing part?)"; exit 2; }
for f in transformer/config.json transformer/diffusion_pytorch_model.safetensors fourd.json training.json; do
  [ -f "$work/model/$f" ] || { echo "$src: the model folder lacks $f; assets/model left as it was"; exit 2; }
done
for f in learning_curve.json learning_curve.png; do
  [ -f "$src/$f" ] || { echo "$src lacks $f; assets/model left as it was"; exit 2; }
done

old_hash=$(python -c 'from core.model.pipeline import model_hash; print(model_hash("assets/model"))')
new_hash=$(python -c 'import sys; from core.model.pipeline import model_hash; print(model_hash(sys.argv[1]))' "$work/model")
[ "$old_hash" != "$new_hash" ] || { echo "these are the weights in assets/model already (hash $new_hash)"; exit 2; }
if [ -n "$table" ]; then
  got=$(python -c 'import json, sys; print((json.load(open(sys.argv[1])).get("model_info") or {}).get("hash", ""))' "$table")
  [ "$got" = "$new_hash" ] || { echo "$table scored weights $got, not these ($new_hash)"; exit 2; }
fi

rm -rf assets/model && cp -r "$work/model" assets/model && find assets/model -type f -exec chmod 644 {} +
cp "$src/learning_curve.json" "$src/learning_curve.png" docs/
echo "assets/model: $old_hash -> $new_hash; docs/learning_curve.* copied"

if [ -z "$table" ]; then
  table=$work/eval_new.json
  echo "the README's table on this CPU (about 45 minutes) -> $table"
  python launch.py eval --model assets/model --seeds 8 --steps 25 --modes all --device cpu --json "$table"
fi
echo "=== trained soft row, against docs/eval_default.json"
python scripts/compare_evals.py docs/eval_default.json "$table"
echo "=== image to 4D"
python scripts/compare_evals.py --row image-to-4D docs/eval_default.json "$table"
echo "table: $table (copy it to docs/eval_default.json once the README is updated from it)"
