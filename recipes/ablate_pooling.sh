#!/usr/bin/env bash
# The pooling arm of the default model's ablation: the whole recipe again on last-token features (ArmoRM's
# pooling, and armo 0.1.0's default model), at the same layer, on the same slices: every set extracted with
# --pooling last into WORK/last-token, then recipes/fit_default.sh there (its own gate choice on the selection
# slice). recipes/default_model_quality.py compares that full model with the shipped one (same rows).
# Run after recipes/train_default.sh; resumable like every extraction.
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/default}
LAYER=${LAYER:--18}
MAXLEN=${MAXLEN:-512}
EVAL_MAXLEN=${EVAL_MAXLEN:-1024}
A=$WORK/last-token
mkdir -p "$A"
cp "$WORK"/*.jsonl "$A"/
X=(--layer "$LAYER" --pooling last --overflow truncate-prompt --on-error skip --resume)
for s in pairs ratings; do
  armo extract "$A/$s.jsonl" -o "$A/$s.features.safetensors" --max-length "$MAXLEN" "${X[@]}"
done
for s in rmb-select heldout dev-eval rmb-eval; do
  src=$A/$s.jsonl; [[ $s == dev-eval ]] && src=$DATA/dev-eval.jsonl.gz
  armo extract "$src" -o "$A/$s.features.safetensors" --max-length "$EVAL_MAXLEN" "${X[@]}"
done
WORK=$A OUT=$A/models/full PRODUCED_BY="bash recipes/ablate_pooling.sh" bash recipes/fit_default.sh
echo "last-token arm written to $A"
