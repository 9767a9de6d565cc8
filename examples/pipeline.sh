#!/usr/bin/env bash
# Every armo stage end to end on the example files with the embedded backbone (time on a 2-core CPU: see README):
# extract -> fit-regression -> fit-decorrelation -> fit-gating -> score -> evaluate -> export.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${WORK:-}" ]; then
  W="$WORK"
else  # a temporary folder of our own: removed when the script ends, however it ends
  W="$(mktemp -d)"
  trap 'rm -rf "$W"' EXIT
fi
mkdir -p "$W"
armo extract "$HERE/ratings.jsonl" -o "$W/ratings.features.safetensors" -q
armo extract "$HERE/pairs.jsonl" -o "$W/pairs.features.safetensors" -q
armo fit-regression "$W/ratings.features.safetensors" --length-objective verbosity \
  --range helpfulness=1:10 --range safety=0:1 -o "$W/regression.safetensors" --model-dir "$W/model"
armo fit-decorrelation "$W/pairs.features.safetensors" -r "$W/regression.safetensors" \
  -o "$W/decorrelation.safetensors" --model-dir "$W/model"
armo fit-gating "$W/pairs.features.safetensors" -r "$W/regression.safetensors" -t "$W/decorrelation.safetensors" \
  -o "$W/gating.safetensors" --model-dir "$W/model"
armo score -m "$W/model" "$HERE/pair.jsonl" --format table -q
armo score -m "$W/model" "$HERE/score.jsonl" -q -o "$W/scores.jsonl"
armo evaluate -m "$W/model" "$HERE/eval.jsonl" -o "$W/report.json" -q
armo export -m "$W/model" "$W/hf"
if [ -n "${WORK:-}" ]; then
  echo "pipeline finished: model in $W/model, report in $W/report.json, HF export in $W/hf"
else
  echo "pipeline finished; its temporary folder is removed (set WORK=DIR to keep the outputs)"
fi
