#!/usr/bin/env bash
# The attention candidates of benchmarks/results/heldout.md (issue 12): `regatt train --objective
# landmark` on the train landmarks of landmarks-train, each run choosing its epoch on the val
# landmarks; then the held-out report, which chooses among them on val only.
#
#   benchmarks/attention_sweep.sh OUT_DIR [CACHE_DIR]
#
# Names: lm-clean-* = clean photos only (--views 1), lm-clutter-* = plus one clutter view per
# photo pasted into an ImageNet-extra photo (--views 2). Each run's own log (config, per-epoch
# val history) is kept in benchmarks/results/attention/sweep/NAME.json.
set -euo pipefail
out=${1:?usage: attention_sweep.sh OUT_DIR [CACHE_DIR]}
cache=${2:-/tmp/regatt-cache}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$here/../shared/data
regatt=${REGATT:-$here/.venv/bin/regatt}
mkdir -p "$out"
#      name-suffix  variant  lr  uniform-prior  views
runs=(
  "context  1e-3 0 1" "context  3e-4 0 1" "context  1e-3 1 1" "regional 3e-4 0 1"
  "context  1e-3 0 2" "context  3e-4 0 2" "context  1e-4 0 2" "context  1e-3 1 2" "context  3e-4 1 2"
  "context  1e-4 1 2" "context  1e-3 3 2" "context  1e-4 3 2"
  "regional 1e-4 0 2" "regional 1e-4 1 2" "regional 3e-4 1 2" "regional 1e-4 3 2"
)
args=()
for r in "${runs[@]}"; do
  read -r variant lr prior views <<<"$r"
  kind=$([ "$views" = 1 ] && echo clean || echo clutter)
  name=lm-$kind-$variant-lr$lr-prior$prior
  bg=()
  [ "$views" = 2 ] && bg=(--backgrounds "$data/imagenet-extra")
  [ -f "$out/$name.pth" ] || "$regatt" train "$data/landmarks-train" --objective landmark --attention "$variant" \
    "${bg[@]}" --views "$views" --uniform-prior "$prior" --batch 64 --per-landmark 4 --optimizer adam \
    --lr "$lr" --temperature 0.05 --epochs 40 --patience 6 --cache "$cache" --threads 2 --no-progress \
    -o "$out/$name.pth"
  args+=(--attention "$name=$out/$name.pth")
done
"$here/.venv/bin/python" "$here/benchmarks/heldout_report.py" --cache "$cache" --bank "$out/bank" \
  --attention "paper-recipe-imagenet-context=$here/benchmarks/results/attention/paper-recipe-imagenet-context.pth" \
  "${args[@]}"
